"""Answer text as it is decoded, for the streaming ask model.

`StreamingSession.ask()` returns only when the answer is complete. Its greedy loop decodes the answer so far
after every new token (to look for stop strings); a session built on a `TextTap` adapter lets a listener see
those decodes, so the ask model can send each new piece of text while the rest is still being generated.
The final `Answer` stays the authority: the pieces are cut so that they always join to a prefix of its text,
and the last response carries the remainder.
"""
from __future__ import annotations

from typing import Callable


class _TokenizerTap:
    def __init__(self, tokenizer, tap: "TextTap"):
        self._tokenizer = tokenizer
        self._tap = tap

    def decode(self, *args, **kwargs):
        text = self._tokenizer.decode(*args, **kwargs)
        self._tap._seen(text)
        return text

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


class TextTap:
    """A per-session view of a shared adapter: everything is the adapter's, except that its tokenizer reports
    decoded text to the listener set with `listen()`. One per session, so listeners never cross streams."""

    def __init__(self, adapter):
        self._adapter = adapter
        self._listener: Callable[[str], None] | None = None

    @property
    def tokenizer(self):
        return _TokenizerTap(self._adapter.tokenizer, self)

    def listen(self, listener: Callable[[str], None] | None) -> None:
        self._listener = listener

    def _seen(self, text: str) -> None:
        if self._listener is not None:
            self._listener(text)

    def __getattr__(self, name):
        return getattr(self._adapter, name)


class Pieces:
    """Turns successive decodes of the answer so far into new pieces that always join to a prefix of the final
    answer (`StreamingSession.ask`: the text before the first stop string, stripped)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.sent = ""

    def stable(self, text: str) -> str:
        for s in self.stops:
            if s in text:
                text = text[: text.index(s)]
        # hold back what may still become a stop string, a partly decoded character or trailing space
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        if hold:
            text = text[:-hold]
        text = text.rstrip("\ufffd")
        return text.strip()

    def piece(self, text: str) -> str:
        """The new text since the last piece ('' when nothing new is certain)."""
        now = self.stable(text)
        if len(now) <= len(self.sent) or not now.startswith(self.sent):
            return ""
        new, self.sent = now[len(self.sent):], now
        return new

    def rest(self, final: str) -> str:
        """The last piece: what the final answer has beyond what was sent."""
        return final[len(self.sent):] if final.startswith(self.sent) else ""
