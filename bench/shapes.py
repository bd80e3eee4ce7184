"""Realistically shaped models with random weights, for timing only (answers from them are noise).

Timing depends on shapes, not on weights, so the published architectures are rebuilt from their configs:
LLaVA-OneVision's SigLIP tower at base width (224 px, 16-px patches: 196 tokens per frame, the grid the STC
paper's "64 of 196" refers to) in front of a Qwen2-0.5B-shaped decoder (LLaVA-OneVision-0.5B's LLM), with the
real vocabulary size so the LM head costs what it costs at decode time. `--quick` keeps every width and cuts
the decoder's depth: per-layer costs and the ratios between methods stay the same, the run gets shorter.
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

    @property
    def tokens_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SHAPES = {
    s.name: s for s in (
        Shape("siglip-base+qwen2-0.5b", "SigLIP-base/16 at 224 px (196 tokens) + Qwen2-0.5B (24 layers)",
              224, 16, 768, 3072, 12, 12, 896, 4864, 24, 14, 2, 151936),
        Shape("siglip-base+qwen2-0.5b-6l", "as siglip-base+qwen2-0.5b with 6 of the 24 decoder layers (--quick)",
              224, 16, 768, 3072, 12, 12, 896, 4864, 6, 14, 2, 151936),
        Shape("siglip-so400m+qwen2-0.5b", "SigLIP-so400m/14 at 384 px (729 tokens, LLaVA-OneVision's tower) + "
              "Qwen2-0.5B", 384, 14, 1152, 4304, 27, 16, 896, 4864, 24, 14, 2, 151936),
        # not realistic: lets the tests run the timing path in seconds
        Shape("tiny", "tiny shapes for tests (64 px, 16 tokens, 2+2 layers)", 64, 16, 64, 128, 2, 2, 64, 128, 2, 4, 2,
              1000),
    )
}


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise UnknownNameError(f"unknown timing shape {name!r}; available: {', '.join(SHAPES)}")
    return SHAPES[name]


def build(shape: Shape, seed: int = 0):
    """A LLaVA-OneVision adapter of `shape` with random weights and the camworld word tokenizer."""
    import torch
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    from vlmedge.models.camworld import vocabulary
    from vlmedge.models.llava_onevision import LlavaOneVisionAdapter
    from vlmedge.models.tokenizer import BASE_WORDS, build_word_tokenizer

    torch.manual_seed(seed)
    tok = build_word_tokenizer(list(BASE_WORDS) + list(vocabulary()))
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
