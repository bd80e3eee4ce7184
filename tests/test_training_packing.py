"""Training sees exactly what inference sees: a packed stream's logits for each question equal the session's."""
import pytest
import torch

from conftest import FAMILIES, make_frames
from vlmedge.models.training.packing import StreamPacker, collate
from vlmedge.runtime import StreamingSession


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_question_logits_equal_session_logits(tiny_adapters, family):
    a = tiny_adapters[family]
    frames = make_frames(3, seed=5)
    questions = [(0, "what color is the square ?", "red", "color"), (2, "how many objects ?", "two", "count"),
                 (1, "where is the red circle ?", "left", "where")]
    with torch.no_grad():
        packer = StreamPacker(a)
        for i, tok in enumerate(a.encode_frames(frames)):
            packer.frame(tok, float(i))
        packed = packer.build(questions)
        other = StreamPacker(a)  # a shorter second stream in the batch exercises padding
        other.frame(a.encode_frames(frames[:1])[0], 0.0)
        short = other.build(questions[:1])
        embeds, positions, mask, targets = collate([packed, short], a.positions.rows)
        logits = a.forward_packed(embeds, positions, mask)
    for (frame, text, answer, _), at in zip(questions, packed.answer_at):
        s = StreamingSession(a, "none", keep_logits=True)
        for i in range(frame + 1):
            s.push_frame(frames[i], time_s=float(i))
        ref = s.ask(text, max_new_tokens=1).logits[0]
        torch.testing.assert_close(logits[0, at].float(), ref, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1, short.answer_at[0]].float(), logits[0, packed.answer_at[0]].float(),
                               atol=2e-4, rtol=1e-4)
    assert targets[0, packed.answer_at[0]].item() == a.tokenizer.convert_tokens_to_ids("red")
