"""The key property of the streaming session: frame-by-frame prefill into the KV cache, then decoding, gives
the same logits as one full forward over the same tokens at the same positions."""
import pytest
import torch

from conftest import FAMILIES, make_frames
from vlmedge.compression import FrameContext, get_method
from vlmedge.models.positions import PositionState
from vlmedge.runtime import StreamingSession

ATOL = 2e-4  # fp32, different matmul shapes (chunked vs full) reorder sums


def full_forward_logits(adapter, frames, times, method_spec, question, generated):
    """Everything the session did, rebuilt as one sequence and run once with a fresh cache."""
    method = get_method(method_spec)
    state = method.new_state()
    pos = PositionState()
    embeds, ids = [], []

    def text(s):
        t = adapter.tokenize(s)
        embeds.append(adapter.embed_text(t))
        ids.append(adapter.positions.text(pos, t.numel()))

    text(adapter.prompt.prefix)
    for i, (frame, t) in enumerate(zip(frames, times)):
        tok = adapter.encode_frame(frame)
        sel = method.compress(tok, FrameContext(i, t), state)
        fid = adapter.positions.frame(pos, tok.grid_hw, tok.trailer.shape[0], t)
        feats = sel.features if sel.features is not None else tok.features[sel.keep]
        embeds.append(torch.cat([feats, tok.trailer]))
        ids.append(torch.cat([fid[:, sel.keep], fid[:, tok.num_tokens:]], dim=1))
    q_start = sum(e.shape[0] for e in embeds)
    text(adapter.prompt.question_template.format(question=question))
    q_len = sum(e.shape[0] for e in embeds) - q_start
    for g in generated:
        embeds.append(adapter.embed_text(torch.tensor([g])))
        ids.append(adapter.positions.text(pos, 1))
    logits = adapter.forward_llm(torch.cat(embeds), torch.cat(ids, dim=1), adapter.new_cache(), last_only=False)
    first = q_start + q_len - 1  # logits after the question's last token predict the first answer token
    return logits[first: first + len(generated) + 1]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["none", "uniform:ratio=0.25", "random:ratio=0.5,seed=7"])
def test_incremental_prefill_matches_full_forward(tiny_adapters, family, method):
    adapter = tiny_adapters[family]
    frames = make_frames(3)
    times = [0.0, 1.0, 2.0]
    session = StreamingSession(adapter, method, keep_logits=True)
    for f, t in zip(frames, times):
        session.push_frame(f, time_s=t)
    before = session.stream_tokens
    ans = session.ask("what color is the square ?", max_new_tokens=4)
    assert session.stream_tokens == before, "ask() must leave the stream's cache unchanged"
    assert len(ans.logits) >= 1
    n_gen = len(ans.logits) - 1 if ans.stopped_by == "max_tokens" else len(ans.token_ids)
    generated = ans.token_ids[: len(ans.logits) - 1] if len(ans.logits) > 1 else []
    ref = full_forward_logits(adapter, frames, times, method, "what color is the square ?", generated)
    got = torch.stack(ans.logits[: len(generated) + 1])
    assert n_gen >= 0
    torch.testing.assert_close(got, ref[: got.shape[0]], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_asking_twice_gives_the_same_answer(tiny_adapters, family):
    session = StreamingSession(tiny_adapters[family], "none", keep_logits=True)
    for i, f in enumerate(make_frames(2, seed=1)):
        session.push_frame(f, time_s=float(i))
    a = session.ask("how many objects ?", max_new_tokens=3)
    b = session.ask("how many objects ?", max_new_tokens=3)
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits))
