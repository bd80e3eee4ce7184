"""`ServerClient`: one camera stream against a vlmedge server, or any Triton server with the models of
protocol.py, using only standard `tritonclient.grpc` calls.

The caller never waits on the network: `push_frame()` and `ask()` queue work for one sender thread and return at
once. Frames wait in a bounded queue; when it is full the oldest frame is dropped and counted (a live camera
wants the newest frame, as the GStreamer element's latest-frame-wins queue). Questions are never dropped: each
one ends in an answer or in an error its `AnswerStream` raises. A stream's steps run in the order they were
queued (a question sees exactly the frames queued before it), which is what makes answers equal to an
in-process `StreamingSession` fed the same frames.

A lost connection is retried with exponential back-off; the frame in flight when it broke and frames pushed out
of the full queue while it is down are counted as dropped, and events say what happened (`on_event`, `events`).
After reconnecting the client opens its stream again; a changed `server_id` means the server restarted and the
stream's earlier frames are gone, which is reported as well.
"""
from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vlmedge.errors import InputError, VlmedgeError

from . import protocol as P

LOG = logging.getLogger("vlmedge.serving")

# gRPC status codes that mean "the server is not reachable" rather than "the server refused this request"
_CONNECTION_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED", "UNKNOWN")


class ServerError(VlmedgeError):
    """The server refused a request (its message says why)."""


class ServerUnavailable(VlmedgeError):
    """The server could not be reached in time."""


def _is_connection_error(err) -> bool:
    status = str(getattr(err, "status", lambda: "")() or "")
    return any(status.endswith(code) for code in _CONNECTION_CODES) or not status


@dataclass
class RemoteAnswer:
    question: str
    text: str
    frames: int  # frames the answer was conditioned on
    stream_tokens: int
    latency_ms: float  # ask() called -> last response
    first_piece_ms: float | None  # ask() called -> first text piece (None when the answer came in one response)
    info: dict = field(default_factory=dict)  # the server's answer JSON (timings, stopped_by, ...)


class AnswerStream:
    """Pieces of one answer as they arrive (iterate), and the final `RemoteAnswer` (`result()`). Raises
    `ServerError` / `ServerUnavailable` if the question could not be answered."""

    def __init__(self, question: str, max_new_tokens: int | None, timeout_s: float):
        self.question = question
        self.max_new_tokens = max_new_tokens
        self.asked = time.monotonic()
        self.deadline = self.asked + timeout_s
        self._pieces: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._answer: RemoteAnswer | None = None
        self._error: BaseException | None = None
        self._first: float | None = None
        self.pieces_received = 0

    # ----- consumer side -----
    def __iter__(self):
        while True:
            try:
                kind, value = self._pieces.get(timeout=max(0.0, self.deadline - time.monotonic()) + 1.0)
            except queue.Empty:
                raise ServerUnavailable(f"no answer to {self.question!r} in time") from None
            if kind == "piece":
                yield value
            elif kind == "end":
                if self._error is not None:
                    raise self._error
                return

    def result(self, timeout: float | None = None) -> RemoteAnswer:
        wait = max(0.0, self.deadline - time.monotonic()) + 1.0 if timeout is None else timeout
        if not self._done.wait(wait):
            raise ServerUnavailable(f"no answer to {self.question!r} within {wait:.1f} s")
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # ----- sender side -----
    def _piece(self, text: str) -> None:
        if self._first is None:
            self._first = time.monotonic()
        self.pieces_received += 1
        self._pieces.put(("piece", text))

    def _finish(self, info: dict) -> None:
        now = time.monotonic()
        self._answer = RemoteAnswer(self.question, info.get("text", ""), int(info.get("frames", 0)),
                                    int(info.get("stream_tokens", 0)), (now - self.asked) * 1e3,
                                    None if self._first is None else (self._first - self.asked) * 1e3, info)
        self._done.set()
        self._pieces.put(("end", None))

    def _fail(self, err: BaseException) -> None:
        if self._done.is_set():
            return
        self._error = err
        self._done.set()
        self._pieces.put(("end", None))


@dataclass
class ClientStats:
    frames_submitted: int = 0
    frames_sent: int = 0
    frames_processed: int = 0  # sampled and prefilled on the server
    frames_skipped: int = 0  # the sampler (server's, or the edge's in the tokens split) skipped them
    frames_rejected: int = 0  # the server refused them (error returned; the stream goes on)
    frames_dropped_queue: int = 0  # pushed out of the full queue by newer frames
    frames_dropped_connection: int = 0  # in flight when the connection broke
    questions: int = 0
    answers: int = 0
    ask_errors: int = 0
    connection_losses: int = 0
    reconnect_attempts: int = 0
    reconnects: int = 0
    server_restarts: int = 0  # the server came back with a new server_id: the stream started over
    stream_reopened: int = 0  # same server, but it no longer held the stream (closed or idle timeout)
    bytes_sent: int = 0
    answer_latency_ms: list = field(default_factory=list)
    frame_rtt_ms: list = field(default_factory=list)

    @property
    def frames_dropped(self) -> int:
        return self.frames_dropped_queue + self.frames_dropped_connection

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not isinstance(v, list)}
        d["frames_dropped"] = self.frames_dropped
        for name in ("answer_latency_ms", "frame_rtt_ms"):
            vals = sorted(getattr(self, name))
            d[f"{name}_p50"] = round(vals[len(vals) // 2], 2) if vals else None
        return d


class ServerClient:
    """One stream on a server at `url` ("host:port" of the gRPC endpoint).

    split="frames" sends frames; split="tokens" runs `edge` (a `tokens_split.EdgeEncoder`: sampler, vision tower
    and compressor on this machine) and sends only the kept visual tokens.
    """

    def __init__(self, url: str, stream_id: str | None = None, split: str = "frames", edge=None,
                 queue_frames: int = 8, request_timeout_s: float = 30.0, ask_timeout_s: float = 120.0,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 2.0,
                 on_event: Callable[[str, str], None] | None = None, on_frame: Callable[[dict], None] | None = None,
                 close_stream_on_exit: bool = True):
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as err:
            raise VlmedgeError(f"ServerClient needs tritonclient ({err}); pip install 'tritonclient[grpc]'") from err
        if split not in P.SPLITS:
            raise InputError(f"split must be one of {', '.join(P.SPLITS)}, got {split!r}")
        if (split == "tokens") != (edge is not None):
            raise InputError("the tokens split needs an edge encoder (tokens_split.EdgeEncoder) and the frames split "
                             "takes none")
        if queue_frames < 1:
            raise InputError(f"queue_frames must be at least 1, got {queue_frames}")
        self._grpc = grpcclient
        self.url = url
        self.stream_id = stream_id or uuid.uuid4().hex[:12]
        self.split = split
        self.edge = edge
        self.queue_frames = int(queue_frames)
        self.request_timeout_s = float(request_timeout_s)
        self.ask_timeout_s = float(ask_timeout_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.on_event = on_event
        self.on_frame = on_frame  # called on the sender thread with each frame's outputs (see protocol.py)
        self.close_stream_on_exit = close_stream_on_exit
        self.stats = ClientStats()
        self.events: collections.deque = collections.deque(maxlen=200)
        self.server_id: str | None = None
        self.connected = False
        # monotonic time since which the server has been unreachable (None: connected, or not tried yet)
        self.unreachable_since: float | None = None
        self._client: Any = None  # tritonclient.grpc.InferenceServerClient once connected
        self._last_refusal: str | None = None
        self._queue: collections.deque = collections.deque()  # ("frame", frame, t) | ("ask", AnswerStream)
        self._cv = threading.Condition()
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"vlmedge-client-{self.stream_id}", daemon=True)
        self._thread.start()

    # ----- caller side: never waits on the network -----
    def push_frame(self, frame, time_s: float, wait_s: float = 0.0) -> None:
        """Queues a frame (HxWx3 uint8 RGB) at `time_s` seconds of stream time. A bad frame raises `InputError`
        here. A full queue waits up to `wait_s` for room (back-pressure for files), then drops its oldest frame
        (counted in stats.frames_dropped_queue)."""
        from vlmedge.models.preprocess import validate_frame

        validate_frame(frame)
        end = time.monotonic() + max(0.0, wait_s)
        with self._cv:
            if self._stop:
                raise VlmedgeError("this ServerClient is closed")
            self.stats.frames_submitted += 1
            # back-pressure only while the server is reachable: waiting on a dead server would stall the caller
            while (sum(it[0] == "frame" for it in self._queue) >= self.queue_frames and not self._stop
                   and self.reachable and time.monotonic() < end):
                self._cv.wait(max(0.0, end - time.monotonic()))
            frames = [it for it in self._queue if it[0] == "frame"]
            if len(frames) >= self.queue_frames:
                self._queue.remove(frames[0])
                self.stats.frames_dropped_queue += 1
            self._queue.append(("frame", np.ascontiguousarray(frame), float(time_s)))
            self._cv.notify_all()

    def ask(self, question: str, max_new_tokens: int | None = None, timeout_s: float | None = None) -> AnswerStream:
        """Queues a question about every frame queued before it; iterate the result for pieces of the answer as
        they arrive, or call `.result()`."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("a question must be non-empty text")
        stream = AnswerStream(question, max_new_tokens, self.ask_timeout_s if timeout_s is None else timeout_s)
        with self._cv:
            if self._stop:
                raise VlmedgeError("this ServerClient is closed")
            self.stats.questions += 1
            self._queue.append(("ask", stream))
            self._cv.notify_all()
        return stream

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Waits until everything queued has been sent and answered (True) or `timeout_s` passed (False)."""
        end = time.monotonic() + timeout_s
        with self._cv:
            while self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    @property
    def reachable(self) -> bool:
        """False once a connection attempt has failed, until one succeeds."""
        return self.connected or self.unreachable_since is None

    def abandon(self, reason: str) -> tuple[int, int]:
        """Gives up on what is queued (end of stream with the server down): queued frames are dropped and counted
        in stats.frames_dropped_queue, queued questions fail with `reason`. Returns (frames, questions)."""
        with self._cv:
            frames = sum(it[0] == "frame" for it in self._queue)
            asks = [it[1] for it in self._queue if it[0] == "ask"]
            self._queue.clear()
            self.stats.frames_dropped_queue += frames
            self.stats.ask_errors += len(asks)
            self._cv.notify_all()
        for stream in asks:
            stream._fail(ServerUnavailable(f"{reason}; the question {stream.question!r} was not answered"))
        return frames, len(asks)

    def discard_frames(self) -> int:
        """Drops every queued frame (a seek: they are from before it); returns how many. Not counted as dropped."""
        with self._cv:
            frames = [it for it in self._queue if it[0] == "frame"]
            self._queue = collections.deque(it for it in self._queue if it[0] != "frame")
            self._cv.notify_all()
            return len(frames)

    @property
    def pending(self) -> int:
        """Frames and questions queued or being sent."""
        with self._cv:
            return len(self._queue) + int(self._busy)

    def control(self, command: str, options: dict | None = None, timeout_s: float | None = None) -> dict:
        """A control command for this stream (open/reset/close/stats), sent now on a separate connection."""
        return control(self.url, command, self.stream_id, options, timeout_s or self.request_timeout_s)

    def close(self, flush_timeout_s: float = 10.0) -> None:
        """Sends what is queued (up to `flush_timeout_s`), closes the stream on the server, stops the sender."""
        self.flush(flush_timeout_s)
        with self._cv:
            self._stop = True
            for item in self._queue:
                if item[0] == "ask":
                    item[1]._fail(VlmedgeError("the client was closed before the question was sent"))
            self._queue.clear()
            self._cv.notify_all()
        self._thread.join(timeout=self.request_timeout_s + 5)
        if self.close_stream_on_exit and self.connected:
            try:
                self.control("close", timeout_s=5.0)
            except VlmedgeError:
                pass  # the server dropped it already (restart, idle timeout): nothing left to close
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> "ServerClient":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    # ----- the sender thread -----
    def _event(self, kind: str, message: str) -> None:
        self.events.append((time.time(), kind, message))
        LOG.warning("stream %s: %s: %s", self.stream_id, kind, message)
        if self.on_event is not None:
            try:
                self.on_event(kind, message)
            except Exception:  # noqa: BLE001  a faulty callback must not stop the stream
                LOG.exception("on_event callback failed")

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
            if not self.connected:
                if not self._connect():
                    if self.unreachable_since is None:  # said once per outage, not on every retry
                        self.unreachable_since = time.monotonic()
                        self._event("unreachable", f"cannot reach the server at {self.url}; retrying with back-off "
                                                   f"(at most {self.queue_frames} frames wait, older ones are "
                                                   "dropped and counted)")
                    self._expire_asks()
                    with self._cv:
                        self._cv.wait(backoff)  # a close() wakes it early
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                backoff = self.backoff_initial_s
            with self._cv:
                if not self._queue:
                    continue
                item = self._queue.popleft()
                self._busy = True
                self._cv.notify_all()  # a push_frame waiting for room
            try:
                if item[0] == "frame":
                    self._send_frame(item[1], item[2])
                else:
                    self._send_ask(item[1])
            except Exception as err:  # noqa: BLE001  a bug here must not end the stream silently
                LOG.exception("stream %s: sending failed", self.stream_id)
                if item[0] == "ask":
                    item[1]._fail(VlmedgeError(f"the question could not be sent: {err}"))
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _expire_asks(self) -> None:
        """Questions whose time ran out while the server was unreachable fail loudly instead of waiting on."""
        now = time.monotonic()
        with self._cv:
            for item in [it for it in self._queue if it[0] == "ask" and it[1].deadline <= now]:
                self._queue.remove(item)
                self.stats.ask_errors += 1
                item[1]._fail(ServerUnavailable(
                    f"the server at {self.url} was unreachable until the question's deadline; the question "
                    f"{item[1].question!r} was not answered (ask again once it is back)"))
            self._cv.notify_all()

    def _lost(self, err) -> None:
        if self.connected:
            self.stats.connection_losses += 1
            self.unreachable_since = time.monotonic()
            self._event("connection-lost", f"{self.url}: {getattr(err, 'message', lambda: err)()}; retrying with back-off")
        self.connected = False

    def _connect(self) -> bool:
        self.stats.reconnect_attempts += 1
        try:
            if self._client is not None:
                self._client.close()
            self._client = self._grpc.InferenceServerClient(self.url)
            if not self._client.is_server_ready(client_timeout=self.request_timeout_s):
                return False
            result = control(self.url, "open", self.stream_id, {"split": self.split}, self.request_timeout_s,
                             client=self._client)
        except (VlmedgeError, self._grpc_exception()) as err:
            if isinstance(err, ServerError) and str(err) != self._last_refusal:
                self._last_refusal = str(err)  # retried with back-off: say it once, not on every attempt
                self._event("open-refused", str(err))
            LOG.debug("stream %s: connecting to %s failed: %s", self.stream_id, self.url, err)
            return False
        first = self.server_id is None
        if not first and result["server_id"] != self.server_id:
            self.stats.server_restarts += 1
            self._event("server-restarted", "the server restarted; this stream starts over (frames sent before "
                                            "the restart are gone)")
        elif not first and result.get("created"):
            self.stats.stream_reopened += 1
            self._event("stream-reopened", "the server no longer held this stream (closed or idle); it starts over")
        if not first and result.get("created") and self.edge is not None:
            self.edge.reset()  # the edge's method state must start over with the server's stream
        if not first:
            self.stats.reconnects += 1
            self._event("reconnected", f"{self.url} (server {result['server_id']})")
        self.server_id = result["server_id"]
        self.connected = True
        self.unreachable_since = None
        self._last_refusal = None
        return True

    def _grpc_exception(self):
        from tritonclient.utils import InferenceServerException

        return InferenceServerException

    def _send_frame(self, frame, time_s: float) -> None:
        g = self._grpc
        if self.split == "tokens":
            try:
                arrays = self.edge.encode(frame, time_s)
            except VlmedgeError as err:
                self.stats.frames_rejected += 1
                self._event("frame-rejected", f"edge: {err}")
                return
            if arrays is None:
                self.stats.frames_skipped += 1
                return
            model, spec = P.TOKENS_MODEL, tuple(P.TOKENS_INPUTS)
        else:
            arrays = {"frame": frame, "time_s": np.array([time_s], dtype=np.float64)}
            model, spec = P.FRAME_MODEL, P.FRAME_INPUTS
        arrays = {"stream_id": P.bytes_tensor([self.stream_id]), **arrays}
        inputs = []
        for io in spec:
            arr = np.asarray(arrays[io.name])[None]  # the batch dimension
            inp = g.InferInput(io.name, list(arr.shape), io.datatype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
            self.stats.bytes_sent += arr.nbytes
        t0 = time.monotonic()
        try:
            result = self._client.infer(model, inputs, client_timeout=self.request_timeout_s)
        except self._grpc_exception() as err:
            if _is_connection_error(err):
                self.stats.frames_dropped_connection += 1
                self._lost(err)
            else:
                self.stats.frames_rejected += 1
                self._event("frame-rejected", err.message())
            return
        self.stats.frames_sent += 1
        rtt = (time.monotonic() - t0) * 1e3
        self.stats.frame_rtt_ms.append(rtt)
        error = P.first_text(result.as_numpy("error"))
        if self.on_frame is not None:
            out = {io.name: np.asarray(result.as_numpy(io.name)).reshape(-1)[0] for io in P.FRAME_OUTPUTS
                   if io.name != "error" and result.as_numpy(io.name) is not None}
            try:
                self.on_frame({**{k: v.item() for k, v in out.items()}, "error": error, "time_s": time_s,
                               "rtt_ms": rtt})
            except Exception:  # noqa: BLE001  a faulty callback must not stop the stream
                LOG.exception("on_frame callback failed")
        if error:
            self.stats.frames_rejected += 1
            self._event("frame-rejected", error)
        elif bool(np.asarray(result.as_numpy("sampled")).reshape(-1)[0]):
            self.stats.frames_processed += 1
        else:
            self.stats.frames_skipped += 1

    def _send_ask(self, stream: AnswerStream) -> None:
        g = self._grpc
        arrays = {"stream_id": P.bytes_tensor([self.stream_id]), "question": P.bytes_tensor([stream.question])}
        if stream.max_new_tokens is not None:
            arrays["max_new_tokens"] = np.array([stream.max_new_tokens], dtype=np.int32)
        inputs = []
        for io in P.ASK_INPUTS:
            if io.name in arrays:
                inp = g.InferInput(io.name, list(arrays[io.name].shape), io.datatype)
                inp.set_data_from_numpy(arrays[io.name])
                inputs.append(inp)
        while True:
            outcome = self._stream_once(stream, inputs)
            if outcome == "done":
                if stream._error is None:
                    self.stats.answers += 1
                    self.stats.answer_latency_ms.append(stream.result(0).latency_ms)
                else:
                    self.stats.ask_errors += 1
                return
            # the connection broke before any piece arrived: reconnect and ask again, until the deadline
            while not self._stop and time.monotonic() < stream.deadline and not self._connect():
                time.sleep(min(self.backoff_max_s, max(0.0, stream.deadline - time.monotonic())))
            if self._stop or not self.connected:
                self.stats.ask_errors += 1
                stream._fail(ServerUnavailable(f"the server at {self.url} was unreachable until the question's "
                                               f"deadline; {stream.question!r} was not answered"))
                return

    def _stream_once(self, stream: AnswerStream, inputs) -> str:
        """'done' (answered or failed for good) or 'retry' (connection lost before any piece)."""
        finished = threading.Event()
        outcome = {"value": "done"}

        def callback(result, error):
            if error is not None:
                if _is_connection_error(error) and stream.pieces_received == 0:
                    outcome["value"] = "retry"
                    self._lost(error)
                elif _is_connection_error(error):
                    self._lost(error)
                    stream._fail(ServerUnavailable(
                        f"the connection broke after {stream.pieces_received} pieces of the answer to "
                        f"{stream.question!r}; the answer is incomplete (ask again)"))
                else:
                    stream._fail(ServerError(error.message()))
                finished.set()
                return
            text = result.as_numpy("text")
            if text is not None:
                piece = P.first_text(text)
                if piece:
                    stream._piece(piece)
                if bool(np.asarray(result.as_numpy("done")).reshape(-1)[0]):
                    stream._finish(json.loads(P.first_text(result.as_numpy("answer"))))
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                if not stream.done:
                    stream._fail(ServerError("the server ended the answer without its final response"))
                finished.set()

        self._client.start_stream(callback=callback)
        try:
            self._client.async_stream_infer(P.ASK_MODEL, inputs, request_id=uuid.uuid4().hex[:8],
                                            enable_empty_final_response=True)
            if not finished.wait(max(0.0, stream.deadline - time.monotonic())):
                stream._fail(ServerUnavailable(f"no answer to {stream.question!r} within its deadline"))
        except self._grpc_exception() as err:
            if _is_connection_error(err):
                self._lost(err)
                return "retry"
            stream._fail(ServerError(err.message()))
        finally:
            self._client.stop_stream(cancel_requests=not stream.done)
        return outcome["value"]


def control(url: str, command: str, stream_id: str | None = None, options: dict | None = None,
            timeout_s: float = 30.0, client=None) -> dict:
    """One control command (see protocol.CONTROL_COMMANDS) -> the server's JSON as a dict."""
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    own = client is None
    client = client or g.InferenceServerClient(url)
    try:
        arrays = {"command": P.bytes_tensor([command])}
        if stream_id:
            arrays["stream_id"] = P.bytes_tensor([stream_id])
        if options:
            arrays["options"] = P.bytes_tensor([json.dumps(options)])
        inputs = []
        for name, arr in arrays.items():
            inp = g.InferInput(name, list(arr.shape), "BYTES")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        try:
            result = client.infer(P.CONTROL_MODEL, inputs, client_timeout=timeout_s)
        except InferenceServerException as err:
            if _is_connection_error(err):
                raise ServerUnavailable(f"the server at {url} is unreachable: {err.message()}") from err
            raise ServerError(err.message()) from err
        return json.loads(P.first_text(result.as_numpy("result")))
    finally:
        if own:
            client.close()


def wait_until_ready(url: str, timeout_s: float = 120.0, models=P.MODELS) -> None:
    """Returns once the server at `url` (gRPC) is ready with every model; `ServerUnavailable` after timeout_s."""
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    end = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < end:
        client = g.InferenceServerClient(url)
        try:
            if client.is_server_ready(client_timeout=2.0) and all(
                    client.is_model_ready(m, client_timeout=2.0) for m in models):
                return
            last = "not ready"
        except InferenceServerException as err:
            last = err.message()
        finally:
            client.close()
        time.sleep(0.25)
    raise ServerUnavailable(f"the server at {url} was not ready within {timeout_s:g} s ({last})")
