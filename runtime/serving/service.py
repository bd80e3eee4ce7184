"""What the four Triton models do, written against plain dicts of numpy arrays so that the same code runs under
PyTriton (server.py) and under a Python-backend model repository in NVIDIA's Triton container.

A batch of frame requests may hold several streams and several rows per request; rows run in arrival order,
each under its stream's lock. No backend here offers a batched vision pass that gives the same tokens as the
per-frame one (the reference and export adapters encode one frame at a time, and STC's cacher is per stream),
so a batch is a queue of steps, and Triton's batching saves the per-request hops rather than vision FLOPs.
A bad row (unknown stream, a frame too small, time going backwards) gets its own error output; the rest of the
batch goes on.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from typing import Callable, Iterator

import numpy as np

from vlmedge.errors import InputError, VlmedgeError

from . import protocol as P
from .streams import StreamPool
from .text_stream import Pieces, TextTap
from .tokens_split import PLACEHOLDER_FRAME, ReceivedTokens


class StreamService:
    def __init__(self, adapter, method_spec: str, sample_fps: float | None = 2.0, max_new_tokens: int = 16,
                 memory_budget: str | None = None, max_streams: int = 16, idle_timeout_s: float = 300.0,
                 auto_open: bool = True, log: Callable[[str], None] = lambda msg: None):
        from vlmedge.compression import get_method
        from vlmedge.runtime.session import StreamingSession

        self.adapter = adapter
        self.method_spec = get_method(method_spec).spec()  # a bad method fails here, before any server starts
        self.sample_fps = sample_fps
        self.max_new_tokens = max_new_tokens
        self.log = log

        def make_session(split: str):
            kwargs = dict(max_new_tokens=max_new_tokens, memory_budget=memory_budget)
            if split == "tokens":  # the edge sampled and compressed already
                return StreamingSession(TextTap(adapter), method=ReceivedTokens(), sample_fps=None, **kwargs)
            return StreamingSession(TextTap(adapter), method=self.method_spec, sample_fps=sample_fps, **kwargs)

        make_session("frames")  # a setting the session refuses (budget, method on this backend) fails at start too
        self.pool = StreamPool(make_session, max_streams=max_streams, idle_timeout_s=idle_timeout_s,
                               auto_open=auto_open, log=log)
        self.batch_rows: Counter = Counter()  # rows per frame/tokens execution -> how many executions
        self.batch_requests: Counter = Counter()  # requests per execution -> how many executions
        self._stats_lock = threading.Lock()

    # ----- vlmedge_frame / vlmedge_tokens -----
    def frames(self, requests: list[dict]) -> list[dict]:
        return self._batched(requests, "frames")

    def tokens(self, requests: list[dict]) -> list[dict]:
        return self._batched(requests, "tokens")

    def _batched(self, requests: list[dict], split: str) -> list[dict]:
        rows = sum(_rows(r) for r in requests)
        with self._stats_lock:
            self.batch_rows[rows] += 1
            self.batch_requests[len(requests)] += 1
        out = []
        for req in requests:
            results = [self._one_row(req, i, split) for i in range(_rows(req))]
            out.append({
                "sampled": np.array([[r[0]] for r in results], dtype=np.bool_),
                "frames": np.array([[r[1]] for r in results], dtype=np.int64),
                "tokens_in": np.array([[r[2]] for r in results], dtype=np.int32),
                "tokens_kept": np.array([[r[3]] for r in results], dtype=np.int32),
                "stream_tokens": np.array([[r[4]] for r in results], dtype=np.int64),
                "error": P.bytes_tensor([r[5] for r in results], (len(results), 1)),
                **{k: np.array([[r[6][j]] for r in results], dtype=np.float32)
                   for j, k in enumerate(("encode_ms", "compress_ms", "prefill_ms"))},
            })
        return out

    def _one_row(self, req: dict, i: int, split: str) -> tuple:
        try:
            sid = P.first_text(np.asarray(req["stream_id"])[i])
            entry = self.pool.get(sid, split=split)
        except VlmedgeError as err:
            return (False, 0, 0, 0, 0, str(err), _NO_MS)
        with entry.lock:
            entry.frames_in += 1
            session = entry.session
            try:
                t = float(np.asarray(req["time_s"])[i].reshape(-1)[0])
                if split == "tokens":
                    ReceivedTokens.put(session.method_state, self.adapter, req["features"][i], req["keep"][i],
                                       req["grid_hw"][i], req["trailer"][i])
                    stats = session.push_frame(PLACEHOLDER_FRAME, time_s=t)
                else:
                    stats = session.push_frame(np.asarray(req["frame"][i]), time_s=t)
            except VlmedgeError as err:
                entry.frames_rejected += 1
                return (False, len(session.frame_stats), 0, 0, session.stream_tokens, f"stream {sid!r}: {err}", _NO_MS)
            finally:
                entry.touch()
            if stats is None:
                return (False, len(session.frame_stats), 0, 0, session.stream_tokens, "", _NO_MS)
            return (True, len(session.frame_stats), stats.tokens_in, stats.tokens_kept, session.stream_tokens, "",
                    (stats.encode_ms, stats.compress_ms, stats.prefill_ms))

    # ----- vlmedge_ask (decoupled) -----
    def ask(self, request: dict) -> Iterator[dict]:
        """Yields responses: text pieces while the answer is generated, then one with done=True and the answer's
        JSON. Raises `VlmedgeError` (before any response) for an unknown stream or a bad question."""
        sid = P.first_text(request["stream_id"])
        question = P.first_text(request["question"])
        max_new = request.get("max_new_tokens")
        max_new = int(np.asarray(max_new).reshape(-1)[0]) if max_new is not None else None
        if not question.strip():
            raise InputError("a question must be non-empty text")
        if max_new is not None and max_new < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new}")
        entry = self.pool.get(sid, create=False)
        pieces: queue.Queue = queue.Queue()
        done: dict = {}

        def run():
            session = entry.session
            with entry.lock:
                cut = Pieces(tuple(session.adapter.prompt.stop))
                session.adapter.listen(lambda text: pieces.put(("piece", cut.piece(text))))
                t0 = time.perf_counter()
                try:
                    ans = session.ask(question, max_new_tokens=max_new)
                    entry.answers += 1
                    done["answer"], done["rest"] = ans, cut.rest(ans.text)
                    done["latency_ms"] = (time.perf_counter() - t0) * 1e3
                except BaseException as err:  # noqa: BLE001  (reported to the caller below)
                    done["error"] = err
                finally:
                    session.adapter.listen(None)
                    entry.touch()
                    pieces.put(("end", ""))

        # generation runs beside this generator so pieces leave while the rest is still being decoded
        worker = threading.Thread(target=run, name=f"vlmedge-ask-{sid}", daemon=True)
        worker.start()
        while True:
            kind, text = pieces.get()
            if kind == "end":
                break
            if text:
                yield _ask_response(text, False, "")
        worker.join()
        if "error" in done:
            raise done["error"]
        ans = done["answer"]
        info = {k: v for k, v in ans.to_dict().items() if k != "token_ids"}
        info.update(stream_id=sid, server_ms=round(done["latency_ms"], 2))
        yield _ask_response(done["rest"], True, json.dumps(info))

    # ----- vlmedge_control -----
    def control(self, request: dict) -> dict:
        command = P.first_text(request["command"]).strip().lower()
        sid = P.first_text(request["stream_id"]) if request.get("stream_id") is not None else ""
        options = P.first_text(request["options"]) if request.get("options") is not None else ""
        if command not in P.CONTROL_COMMANDS:
            raise InputError(f"unknown control command {command!r}; use one of {', '.join(P.CONTROL_COMMANDS)}")
        if command in ("open", "reset", "close") and not sid:
            raise InputError(f"control command {command!r} needs a stream_id")
        result: dict = {"server_id": self.pool.server_id, "command": command}
        if command == "open":
            try:
                opts = json.loads(options) if options.strip() else {}
            except ValueError as err:
                raise InputError(f"open options must be JSON like {{\"split\": \"tokens\"}}, got {options!r}") from err
            if not isinstance(opts, dict):
                raise InputError(f"open options must be a JSON object, got {options!r}")
            entry, created = self.pool.open(sid, split=str(opts.get("split", "frames")))
            result.update(created=created, stream=entry.info())
        elif command == "reset":
            result.update(stream=self.pool.reset(sid).info())
        elif command == "close":
            result.update(stream=self.pool.close(sid))
        elif command == "list":
            result.update(streams=self.pool.ids())
        else:
            result.update(self.stats(sid or None))
        return {"result": P.bytes_tensor([json.dumps(result)])}

    def stats(self, stream_id: str | None = None) -> dict:
        if stream_id:
            return {"stream": self.pool.get(stream_id, create=False).info()}
        with self._stats_lock:
            rows, reqs = dict(self.batch_rows), dict(self.batch_requests)
        executions = sum(rows.values())
        return {"streams_open": len(self.pool), "max_streams": self.pool.max_streams,
                "idle_timeout_s": self.pool.idle_timeout_s, "closed_idle": self.pool.closed_idle,
                "refused_full": self.pool.refused_full, "method": self.method_spec, "sample_fps": self.sample_fps,
                "uptime_s": round(time.monotonic() - self.pool.started, 3),
                "frame_executions": executions,
                "mean_rows_per_execution": round(sum(k * v for k, v in rows.items()) / executions, 3) if executions else None,
                "rows_per_execution": {str(k): v for k, v in sorted(rows.items())},
                "requests_per_execution": {str(k): v for k, v in sorted(reqs.items())},
                "streams": [e.info() for e in self.pool.entries()]}

    def shutdown(self) -> None:
        self.pool.shutdown()


_NO_MS = (0.0, 0.0, 0.0)


def _rows(req: dict) -> int:
    return int(np.asarray(req["stream_id"]).shape[0])


def _ask_response(text: str, done: bool, answer: str) -> dict:
    return {"text": P.bytes_tensor([text]), "done": np.array([done], dtype=np.bool_), "answer": P.bytes_tensor([answer])}
