"""`vlmedge run`: a source through a GStreamer pipeline with the `vlmedge` element, answers printed live."""
from __future__ import annotations

import json
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path

from vlmedge.commands.common import add_model_args, exported_method, model_spec
from vlmedge.runtime.serving.protocol import SPLITS


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run a camera, file, URL or camworld clip through the vlmedge GStreamer element",
        description="Builds a GStreamer pipeline source ! vlmedge ! sink and prints answers as they come. Type "
                    "questions on stdin while it runs. Ctrl-C ends the stream (pending answers still print); a "
                    "second Ctrl-C aborts.")
    add_model_args(p)
    p.add_argument("--source", default="camworld:1000000",
                   help="media file, URI (rtsp://, http(s)://, file://), V4L2 device (/dev/video0), "
                        "test[:PATTERN] (videotestsrc) or camworld:SEED (a synthetic clip with its questions) "
                        "(default: %(default)s)")
    p.add_argument("--method", help="compression method spec (default: stc; with --engine the method it was "
                                     "exported for)")
    p.add_argument("--sample-fps", type=float, default=2.0, help="frames per second given to the model (default: 2)")
    p.add_argument("--memory-budget", default="", help="memory budget, e.g. 512MiB (default: unbounded)")
    p.add_argument("--prompt", default="", help="standing question, answered every --prompt-interval seconds")
    p.add_argument("--prompt-interval", type=float, default=0.0,
                   help="seconds of stream time between standing-prompt answers (0: once, at the end)")
    p.add_argument("--question", action="append", default=[], metavar="TEXT",
                   help="ask at the end of the stream (repeatable)")
    p.add_argument("--ask-at", nargs=2, action="append", default=[], metavar=("SECONDS", "TEXT"),
                   help="ask TEXT once the frame at SECONDS of stream time has been seen (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="longest answer in tokens (default: 8)")
    p.add_argument("--live", action="store_true",
                   help="play files at their own speed with latest-frame-wins (like a camera); default for "
                        "files: as fast as the model goes, every sampled frame used")
    p.add_argument("--display", action="store_true", help="show the video with answers drawn over it")
    p.add_argument("--duration", type=float, help="stop after this many seconds of wall time")
    p.add_argument("--num-buffers", type=int, default=-1, help="test source: stop after this many frames")
    p.add_argument("--frames", action="store_true", help="print a line per processed frame (tokens kept, ms)")
    p.add_argument("--json", action="store_true", help="print JSON lines (answers, frames, stats) instead of text")
    p.add_argument("--stats", action="store_true",
                   help="print throughput and latency at the end: frames in/out/dropped, sustained sampled fps, "
                        "question-to-answer latency")
    p.add_argument("--print-pipeline", action="store_true",
                   help="print the equivalent gst-launch-1.0 command and exit")
    p.add_argument("--server", metavar="HOST:PORT",
                   help="answer on a `vlmedge serve` server (its gRPC port) instead of in this process; a lost "
                        "connection is retried and reported, frames that cannot be sent are dropped and counted")
    p.add_argument("--server-split", choices=SPLITS, default="frames",
                   help="with --server: send sampled frames (the server runs everything), or run the vision tower "
                        "and compressor of --model/--method here and send only the kept visual tokens "
                        "(per-frame methods; default: %(default)s)")
    p.add_argument("--stream-id", default="", help="with --server: this stream's name on the server "
                                                   "(default: a random one)")
    p.add_argument("--keep-media", help="camworld: write the clip here (.mkv) instead of a temporary file")
    p.set_defaults(func=run)


def _camworld(source: str, keep: str | None, tmp: str):
    from vlmedge.errors import InputError
    from vlmedge.models import camworld

    try:
        seed = int(source.partition(":")[2])
    except ValueError as err:
        raise InputError(f"camworld source must be camworld:SEED with an integer seed, got {source!r}") from err
    stream = camworld.generate(seed, split="eval" if seed >= 1_000_000 else "train")
    path = Path(keep) if keep else Path(tmp) / f"camworld-{seed}.mkv"
    camworld.write_media(stream, path)
    return stream, path


def build_spec(args, source: str, audio: bool):
    from vlmedge.pipelines.builder import RunSpec, source_kind

    spec_model, backend = model_spec(args)
    element = {"model": spec_model, "backend": backend, "method": args.method, "sample_fps": args.sample_fps,
               "max_new_tokens": args.max_new_tokens, "frame_stats": bool(args.frames or args.json)}
    if args.memory_budget:
        element["memory_budget"] = args.memory_budget
    if args.prompt:
        element.update(prompt=args.prompt, prompt_interval=args.prompt_interval)
    if args.server:
        element.update(server=args.server, server_split=args.server_split, stream_id=args.stream_id or None)
    kind = source_kind(source)
    return RunSpec(source=source, element=element, audio=audio, display=args.display,
                   realtime=args.live or kind not in ("file", "camworld"), num_buffers=args.num_buffers)


def _source_has_audio(source: str) -> bool:
    """Whether the source carries audio (so an omni model gets an audio branch): the test source always (an
    audiotestsrc), a file or stored URI when GstDiscoverer finds an audio stream, live network streams and
    cameras not (probing them would wait on the network)."""
    from vlmedge.pipelines.builder import source_kind

    kind = source_kind(source)
    if kind == "test":
        return True
    if kind not in ("file", "uri") or source.startswith(("rtsp", "udp", "srt")):
        return False
    import gi

    from vlmedge.pipelines.gst import Gst

    gi.require_version("GstPbutils", "1.0")
    from gi.repository import GstPbutils

    if not Gst.is_initialized():
        Gst.init(None)
    uri = source if "://" in source else Path(source).resolve().as_uri()
    try:
        info = GstPbutils.Discoverer.new(10 * Gst.SECOND).discover_uri(uri)
    except Exception:  # undiscoverable: the pipeline itself will say why
        return False
    return bool(info.get_audio_streams())


def run(args) -> int:
    from vlmedge.pipelines import plugin_dir
    from vlmedge.pipelines.builder import describe, shell_line
    from vlmedge.runtime.model_source import has_audio

    from vlmedge.compression import get_method
    from vlmedge.runtime.model_source import family_of

    family_of(model_spec(args)[0])  # a bad model or method is a one-line error here, before any pipeline exists
    if args.method is None:
        args.method = exported_method(args.engine) if args.engine else "stc"
    get_method(args.method)
    # the element also logs answers and errors; here they are printed, so the log stays out of the terminal
    logging.getLogger("vlmedge.pipelines").addHandler(logging.NullHandler())
    logging.getLogger("vlmedge.pipelines").propagate = bool(getattr(args, "debug", False))
    logging.getLogger("vlmedge.serving").propagate = bool(getattr(args, "debug", False))  # also warnings here
    out = _Printer(args)
    with tempfile.TemporaryDirectory(prefix="vlmedge-run-") as tmp:
        source, stream = args.source, None
        if source.startswith("camworld:"):
            stream, path = _camworld(source, args.keep_media, tmp)
            source = str(path)
        # a server gets no audio (see the element's `server` property)
        audio = not args.server and has_audio(model_spec(args)[0]) and _source_has_audio(source)
        spec = build_spec(args, source, audio)
        if args.print_pipeline:
            if stream is not None and not args.keep_media:
                print("# the camworld clip is temporary: pass --keep-media FILE.mkv to keep it", file=sys.stderr)
            print(shell_line(spec, plugin_dir()))
            return 0
        from vlmedge.pipelines.runner import PipelineRunner

        runner = PipelineRunner(describe(spec), on_answer=out.answer, on_frame=out.frame, on_warning=out.warning)
        if stream is not None:
            out.truth = {q.text: q.answer for q in stream.questions}
            for q in sorted(stream.questions, key=lambda q: q.frame):
                runner.ask_at(stream.frame_time(q.frame), q.text)
        for at, text in args.ask_at:
            runner.ask_at(float(at), text)
        for text in args.question:
            runner.ask_at_end(text)
        _read_stdin(runner)
        previous = signal.signal(signal.SIGINT, lambda *_: runner.stop())
        board = _tegrastats() if (args.stats or args.json) else None
        try:
            out.start(spec, source)
            result = runner.run(duration_s=args.duration)
        finally:
            signal.signal(signal.SIGINT, previous)
            if board is not None:
                board.stop()
        if board is not None:
            from vlmedge.jetson.tegrastats import summarize

            result.stats["tegrastats"] = summarize(board.samples)
        out.finish(result)
    return 0


def _tegrastats():
    """A running tegrastats reader on a Jetson (board memory, GPU load, power during the run), else None."""
    from vlmedge.jetson.tegrastats import TegrastatsReader

    reader = TegrastatsReader(interval_ms=500, keep=1_000_000)
    return reader.start() if reader.available() else None


def _read_stdin(runner) -> None:
    """Questions typed while it runs; a closed or absent stdin just means none."""
    if sys.stdin is None or sys.stdin.closed:
        return

    def loop():
        try:
            for line in sys.stdin:
                if line.strip():
                    runner.ask(line.strip())
        except (OSError, ValueError):
            pass

    threading.Thread(target=loop, name="vlmedge-stdin", daemon=True).start()


class _Printer:
    def __init__(self, args):
        self.args = args
        self.truth: dict = {}
        self.correct = 0
        self.graded = 0

    def _json(self, kind: str, obj: dict) -> None:
        print(json.dumps({"type": kind, **obj}), flush=True)

    def start(self, spec, source: str) -> None:
        if self.args.json:
            self._json("start", {"source": source, "element": spec.element, "audio": spec.audio})
            return
        e = spec.element
        if e.get("server"):
            where = f"server {e['server']} ({e['server_split']} split" + (
                f", vision + {e['method']} here with model {e['model']})" if e["server_split"] == "tokens" else ")")
        else:
            where = f"model {e['model']} ({e['backend']}), method {e['method']}"
        print(f"vlmedge run: {source} -> {where}, {e['sample_fps']:g} fps sampled"
              f"{', with audio' if spec.audio else ''}", flush=True)
        if self.args.frames:
            print(f"{'frame':>5} {'time s':>7} {'tokens':>7} {'kept':>5} {'encode ms':>10} {'compress ms':>12} "
                  f"{'prefill ms':>11}", flush=True)

    def frame(self, f: dict) -> None:
        if self.args.json:
            self._json("frame", f)
        elif self.args.frames:
            print(f"{f['index']:>5} {f['stream_time']:>7.2f} {f['tokens_in']:>7} {f['tokens_kept']:>5} "
                  f"{f['encode_ms']:>10.1f} {f['compress_ms']:>12.2f} {f['prefill_ms']:>11.1f}", flush=True)

    def answer(self, a: dict) -> None:
        truth = self.truth.get(a["question"])
        if truth is not None:
            self.graded += 1
            self.correct += int(a["answer"].split()[:1] == [truth])
        if self.args.json:
            self._json("answer", {**a, **({"truth": truth} if truth is not None else {})})
            return
        mark = "" if truth is None else f"  (truth: {truth} {'ok' if a['answer'].split()[:1] == [truth] else '--'})"
        print(f"  [{a['stream_time_s']:7.2f}s] Q: {a['question']}\n             A: {a['answer']!r}{mark}  "
              f"[{a['latency_ms']:.0f} ms, {a['stream_tokens']} tokens in cache]", flush=True)

    def warning(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    def finish(self, result) -> None:
        st = dict(result.stats)
        st["wall_s"] = round(result.wall_s, 2)
        st["eos"] = result.eos
        if self.graded:
            st["camworld_correct"] = f"{self.correct}/{self.graded}"
        if self.args.json:
            self._json("stats", st)
            return
        if self.args.stats:
            print("stats:")
            rows = [("frames in / out", f"{st.get('frames-in', 0)} / {st.get('frames-out', 0)}"),
                    ("frames sampled / processed / dropped",
                     f"{st.get('frames-sampled', 0)} / {st.get('frames-processed', 0)} / {st.get('frames-dropped', 0)}"),
                    ("sustained sampled fps", f"{st.get('sampled-fps', 0):.2f}"),
                    ("question -> answer ms (median / max)",
                     f"{st.get('answer-latency-ms-median')} / {st.get('answer-latency-ms-max')}"),
                    ("answers", str(st.get("answers", 0))), ("wall s", f"{st['wall_s']:.2f}")]
            if self.graded:
                rows.append(("camworld answers correct", st["camworld_correct"]))
            tg = st.get("tegrastats")
            if tg and tg["samples"]:
                watts = "?" if tg["power_mw_mean"] is None else f"{tg['power_mw_mean'] / 1000:.1f}"
                rows += [("board RAM peak / total MB (tegrastats)", f"{tg['ram_used_mb_peak']} / {tg['ram_total_mb']}"),
                         ("GPU load % (mean / peak)", f"{tg['gpu_load_pct_mean']} / {tg['gpu_load_pct_peak']}"),
                         ("power W (mean), hottest sensor C", f"{watts}, {tg['temp_max_c']}")]
            elif tg is None:
                rows.append(("board (tegrastats)", "not a Jetson"))
            for k, v in rows:
                print(f"  {k:<38} {v}")
        elif self.graded:
            print(f"camworld: {self.correct}/{self.graded} answers correct")
