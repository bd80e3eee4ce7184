"""Realistically shaped models with random weights, for timing only (answers from them are noise).

Timing depends on shapes, not on weights, so the published architectures are rebuilt from their configs:
LLaVA-OneVision's SigLIP tower at base width (224 px, 16-px patches: 196 tokens per frame, the grid the STC
paper's "64 of 196" refers to) in front of a Qwen2-0.5B-shaped decoder (LLaVA-OneVision-0.5B's LLM), with the
real vocabulary size so the LM head costs what it costs at decode time. `--quick` keeps every width and cuts
the decoder's depth: per-layer costs and the ratios between methods stay the same, the run gets shorter.

For audio-video (OmniZip) timing, Qwen2.5-Omni-3B's thinker: its Qwen2.5 vision tower (14-px patches merged
2x2, window attention), its Whisper-style audio tower (25 LLM tokens per second) and its Qwen2.5-3B decoder.
At camworld's 2 fps and 224 px a second holds 128 video and 25 audio tokens, the audio share (1/6) the OmniZip
paper's "45% / 35% retained" settings imply. The full depth (32 + 32 + 36 layers, ~4.3 B parameters, 17 GB in
fp32) is for GPU machines; the `-short` shape keeps every width and a quarter of the layers for CPU runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from vlmedge.errors import UnknownNameError


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    image_size: int
    patch_size: int
    vit_hidden: int
    vit_mlp: int
    vit_layers: int
    vit_heads: int
    llm_hidden: int
    llm_mlp: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    vocab: int
    family: str = "llava_onevision"
    merge: int = 1  # spatial merge (Qwen: 2x2 patches -> one token)
    audio_layers: int = 0
    audio_hidden: int = 0
    audio_heads: int = 0
    audio_ffn: int = 0

    @property
    def tokens_per_frame(self) -> int:
        return (self.image_size // self.patch_size // self.merge) ** 2


SHAPES = {
    s.name: s for s in (
        Shape("siglip-base+qwen2-0.5b", "SigLIP-base/16 at 224 px (196 tokens) + Qwen2-0.5B (24 layers)",
              224, 16, 768, 3072, 12, 12, 896, 4864, 24, 14, 2, 151936),
        Shape("siglip-base+qwen2-0.5b-6l", "as siglip-base+qwen2-0.5b with 6 of the 24 decoder layers (--quick)",
              224, 16, 768, 3072, 12, 12, 896, 4864, 6, 14, 2, 151936),
        Shape("siglip-so400m+qwen2-0.5b", "SigLIP-so400m/14 at 384 px (729 tokens, LLaVA-OneVision's tower) + "
              "Qwen2-0.5B", 384, 14, 1152, 4304, 27, 16, 896, 4864, 24, 14, 2, 151936),
        Shape("qwen2.5-omni-3b", "Qwen2.5-Omni-3B thinker: vision 32 layers at 224 px (64 tokens), audio 32 "
              "layers, Qwen2.5-3B decoder (36 layers)", 224, 14, 1280, 3420, 32, 16, 2048, 11008, 36, 16, 2, 151936,
              family="qwen2_5_omni", merge=2, audio_layers=32, audio_hidden=1280, audio_heads=20, audio_ffn=5120),
        Shape("qwen2.5-omni-3b-short", "Qwen2.5-Omni-3B widths with 8 of 32 vision and audio layers and 9 of 36 "
              "decoder layers (224 px, 64 tokens)", 224, 14, 1280, 3420, 8, 16, 2048, 11008, 9, 16, 2, 151936,
              family="qwen2_5_omni", merge=2, audio_layers=8, audio_hidden=1280, audio_heads=20, audio_ffn=5120),
        # not realistic: lets the tests run the timing path in seconds
        Shape("tiny", "tiny shapes for tests (64 px, 16 tokens, 2+2 layers)", 64, 16, 64, 128, 2, 2, 64, 128, 2, 4, 2,
              1000),
        Shape("tiny-omni", "tiny Qwen2.5-Omni thinker for tests (64 px, 4 tokens, 2+2+2 layers)", 64, 16, 64, 128, 2,
              2, 64, 128, 2, 4, 2, 1000, family="qwen2_5_omni", merge=2, audio_layers=2, audio_hidden=32,
              audio_heads=2, audio_ffn=64),
    )
}

# what `vlmedge bench` times when no --shape is given: (quick, full) per family
DEFAULT_SHAPES = {"llava_onevision": ("siglip-base+qwen2-0.5b-6l", "siglip-base+qwen2-0.5b"),
                  "qwen2_5_omni": ("qwen2.5-omni-3b-short", "qwen2.5-omni-3b-short")}


def default_shape(family: str, quick: bool) -> str:
    """The preset timing shape for an accuracy model of `family` (families without a preset time on LLaVA's)."""
    quick_name, full_name = DEFAULT_SHAPES.get(family, DEFAULT_SHAPES["llava_onevision"])
    return quick_name if quick else full_name


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise UnknownNameError(f"unknown timing shape {name!r}; available: {', '.join(SHAPES)}")
    return SHAPES[name]


def build(shape: Shape, seed: int = 0):
    """An adapter of `shape`'s family with random weights and the camworld word tokenizer."""
    import torch

    from vlmedge.models.camworld import vocabulary
    from vlmedge.models.tokenizer import BASE_WORDS, build_word_tokenizer

    torch.manual_seed(seed)
    tok = build_word_tokenizer(list(BASE_WORDS) + list(vocabulary()))
    if shape.family == "qwen2_5_omni":
        return _build_omni(shape, tok)
    if shape.family != "llava_onevision":
        raise UnknownNameError(f"timing shape {shape.name!r} has family {shape.family!r}, which has no builder")
    return _build_llava(shape, tok)


def _build_llava(shape: Shape, tok):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    from vlmedge.models.llava_onevision import LlavaOneVisionAdapter
    vision = SiglipVisionConfig(hidden_size=shape.vit_hidden, intermediate_size=shape.vit_mlp,
                                num_hidden_layers=shape.vit_layers, num_attention_heads=shape.vit_heads,
                                image_size=shape.image_size, patch_size=shape.patch_size, vision_use_head=False)
    text = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.llm_hidden, intermediate_size=shape.llm_mlp,
                       num_hidden_layers=shape.llm_layers, num_attention_heads=shape.llm_heads,
                       num_key_value_heads=shape.llm_kv_heads, max_position_embeddings=32768,
                       tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    cfg = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=[[shape.image_size, shape.image_size]], tie_word_embeddings=True,
        image_token_id=tok.convert_tokens_to_ids("<image>"), video_token_id=tok.convert_tokens_to_ids("<video>"),
    )
    model = LlavaOnevisionForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").eval()
    # ids past the word tokenizer (a random model argmaxes over all 152k) decode to nothing, which is fine for
    # timing: the LM head still computes every logit, as a real model's does
    return LlavaOneVisionAdapter(model, tok)


def _build_omni(shape: Shape, tok):
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from vlmedge.models.qwen2_5_omni import Qwen25OmniAdapter, special_token_ids

    # Omni-3B's window attention (112-px windows) with full attention in every 8th block (7, 15, 23, 31); a
    # shortened tower keeps that rhythm, and at least its last block attends fully
    full_attention = list(range(7, shape.vit_layers, 8)) or [shape.vit_layers - 1]
    vision = dict(depth=shape.vit_layers, hidden_size=shape.vit_hidden, intermediate_size=shape.vit_mlp,
                  num_heads=shape.vit_heads, patch_size=shape.patch_size, spatial_merge_size=shape.merge,
                  temporal_patch_size=2, window_size=112, out_hidden_size=shape.llm_hidden,
                  fullatt_block_indexes=full_attention)
    audio = dict(num_mel_bins=128, encoder_layers=shape.audio_layers, encoder_attention_heads=shape.audio_heads,
                 encoder_ffn_dim=shape.audio_ffn, d_model=shape.audio_hidden, output_dim=shape.llm_hidden,
                 n_window=100, max_source_positions=1500)
    head_dim = shape.llm_hidden // shape.llm_heads
    section = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]  # Omni-3B: [16, 24, 24] of 128
    text = dict(vocab_size=shape.vocab, hidden_size=shape.llm_hidden, intermediate_size=shape.llm_mlp,
                num_hidden_layers=shape.llm_layers, num_attention_heads=shape.llm_heads,
                num_key_value_heads=shape.llm_kv_heads, max_position_embeddings=32768, tie_word_embeddings=True,
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section})
    cfg = Qwen2_5OmniThinkerConfig(
        audio_config=audio, vision_config=vision, text_config=text, tie_word_embeddings=True,
        **special_token_ids(tok))
    model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").eval()
    return Qwen25OmniAdapter(model, tok, frame_size=(shape.image_size, shape.image_size))
