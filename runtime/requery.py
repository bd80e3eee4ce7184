"""Query-conditioned methods in the streaming session (`StreamingSession` mixes this in).

Query-conditioned methods (Script; `method.query_conditioned`) select tokens for a question, but frames arrive
before anyone asks. They are committed with the session's `standing_prompt` as the query (None: no query, the
method falls back to pure diversity), and the session keeps the last `requery_frames` frames' projected tokens
(plus anything appended after the oldest of them) in a bounded buffer. `ask()` re-selects those frames for the
question; from the first frame whose selection changed on, it sets the cache's tail aside, prefills the
re-selected frames (later unchanged ones too: causal attention makes their KV depend on what precedes them)
and the question, decodes, then drops that and puts the saved tail back — the stream keeps the standing
selection and asking never changes it. The cost, reported in `Answer.requery_ms`, is one selection per
buffered frame plus one prefill of at most `requery_frames` frames' kept tokens; older frames keep the
standing-prompt selection.

GlimpsePrune (`method.prunes_in_llm`) selects inside its own pruned prefill, so for it the question's prefill is
that prefill, run over the buffered frames (all their tokens), the question and the glimpse.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch

from vlmedge.compression import FrameContext
from vlmedge.runtime.kv_tail import cut_layers_to
from vlmedge.runtime.layout import frame_inputs


@dataclass
class _Segment:
    """One append to the cache that a question may redo (query-conditioned methods): a frame with its tokens and
    position ids, re-selectable, or any other append (audio, text) replayed as it was."""

    start: int  # cache length before the append
    embeds: torch.Tensor | None = None  # non-frame appends
    ids: torch.Tensor | None = None  # position ids: the frame's full ids (all tokens + trailer) or the append's
    tokens: Any = None  # FrameTokens for a frame
    ctx: FrameContext | None = None
    keep: torch.Tensor | None = None  # the committed selection
    close: tuple[torch.Tensor, torch.Tensor] | None = None  # frame_close text appended after the frame


class RequeryStream:
    """The bounded buffer of recent frames and their re-selection for a question (state lives on the session)."""

    def _query_embedding(self, text: str) -> torch.Tensor | None:
        """The LLM input embeddings `[M, D]` of the text's own tokens (no template): `FrameContext.query`."""
        ids = self.adapter.tokenize(text)
        if ids.numel() == 0:
            return None
        return self.adapter.embed_text(ids).float()

    def _record(self, seg: _Segment) -> None:
        """Keeps the appends a question may redo: those since the oldest of the last `requery_frames` frames."""
        if not self.query_conditioned or self.requery_frames == 0:
            return
        if seg.tokens is None and not self._segments:
            return  # nothing before the first buffered frame is ever redone
        self._segments.append(seg)
        frames = [i for i, g in enumerate(self._segments) if g.tokens is not None]
        if len(frames) > self.requery_frames:
            del self._segments[:frames[len(frames) - self.requery_frames]]

    def _frame_piece(self, tokens, ids):
        from vlmedge.compression.glimpse.prefill import Piece

        return Piece(torch.cat([tokens.features, tokens.trailer.to(tokens.features.dtype)]), ids, tokens)

    def _segment_pieces(self) -> list:
        """The buffered appends as prefill pieces: frames with all their tokens, everything else as it was."""
        pieces = []
        for seg in self._segments:
            if seg.tokens is None:
                pieces.append(_piece(seg.embeds, seg.ids))
                continue
            pieces.append(self._frame_piece(seg.tokens, seg.ids))
            if seg.close is not None:
                pieces.append(_piece(*seg.close))
        return pieces

    def _prefill_pieces(self, pieces):
        """A method's own pruned prefill (GlimpsePrune); on failure every cache layer is cut back."""
        start = self.cache.get_seq_length()
        try:
            return self.method.prefill(self.adapter, self.cache, pieces)
        except Exception:
            cut_layers_to(self.cache, start)
            raise

    def _requery_inputs(self, question: str):
        """Re-selects the buffered frames for `question`; None when no selection changed, else the cache length
        to cut back to and the embeddings and ids to prefill from there (see the module notes)."""
        q = self._query_embedding(question)
        redo, first = [], None
        for i, seg in enumerate(self._segments):
            if seg.tokens is None:
                redo.append(None)
                continue
            sel = self.method.compress(seg.tokens, replace(seg.ctx, query=q), copy.deepcopy(self.method_state))
            if first is None and (sel.features is not None or not torch.equal(sel.keep, seg.keep)):
                first = i
            redo.append(sel)
        if first is None:
            return None
        embeds, ids, frames = [], [], 0
        for seg, sel in zip(self._segments[first:], redo[first:]):
            if sel is None:
                embeds.append(seg.embeds)
                ids.append(seg.ids)
                continue
            frames += 1
            e, i = frame_inputs(seg.tokens, sel, seg.ids)
            embeds.append(e)
            ids.append(i)
            if seg.close is not None:
                embeds.append(seg.close[0])
                ids.append(seg.close[1])
        dtype = embeds[0].dtype
        return self._segments[first].start, torch.cat([e.to(dtype) for e in embeds]), torch.cat(ids, dim=1), frames


def _piece(embeds, ids, keep: bool = True):
    from vlmedge.compression.glimpse.prefill import Piece

    return Piece(embeds, ids, keep=keep)
