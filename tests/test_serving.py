"""`vlmedge serve` on loopback: concurrent camworld streams through Triton (PyTriton) give the in-process
session's answers, health/metrics are Triton's, bad requests get clear errors, a restarted server is reconnected
to, and nothing is left running afterwards."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="serving tests need nvidia-pytriton (pip install nvidia-pytriton==0.7.0)")
pytest.importorskip("tritonclient.grpc", reason="serving tests need tritonclient[grpc]")

from vlmedge.models import camworld  # noqa: E402
from vlmedge.runtime.serving import protocol as P  # noqa: E402
from vlmedge.runtime.serving.server import descendants  # noqa: E402
from vlmedge.runtime.serving.client import (  # noqa: E402
    ServerClient, ServerError, ServerUnavailable, control, wait_until_ready)

METHOD = "uniform:ratio=0.25"
SEEDS = [1_000_000, 1_000_001, 1_000_002, 1_000_003]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Server:
    """`python -m vlmedge.commands.serve` in a subprocess on loopback."""

    def __init__(self, ports, *extra):
        self.http, self.grpc, self.metrics = ports
        self.extra = extra
        self.url = f"127.0.0.1:{self.grpc}"
        self.seen: set[int] = set()  # every descendant ever seen: none may outlive the server
        self.proc = None

    def start(self, log_path) -> "Server":
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vlmedge.commands.serve", "--model", "reference", "--method", METHOD,
             "--host", "127.0.0.1", "--http-port", str(self.http), "--grpc-port", str(self.grpc),
             "--metrics-port", str(self.metrics), *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_ready(self.url, timeout_s=150)
        except ServerUnavailable:
            self.stop()
            with open(log_path) as f:
                tail = f.read()[-3000:]
            pytest.fail(f"vlmedge serve did not become ready; its log ends:\n{tail}")
        self.seen |= descendants(self.proc.pid)
        return self

    def stop(self) -> int:
        self.seen |= descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code

    def leftovers(self) -> list[int]:
        deadline = time.monotonic() + 10  # stubs finish their own shutdown after the server's
        while time.monotonic() < deadline:
            left = [p for p in self.seen if _alive(p)]
            if not left:
                return []
            time.sleep(0.2)
        return left


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(_free_ports(3), "--max-streams", "6", "--max-batch-size", "8")
    srv.start(tmp_path_factory.mktemp("serve") / "server.log")
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


@pytest.fixture(scope="module")
def adapter():
    from vlmedge.runtime.model_source import open_model

    return open_model("reference", "torch")[0]


def _schedule(seed):
    """(stream, {frame index: [questions asked right after that frame]})."""
    stream = camworld.generate(seed, split="eval")
    asks: dict[int, list[str]] = {}
    for q in stream.questions:
        asks.setdefault(q.frame, []).append(q.text)
    return stream, asks


def _in_process(adapter, seed, method=METHOD):
    from vlmedge.runtime import StreamingSession

    stream, asks = _schedule(seed)
    session = StreamingSession(adapter, method=method, sample_fps=2.0, max_new_tokens=16)
    out = []
    for i, frame in enumerate(stream.frames):
        session.push_frame(frame, time_s=stream.frame_time(i))
        for q in asks.get(i, []):
            a = session.ask(q)
            out.append((q, a.text, a.frames))
    return out


def _through_server(url, seed, stream_id, **kwargs):
    stream, asks = _schedule(seed)
    pending = []
    with ServerClient(url, stream_id, queue_frames=len(stream.frames), **kwargs) as client:
        for i, frame in enumerate(stream.frames):
            client.push_frame(frame, stream.frame_time(i))
            for q in asks.get(i, []):
                pending.append(client.ask(q))
        answers = []
        for st in pending:
            pieces = list(st)  # streamed pieces first, then the final answer
            a = st.result()
            assert "".join(pieces) == a.text
            answers.append((a.question, a.text, a.frames))
        assert client.flush(30)
        stats = client.stats.to_dict()
    return answers, stats


def test_four_concurrent_streams_answer_like_in_process_sessions(server, adapter):
    results: dict = {}

    def run(seed):
        results[seed] = _through_server(server.url, seed, f"cam-{seed}")

    threads = [threading.Thread(target=run, args=(s,)) for s in SEEDS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == SEEDS
    for seed in SEEDS:
        answers, stats = results[seed]
        assert answers == _in_process(adapter, seed), f"seed {seed}"
        n = len(camworld.generate(seed, split="eval").frames)
        assert stats["frames_processed"] == n and stats["frames_dropped"] == 0 and stats["ask_errors"] == 0
    st = control(server.url, "stats")
    assert st["frame_executions"] >= 1 and st["streams_open"] == 0  # the clients closed their streams


def test_tokens_split_runs_vision_on_the_edge_with_the_same_answers(server, adapter):
    from vlmedge.runtime.serving.tokens_split import EdgeEncoder

    seed = SEEDS[1]
    answers, stats = _through_server(server.url, seed, "edge-cam", split="tokens",
                                     edge=EdgeEncoder(adapter, METHOD, sample_fps=2.0))
    assert answers == _in_process(adapter, seed)
    assert stats["frames_processed"] == len(camworld.generate(seed, split="eval").frames)


def test_health_ready_and_metrics_come_from_triton(server):
    base = f"http://127.0.0.1:{server.http}"
    for path in ("/v2/health/live", "/v2/health/ready", *(f"/v2/models/{m}/ready" for m in P.MODELS)):
        with urllib.request.urlopen(base + path, timeout=10) as r:
            assert r.status == 200, path
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert f'nv_inference_exec_count{{model="{P.FRAME_MODEL}"' in text
    assert f'nv_inference_count{{model="{P.ASK_MODEL}"' in text


def test_bad_requests_get_clear_errors_and_the_server_goes_on(server):
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    client = g.InferenceServerClient(server.url)

    def frame_request(frame, datatype="UINT8", sid="bad-cam"):
        sid_in = g.InferInput("stream_id", [1, 1], "BYTES")
        sid_in.set_data_from_numpy(P.bytes_tensor([sid], (1, 1)))
        fr = g.InferInput("frame", list(frame[None].shape), datatype)
        fr.set_data_from_numpy(frame[None])
        t = g.InferInput("time_s", [1, 1], "FP64")
        t.set_data_from_numpy(np.array([[0.0]]))
        return client.infer(P.FRAME_MODEL, [sid_in, fr, t])

    with pytest.raises(InferenceServerException, match="expects 'UINT8'"):
        frame_request(np.zeros((8, 8, 3), np.float32), "FP32")
    with pytest.raises(InferenceServerException, match="unexpected shape for input 'frame'"):
        frame_request(np.zeros((8, 8, 4), np.uint8))
    r = frame_request(np.zeros((1, 1, 3), np.uint8))  # right type, too small: that row's own error
    assert "at least 2x2 pixels" in P.first_text(r.as_numpy("error"))

    with pytest.raises(ServerError, match="not open on this server"):
        control(server.url, "reset", "nobody")
    with pytest.raises(ServerError, match="unknown control command"):
        control(server.url, "explode", "x")
    with ServerClient(server.url, "ghost") as c:  # asked before any frame: the stream is opened empty
        assert c.ask("how many shapes are there ?").result(60).frames == 0
    c = ServerClient(server.url, "x")
    with pytest.raises(Exception, match="uint8"):
        c.push_frame(np.zeros((8, 8, 3), np.float32), 0.0)  # the client refuses it before the network
    c.close()

    # a question to a stream the server does not hold fails with a message, not a hang
    ask_in = [g.InferInput("stream_id", [1], "BYTES"), g.InferInput("question", [1], "BYTES")]
    ask_in[0].set_data_from_numpy(P.bytes_tensor(["never-opened"]))
    ask_in[1].set_data_from_numpy(P.bytes_tensor(["what color is the circle ?"]))
    got = []
    done = threading.Event()
    client.start_stream(callback=lambda result, error: (got.append(error), done.set()))
    client.async_stream_infer(P.ASK_MODEL, ask_in, enable_empty_final_response=True)
    assert done.wait(30)
    client.stop_stream()
    assert got[0] is not None and "not open on this server" in got[0].message()

    r = frame_request(np.zeros((8, 8, 3), np.uint8), sid="after-errors")  # still serving
    assert P.first_text(r.as_numpy("error")) == "" and bool(r.as_numpy("sampled")[0, 0])
    control(server.url, "close", "after-errors")
    client.close()


def test_stream_limit_is_a_clear_error(server):
    opened = []
    try:
        with pytest.raises(ServerError, match="max_streams=6"):
            for i in range(10):
                control(server.url, "open", f"fill-{i}")
                opened.append(f"fill-{i}")
        assert len(control(server.url, "list")["streams"]) == 6
    finally:
        for sid in opened:
            control(server.url, "close", sid)


def test_remote_worker_stands_in_for_the_elements_inference_worker(server, adapter):
    from vlmedge.runtime.serving.remote_worker import RemoteWorker

    seed = SEEDS[3]
    stream, asks = _schedule(seed)
    answers, frames, warnings = [], [], []
    worker = RemoteWorker(server.url, "element-cam", on_answer=answers.append, on_frame=frames.append,
                          on_warning=warnings.append, drop_frames=False)
    worker.start()
    try:
        for i, frame in enumerate(stream.frames):
            assert worker.submit_frame(frame, 10.0 + stream.frame_time(i))  # rebased to the first frame, as locally
            for q in asks.get(i, []):
                worker.ask(q)
        assert worker.finish(60)
    finally:
        worker.stop()
    assert [(a["question"], a["answer"], a["frames"]) for a in answers] == _in_process(adapter, seed)
    assert [f.index for f in frames] == list(range(len(stream.frames))) and warnings == []
    assert worker.stats.frames_processed == len(stream.frames) and worker.stats.frames_dropped == 0


def _run_json(argv, capsys, monkeypatch) -> tuple[list[dict], str]:
    import io

    from vlmedge.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["run", *argv, "--json"]) == 0
    out = capsys.readouterr()
    return [json.loads(ln) for ln in out.out.splitlines() if ln.startswith("{")], out.err


@pytest.mark.parametrize("split", ["frames", "tokens"])
def test_vlmedge_run_with_server_answers_like_the_local_element(server, capsys, monkeypatch, split):
    pytest.importorskip("gi")
    seed = SEEDS[0]
    common = ["--model", "reference", "--method", METHOD, "--max-new-tokens", "16", "--source", f"camworld:{seed}"]
    local, _ = _run_json(common, capsys, monkeypatch)
    remote, _ = _run_json([*common, "--server", server.url, "--server-split", split, "--stream-id", f"run-{split}"],
                       capsys, monkeypatch)

    def answers(lines):
        return sorted((a["question"], a["answer"], a["frames"]) for a in lines if a["type"] == "answer")

    assert answers(remote) == answers(local) and len(answers(local)) == len(camworld.generate(seed, split="eval").questions)
    assert remote[0]["element"]["server"] == server.url and all(a.get("server") == server.url
                                                                 for a in remote if a["type"] == "answer")
    st = remote[-1]
    assert st["eos"] and st["frames-dropped"] == 0 and st["frames-processed"] == local[-1]["frames-processed"]
    frames = [ln for ln in remote if ln["type"] == "frame"]
    assert [f["tokens_kept"] for f in frames] == [f["tokens_kept"] for f in local if f["type"] == "frame"]


def test_vlmedge_run_with_an_unreachable_server_drops_and_counts_frames_and_ends(capsys, monkeypatch):
    pytest.importorskip("gi")
    seed = SEEDS[2]
    port = _free_ports(1)[0]  # nothing listens there
    lines, err = _run_json(["--source", f"camworld:{seed}", "--server", f"127.0.0.1:{port}"], capsys, monkeypatch)
    n = len(camworld.generate(seed, split="eval").frames)
    st = lines[-1]
    assert st["eos"] and st["frames-in"] == st["frames-out"] == n  # the video went through untouched
    assert st["frames-sampled"] == st["frames-dropped"] > 0 and st["frames-processed"] == 0 and st["answers"] == 0
    assert "cannot reach the server" in err and "questions not answered" in err


@pytest.mark.slow
def test_lost_connection_is_retried_reported_and_frames_counted_as_dropped(tmp_path):
    srv = Server(_free_ports(3))
    srv.start(tmp_path / "first.log")
    stream = camworld.generate(SEEDS[2], split="eval")
    events = []
    client = ServerClient(srv.url, "flaky", queue_frames=2, backoff_max_s=0.5,
                          on_event=lambda kind, msg: events.append(kind))
    try:
        for i in range(3):
            client.push_frame(stream.frames[i], stream.frame_time(i))
            assert client.flush(60)  # the queue holds two frames: let each one through
        assert client.ask("how many shapes are there ?").result(60).frames == 3
        assert srv.stop() == 0
        for i in range(3, 8):  # the server is down: two wait in the queue, the rest are pushed out and counted
            client.push_frame(stream.frames[i], stream.frame_time(i))
        pending = client.ask("how many shapes are there ?", timeout_s=120)
        time.sleep(1.0)
        srv.start(tmp_path / "second.log")
        answer = pending.result(120)  # asked while the server was down: answered once it is back, not lost
        assert client.flush(60)
        st = client.stats.to_dict()
        assert st["connection_losses"] >= 1 and st["reconnects"] >= 1 and st["server_restarts"] == 1
        assert st["frames_dropped"] >= 3 and st["answers"] == 2 and st["ask_errors"] == 0
        assert st["frames_processed"] + st["frames_dropped"] + st["frames_rejected"] == 8
        assert answer.frames == st["frames_processed"] - 3  # the restarted stream holds only what came after
        assert "server-restarted" in events and "reconnected" in events
    finally:
        client.close()
        if srv.proc.poll() is None:
            srv.stop()
    assert srv.leftovers() == []


def test_shutdown_leaves_no_process_behind(server):
    assert server.proc.poll() is None and server.seen  # tritonserver and its stubs were running
    assert server.stop() == 0
    assert server.leftovers() == []


def test_stream_pool_closes_idle_streams_and_names_the_limit():
    from vlmedge.runtime.serving.streams import StreamLimitError, StreamPool, UnknownStreamError

    class Session:
        frame_stats, frames_skipped, stream_tokens = [], 0, 0

    pool = StreamPool(lambda split: Session(), max_streams=2, idle_timeout_s=0.2)
    try:
        pool.get("a")
        pool.open("b", "tokens")
        with pytest.raises(StreamLimitError, match="max_streams=2"):
            pool.get("c")
        with pytest.raises(Exception, match="opened for 'tokens'"):
            pool.get("b", split="frames")
        time.sleep(0.6)  # both idle past the timeout: the reaper closes them
        assert pool.ids() == [] and pool.closed_idle == 2
        with pytest.raises(UnknownStreamError, match="not open on this server"):
            pool.get("a", create=False)
    finally:
        pool.shutdown()


def test_answer_pieces_hold_back_stop_strings_and_join_to_the_answer():
    from vlmedge.runtime.serving.text_stream import Pieces

    cut = Pieces(("<|im_end|>",))
    seen = [cut.piece(t) for t in (" the", " the red", " the red<|im", " the red<|im_end|> junk")]
    assert seen == ["the", " red", "", ""]
    assert cut.rest("the red") == "" and "".join(seen) == "the red"
