"""Load test (a benchmark, not a test): N concurrent camworld streams through one loopback `vlmedge serve`
versus the same streams as in-process sessions on one shared model.

    OMP_NUM_THREADS=1 python -m vlmedge.bench.serving_load --streams 4 --clips 3

Each stream plays `--clips` camworld clips back to back as one stream and asks every clip's questions at their
frames. Streams run closed-loop (each stream sends its next frame when the previous one is answered), so
throughput is what the server sustains, not what a camera offers. Reported: frames per second over all
streams, per-question latency percentiles, the batch sizes Triton formed for the frame model (from its
metrics endpoint), and memory (the server's process tree RSS; for in-process, this process's peak RSS).
Bounded by `--max-seconds` per mode.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from vlmedge.models import camworld

EVAL_SEED = 1_000_000


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tree_rss_mb(pid: int) -> float:
    from vlmedge.runtime.serving.server import descendants

    tree = {pid} | descendants(pid)
    total = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def _percentile(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def _plan(stream_index: int, clips: int):
    """[(frame, time_s, [questions after it])] for one stream: `clips` eval clips back to back."""
    out, offset = [], 0.0
    for c in range(clips):
        clip = camworld.generate(EVAL_SEED + stream_index * clips + c, split="eval")
        asks: dict[int, list[str]] = {}
        for q in clip.questions:
            asks.setdefault(q.frame, []).append(q.text)
        for i, frame in enumerate(clip.frames):
            out.append((frame, offset + clip.frame_time(i), asks.get(i, [])))
        offset += clip.num_frames / clip.fps
    return out


def _metrics(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    got = {}
    for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success"):
        m = re.search(rf'^{name}{{model="vlmedge_frame"[^}}]*}} (\S+)', text, re.M)
        got[name] = float(m.group(1)) if m else 0.0
    return got


def run_served(plans, args, log) -> dict:
    from vlmedge.runtime.serving.client import ServerClient, control, wait_until_ready

    http, grpc, metrics = _free_ports(3)
    logf = tempfile.NamedTemporaryFile("w", prefix="vlmedge-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "vlmedge.commands.serve", "--model", args.model, "--method",
                             args.method, "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc),
                             "--metrics-port", str(metrics), "--max-streams", str(max(16, len(plans))),
                             "--max-batch-size", str(args.max_batch_size), "--sample-fps", str(args.sample_fps),
                             "--ask-instances", str(args.ask_instances)],
                            stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"127.0.0.1:{grpc}"
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

    try:
        wait_until_ready(url, timeout_s=180)
        log(f"server up (log: {logf.name})")
        before = _metrics(metrics)
        threading.Thread(target=sample, daemon=True).start()
        latencies, frames, questions = [], [0], [0]
        lock = threading.Lock()
        deadline = time.monotonic() + args.max_seconds

        def one(i, plan):
            with ServerClient(url, f"load-{i}", queue_frames=4) as client:
                for frame, t, asks in plan:
                    if time.monotonic() > deadline:
                        break
                    client.push_frame(frame, t)
                    pending = [client.ask(q) for q in asks]
                    client.flush(60)
                    answers = [p.result(120) for p in pending]
                    with lock:
                        frames[0] += 1
                        questions[0] += len(answers)
                        latencies.extend(a.latency_ms for a in answers)
                st = client.stats.to_dict()
                if st["frames_dropped"] or st["frames_rejected"] or st["ask_errors"]:
                    log(f"stream {i}: {st}")

        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(plans)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        after = _metrics(metrics)
        server = control(url, "stats")
        count = after["nv_inference_count"] - before["nv_inference_count"]
        execs = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
        rows = {int(k): v for k, v in server["rows_per_execution"].items()}
        return {"mode": "served (Triton, loopback)", "frames": frames[0], "questions": questions[0], "wall": wall,
                "latencies": latencies, "mean_batch": count / execs if execs else float("nan"),
                "max_batch": max(rows) if rows else 0, "rss_mb": peak[0]}
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()


def run_in_process(plans, args, log) -> dict:
    from vlmedge.runtime import StreamingSession
    from vlmedge.runtime.model_source import open_model

    adapter, _ = open_model(args.model, "auto")
    latencies, frames, questions = [], [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + args.max_seconds

    def one(plan):
        session = StreamingSession(adapter, method=args.method, sample_fps=args.sample_fps, max_new_tokens=16)
        for frame, t, asks in plan:
            if time.monotonic() > deadline:
                break
            session.push_frame(frame, time_s=t)
            got = []
            for q in asks:
                t0 = time.perf_counter()
                session.ask(q)
                got.append((time.perf_counter() - t0) * 1e3)
            with lock:
                frames[0] += 1
                questions[0] += len(got)
                latencies.extend(got)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": "in-process sessions (threads)", "frames": frames[0], "questions": questions[0], "wall": wall,
            "latencies": latencies, "mean_batch": float("nan"), "max_batch": 0, "rss_mb": rss}


def table(rows, streams) -> str:
    head = ("| mode | streams | frames | questions | wall s | frames/s | question p50 ms | p90 ms | p99 ms | "
            "frame batch mean / max | RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lat = r["latencies"]
        batch = "-" if r["max_batch"] == 0 else f"{r['mean_batch']:.2f} / {r['max_batch']}"
        lines.append(f"| {r['mode']} | {streams} | {r['frames']} | {r['questions']} | {r['wall']:.1f} | "
                     f"{r['frames'] / r['wall']:.1f} | {_percentile(lat, 50):.0f} | {_percentile(lat, 90):.0f} | "
                     f"{_percentile(lat, 99):.0f} | {batch} | {r['rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--clips", type=int, default=3, help="camworld clips per stream, back to back (8 frames each)")
    p.add_argument("--model", default="reference")
    p.add_argument("--method", default="uniform:ratio=0.25")
    p.add_argument("--sample-fps", type=float, default=2.0)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--ask-instances", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=120.0, help="bound per mode")
    p.add_argument("--skip-in-process", action="store_true")
    args = p.parse_args(argv)
    log = lambda msg: print(f"# {msg}", file=sys.stderr, flush=True)  # noqa: E731
    plans = [_plan(i, args.clips) for i in range(args.streams)]
    rows = [run_served(plans, args, log)]  # first, while this process holds no model (its RSS is the baseline's)
    if not args.skip_in_process:
        rows.append(run_in_process(plans, args, log))
    print(f"`OMP_NUM_THREADS=1 python -m vlmedge.bench.serving_load --streams {args.streams} --clips {args.clips} "
          f"--method {args.method}` ({os.cpu_count()} CPU cores)\n")
    print(table(rows, args.streams))
    return 0


if __name__ == "__main__":
    sys.exit(main())
