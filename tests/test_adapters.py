"""Adapters against the real transformers classes: the block-by-block vision path, the streaming layout and
the position ids must reproduce what the HF model computes from pixels and input_ids."""
import numpy as np
import pytest
import torch

from conftest import FAMILIES, make_frames
from vlmedge.errors import InputError
from vlmedge.models.positions import PositionState
from vlmedge.runtime import StreamingSession


@pytest.mark.parametrize("family", FAMILIES)
def test_frame_tokens_shapes_and_taps(tiny_adapters, family):
    a = tiny_adapters[family]
    out = a.encode_frame(make_frames(1)[0], taps=[0, -1])
    h, w = out.grid_hw
    assert out.features.shape == (h * w, a.hidden_size)
    assert out.trailer.shape[1] == a.hidden_size
    assert set(out.taps) == {0, -1}
    assert out.taps[0].shape[0] == out.taps[-1].shape[0] >= h * w
    with pytest.raises(InputError, match="vision tap"):
        a.encode_frame(make_frames(1)[0], taps=[99])


def test_llava_onevision_matches_hf_multi_image_features(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    frames = make_frames(2)
    ours = [a.encode_frame(f) for f in frames]
    pixels = torch.stack([a.pixels(f) for f in frames])  # [2 images, 1 crop, 3, H, W]
    size = torch.tensor([list(a.frame_size)] * 2)
    hf = a.model.model.get_image_features(pixels, size, vision_feature_layer=-1, vision_feature_select_strategy="full",
                                          batch_num_images=torch.tensor([2])).pooler_output
    for o, h in zip(ours, hf):
        torch.testing.assert_close(torch.cat([o.features, o.trailer]), h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_5_omni"])
def test_qwen_block_loop_matches_hf_tower(tiny_adapters, family):
    a = tiny_adapters[family]
    frame = make_frames(1)[0]
    ours = a.encode_frame(frame, taps=[-1])
    patches, thw = a.vision_patches(a.pixels(frame))
    hf = a._visual(patches, grid_thw=torch.tensor([thw])).pooler_output
    torch.testing.assert_close(ours.features, hf, atol=1e-5, rtol=1e-5)
    # the raster-ordered tap, regrouped into merge units in raster order, must merge to the same tokens
    m = a._visual.spatial_merge_size
    gh, gw = thw[1], thw[2]
    tap = ours.taps[-1].reshape(gh // m, m, gw // m, m, -1).permute(0, 2, 1, 3, 4).reshape(-1, m * m, ours.taps[-1].shape[-1])
    torch.testing.assert_close(a._visual.merger(tap.reshape(-1, tap.shape[-1])), ours.features, atol=1e-5, rtol=1e-5)


def test_qwen_patchify_matches_hf_image_processor(tiny_adapters):
    from transformers import Qwen2VLImageProcessorPil

    a = tiny_adapters["qwen2_5_vl"]
    v = a._visual.config
    h, w = a.frame_size
    frame = make_frames(1, h=h, w=w)[0]  # already at the tower's size: no resampling differences
    proc = Qwen2VLImageProcessorPil(patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                                    merge_size=v.spatial_merge_size, min_pixels=h * w, max_pixels=h * w)
    ref = proc(images=[frame], return_tensors="pt")
    ours, thw = a.vision_patches(a.pixels(frame))
    assert list(ref["image_grid_thw"][0]) == list(thw)
    torch.testing.assert_close(ours, ref["pixel_values"].float(), atol=1e-4, rtol=1e-4)


def _session_first_logits(adapter, frames, times, question):
    s = StreamingSession(adapter, "none", keep_logits=True)
    for f, t in zip(frames, times):
        s.push_frame(f, time_s=t)
    return s.ask(question, max_new_tokens=1).logits[0]


def test_llava_onevision_stream_matches_hf_forward(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    frames = make_frames(2, seed=3)
    q = "what color is the square ?"
    ours = _session_first_logits(a, frames, [0.0, 1.0], q)
    n = a.encode_frame(frames[0]).num_tokens + 1  # grid tokens + image_newline
    image_id = a.model.config.image_token_id
    ids = torch.cat([a.tokenize(a.prompt.prefix), torch.full((2 * n,), image_id),
                     a.tokenize(a.prompt.question_template.format(question=q))])[None]
    pixels = torch.stack([a.pixels(f) for f in frames])
    with torch.no_grad():
        hf = a.model(input_ids=ids, pixel_values=pixels, image_sizes=torch.tensor([list(a.frame_size)] * 2),
                     batch_num_images=torch.tensor([2])).logits[0, -1]
    torch.testing.assert_close(ours, hf.float(), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_5_omni"])
def test_qwen_stream_matches_hf_video_forward(tiny_adapters, family):
    """The stream as one video: M-RoPE time ids from timestamps, HF's own get_rope_index as the reference.

    Two frames one second apart keep the largest time id below the grid's size, where transformers 5.23's
    text-after-video rule and the released one agree (see models/positions.py).
    """
    a = tiny_adapters[family]
    if family == "qwen2_5_omni":  # HF's rope index reads <|audio_bos|> as an audio clip: compare video only
        import copy

        from vlmedge.models.qwen2_5_omni import omni_prompt

        a = copy.copy(a)
        a.prompt = omni_prompt(a.tokenizer, audio=False)
    cfg = a.model.config
    fps = 4.0 if family == "qwen2_5_vl" else 8.0  # Omni: 25 ids/s, so frames must be close to stay below the grid
    frames = make_frames(2, seed=4)
    times = [0.0, 1.0 / fps]
    q = "where is the red circle ?"
    ours = _session_first_logits(a, frames, times, q)
    n = a.encode_frame(frames[0]).num_tokens
    video_id = cfg.video_token_id if family == "qwen2_5_vl" else cfg.video_token_index
    prefix, question = a.tokenize(a.prompt.prefix), a.tokenize(a.prompt.question_template.format(question=q))
    ids = torch.cat([prefix, torch.full((2 * n,), video_id), question])[None]
    patches = torch.cat([a.vision_patches(a.pixels(f))[0] for f in frames])
    _, gh, gw = a.vision_patches(a.pixels(frames[0]))[1]
    kwargs = dict(input_ids=ids, pixel_values_videos=patches, video_grid_thw=torch.tensor([[2, gh, gw]]))
    if family == "qwen2_5_vl":
        # the stream duplicates each frame over the temporal patch, i.e. one temporal patch per sampled frame
        kwargs.update(second_per_grid_ts=torch.tensor([1.0 / fps]),
                      mm_token_type_ids=(ids == video_id).int() * 2)
    else:
        # Omni computes M-RoPE ids only when given an attention mask
        kwargs.update(video_second_per_grid=torch.tensor([1.0 / fps]), attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        hf = a.model(**kwargs).logits[0, -1]
    torch.testing.assert_close(ours, hf.float(), atol=2e-4, rtol=1e-4)


def test_mrope_frame_positions_keep_grid_and_time():
    from vlmedge.models.positions import MRope

    scheme, st = MRope(tokens_per_second=2), PositionState(next=5)
    ids = scheme.frame(st, (2, 3), 0, time_s=1.5)
    assert ids.tolist() == [[8] * 6, [5, 5, 5, 6, 6, 6], [5, 6, 7, 5, 6, 7]]
    assert st.next == 9 and st.origin == 5
    ids2 = scheme.frame(st, (2, 3), 0, time_s=3.0)
    assert ids2[0].unique().tolist() == [11] and st.next == 12
    assert scheme.text(st, 2).tolist() == [[12, 13]] * 3


def test_audio_tokens_and_last_layer_qk(tiny_adapters):
    a = tiny_adapters["qwen2_5_omni"]
    wave = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1).astype(np.float32)
    out = a.encode_audio(wave)
    assert out.features.shape == (50, a.hidden_size)  # 2 s at one token per 40 ms
    heads = a.model.config.audio_config.encoder_attention_heads
    assert out.q.shape == out.k.shape and out.q.shape[:2] == (heads, 100)
    assert out.chunks[0][0] == 0 and out.chunks[-1][1] == 100
    # q/k are the real last-layer projections: attention recomputed from them reproduces the layer's output
    attn = a.model.model.audio_tower.layers[-1].self_attn
    assert out.q.shape[-1] == attn.head_dim
    with pytest.raises(InputError, match="1-D float"):
        a.encode_audio(np.zeros((2, 1000), dtype=np.float32))
    with pytest.raises(InputError, match="family"):
        tiny_adapters["qwen2_5_vl"].encode_audio(wave)


@pytest.mark.parametrize("family", FAMILIES)
def test_vit_layer_parts_rebuild_each_block(tiny_adapters, family):
    """The taken-apart block (what STC's cacher recomputes from) equals the block's own forward."""
    a = tiny_adapters[family]
    with torch.no_grad():
        hidden, ctx = a.vision_embed(a.pixels(make_frames(1)[0]))
        for i in range(len(a.vision_blocks())):
            ref = a.vision_block_forward(i, hidden, ctx)
            p = a.vision_layer_parts(i, ctx)
            h = a.vision_tokens(hidden)
            x = p.norm1(h)
            rows = torch.arange(h.shape[0])
            h1 = h + p.attend(rows, p.q(x), p.k(x), p.v(x))
            out = h1 + p.mlp(p.norm2(h1))
            torch.testing.assert_close(a.vision_hidden(out, hidden), ref, atol=1e-5, rtol=1e-5)
            # a subset of query rows gives those rows of the full attention
            sub = torch.tensor([1, 3, h.shape[0] - 1])
            torch.testing.assert_close(p.attend(sub, p.q(x)[sub], p.k(x), p.v(x)),
                                       p.attend(rows, p.q(x), p.k(x), p.v(x))[sub], atol=1e-5, rtol=1e-5)
            hidden = ref
