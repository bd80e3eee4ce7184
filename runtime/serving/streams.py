"""Per-stream sessions on a server: created on first use or by an explicit open, closed explicitly or when
idle, and bounded in number.

Every stream owns one `StreamingSession` (its KV cache, positions and method state) and one lock: Triton runs
the frame model and the ask model on different threads, and a session must never run two steps at once. All
sessions share the server's adapter (read-only weights).
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from vlmedge.errors import InputError, VlmedgeError

from .protocol import SPLITS


class StreamLimitError(VlmedgeError):
    """The server holds as many streams as it may."""


class UnknownStreamError(InputError):
    """A request names a stream the server does not hold."""


@dataclass
class StreamEntry:
    stream_id: str
    split: str  # "frames" (the server encodes) or "tokens" (the edge encoded)
    session: Any  # a StreamingSession
    lock: threading.Lock = field(default_factory=threading.Lock)
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    frames_in: int = 0  # requests with a frame (or tokens), taken or not
    frames_rejected: int = 0
    answers: int = 0

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def info(self) -> dict:
        s = self.session
        now = time.monotonic()
        return {"stream_id": self.stream_id, "split": self.split, "frames_in": self.frames_in,
                "frames_held": len(s.frame_stats), "frames_skipped": s.frames_skipped,
                "frames_rejected": self.frames_rejected, "stream_tokens": s.stream_tokens, "answers": self.answers,
                "age_s": round(now - self.created, 3), "idle_s": round(now - self.last_used, 3)}


class StreamPool:
    """Stream id -> `StreamEntry`. `make_session(split)` builds a fresh session for a new stream."""

    def __init__(self, make_session: Callable[[str], Any], max_streams: int = 16, idle_timeout_s: float = 300.0,
                 auto_open: bool = True, log: Callable[[str], None] = lambda msg: None):
        if max_streams < 1:
            raise InputError(f"max_streams must be at least 1, got {max_streams}")
        if idle_timeout_s <= 0:
            raise InputError(f"idle_timeout_s must be positive seconds, got {idle_timeout_s}")
        self.make_session = make_session
        self.max_streams = int(max_streams)
        self.idle_timeout_s = float(idle_timeout_s)
        self.auto_open = auto_open
        self.log = log
        # A client compares it after reconnecting: a new id means the server restarted and every stream's state
        # (frames before the restart) is gone.
        self.server_id = uuid.uuid4().hex[:12]
        self.started = time.monotonic()
        self.closed_idle = 0
        self.refused_full = 0
        self._entries: dict[str, StreamEntry] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="vlmedge-stream-reaper", daemon=True)
        self._reaper.start()

    # ----- lookup and lifecycle -----
    def get(self, stream_id: str, split: str | None = None, create: bool | None = None) -> StreamEntry:
        """The stream's entry; a new one when it is unknown and `create` (default: the pool's auto_open) allows.
        `split`, when given, must match the stream's."""
        _check_id(stream_id)
        create = self.auto_open if create is None else create
        with self._lock:
            entry = self._entries.get(stream_id)
            if entry is None:
                if not create:
                    raise UnknownStreamError(
                        f"stream {stream_id!r} is not open on this server (closed, idle for more than "
                        f"{self.idle_timeout_s:g} s, or the server restarted); open it with the control model "
                        "('open') or send a frame first")
                entry = self._new(stream_id, split or "frames")
            elif split is not None and entry.split != split:
                raise InputError(f"stream {stream_id!r} was opened for {entry.split!r} and got a {split!r} request; "
                                 f"use one split per stream (or close it and open it again)")
            entry.touch()
            return entry

    def open(self, stream_id: str, split: str = "frames") -> tuple[StreamEntry, bool]:
        """(entry, created): opening an open stream of the same split is not an error (a reconnecting client
        does it)."""
        if split not in SPLITS:
            raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        _check_id(stream_id)
        with self._lock:
            entry = self._entries.get(stream_id)
            created = entry is None
        entry = self.get(stream_id, split=split, create=True)
        return entry, created

    def reset(self, stream_id: str) -> StreamEntry:
        entry = self.get(stream_id, create=False)
        with entry.lock:
            entry.session.reset()
            entry.frames_in = entry.frames_rejected = entry.answers = 0
        return entry

    def close(self, stream_id: str) -> dict:
        _check_id(stream_id)
        with self._lock:
            entry = self._entries.pop(stream_id, None)
        if entry is None:
            raise UnknownStreamError(f"stream {stream_id!r} is not open on this server; nothing to close")
        with entry.lock:  # a step in progress finishes first
            return entry.info()

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def entries(self) -> list[StreamEntry]:
        with self._lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            self._entries.clear()

    # ----- internals -----
    def _new(self, stream_id: str, split: str) -> StreamEntry:
        if len(self._entries) >= self.max_streams:
            self._close_idle_locked(time.monotonic())
        if len(self._entries) >= self.max_streams:
            self.refused_full += 1
            raise StreamLimitError(
                f"the server already holds {len(self._entries)} streams (max_streams={self.max_streams}); close one "
                "with the control model ('close'), wait for an idle one to time out, or restart the server with a "
                "larger --max-streams")
        entry = StreamEntry(stream_id, split, self.make_session(split))
        self._entries[stream_id] = entry
        self.log(f"stream {stream_id!r} opened ({split}); {len(self._entries)}/{self.max_streams} streams")
        return entry

    def _close_idle_locked(self, now: float) -> None:
        for sid, entry in list(self._entries.items()):
            # a stream in the middle of a step is not idle, whatever its timestamp says
            if now - entry.last_used > self.idle_timeout_s and not entry.lock.locked():
                del self._entries[sid]
                self.closed_idle += 1
                self.log(f"stream {sid!r} closed after {now - entry.last_used:.0f} s idle")

    def _reap_loop(self) -> None:
        period = min(5.0, max(0.05, self.idle_timeout_s / 4))
        while not self._stop.wait(period):
            with self._lock:
                self._close_idle_locked(time.monotonic())


def _check_id(stream_id) -> None:
    if not isinstance(stream_id, str) or not stream_id.strip() or len(stream_id) > 256:
        raise InputError(f"a stream id must be non-empty text of at most 256 characters, got {stream_id!r}")
