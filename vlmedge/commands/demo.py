"""`vlmedge demo`: a camera stream in, per-frame tokens and timings out, questions answered live."""
from __future__ import annotations

import time

from vlmedge.commands.common import add_model_args, load_model


def register(sub) -> None:
    p = sub.add_parser("demo", help="stream a camworld clip through a model and answer its questions",
                       description="Streams a synthetic camera clip (camworld) frame by frame through a model with "
                                   "a compression method, printing tokens and timings per frame, then asks the "
                                   "clip's questions and prints answers next to the ground truth.")
    add_model_args(p)
    p.add_argument("--method", default="uniform:ratio=0.5", help="compression method spec (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1_000_000, help="camworld evaluation seed (>= 1000000)")
    p.add_argument("--questions", type=int, default=4, help="how many of the clip's questions to ask")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlmedge.errors import ModelFileError
    from vlmedge.models import camworld
    from vlmedge.runtime import StreamingSession
    from vlmedge.runtime.playback import play_stream

    t0 = time.perf_counter()
    try:
        adapter, note = load_model(args, words=camworld.vocabulary())
    except ModelFileError as err:
        if args.model or args.engine:
            raise
        print(f"vlmedge demo: {err}; using a tiny random model instead")
        args.tiny = True
        adapter, note = load_model(args, words=camworld.vocabulary())
    stream = camworld.generate(args.seed, split="eval")
    session = StreamingSession(adapter, args.method, sample_fps=stream.fps)
    print(f"vlmedge demo: {note}; method {session.method.spec()}; loaded in {time.perf_counter() - t0:.1f}s")
    print(f"camworld seed {args.seed}: {len(stream.frames)} frames {stream.frames.shape[2]}x{stream.frames.shape[1]} "
          f"at {stream.fps:g} fps")
    print(f"{'frame':>5} {'time s':>7} {'tokens':>7} {'kept':>5} {'encode ms':>10} {'compress ms':>12} {'prefill ms':>11}")
    questions = sorted(stream.questions, key=lambda q: q.frame)[: args.questions]

    def frame_line(st):
        print(f"{st.index:>5} {st.time_s:>7.2f} {st.tokens_in:>7} {st.tokens_kept:>5} {st.encode_ms:>10.1f} "
              f"{st.compress_ms:>12.2f} {st.prefill_ms:>11.1f}")

    def answer_lines(q, ans, i):
        mark = "ok" if ans.text.split()[:1] == [q.answer] else "--"
        print(f"  Q@{stream.frame_time(i):.1f}s [{q.qtype}] {q.text}\n    -> {ans.text!r} (truth: {q.answer}) {mark}"
              f"  [{ans.stream_tokens} tokens in cache, first token {ans.prefill_ms:.0f} ms]")

    session.max_new_tokens = 4
    play_stream(session, stream, questions, on_frame=frame_line, on_answer=answer_lines)
    return 0
