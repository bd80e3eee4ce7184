"""Qwen2.5-VL (window-attention ViT + patch merger + Qwen2.5 LLM with M-RoPE), GlimpsePrune's family.

Streaming layout: the stream is one video (Qwen's video convention): `<|vision_start|>` after the prefix,
then each frame's merged tokens back to back with M-RoPE time ids from the frame's timestamp, and a question
closes it with `<|vision_end|>`. Each sampled frame is encoded alone as a still (repeated over the temporal
patch), so earlier frames never need re-encoding.
"""
from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from vlmedge.models import preprocess
from vlmedge.models.base import Adapter, PromptFormat
from vlmedge.models.positions import MRope
from vlmedge.models.qwen_vision import QwenVisionMixin
from vlmedge.models.tokenizer import build_word_tokenizer

QWEN_VIDEO_CHAT = PromptFormat(
    prefix="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>",
    frame_open="",
    frame_close="",
    question_template="<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n",
    stop=("<|im_end|>", "<|endoftext|>"),
)

DEFAULT_FRAME_SIZE = (336, 448)  # 4:3 camera frames → 12x16 = 192 LLM tokens at patch 14, merge 2


def tiny_qwen_vision(**extra) -> dict:
    """A small config of the real Qwen2.5 vision tower: 2 blocks, one windowed and one full-attention."""
    return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
                temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1], out_hidden_size=64, **extra)


def tiny_qwen_text(tokenizer) -> dict:
    # head_dim 16 → 8 rotary frequencies split over (t, h, w)
    return dict(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})


class Qwen25VLAdapter(QwenVisionMixin, Adapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)

    def __init__(self, model, tokenizer, frame_size=DEFAULT_FRAME_SIZE, prompt: PromptFormat = QWEN_VIDEO_CHAT,
                 pixel_norm: preprocess.PixelNorm = preprocess.CLIP_NORM):
        tps = model.config.vision_config.tokens_per_second
        super().__init__(model, tokenizer, prompt, MRope(tokens_per_second=tps), pixel_norm)
        self._frame_size = self._check_frame_size(frame_size)

    @classmethod
    def tiny(cls, seed: int = 0, frame_size=(32, 48), words=None) -> "Qwen25VLAdapter":
        torch.manual_seed(seed)
        tok = build_word_tokenizer(words) if words is not None else build_word_tokenizer()
        ids = tok.convert_tokens_to_ids
        cfg = Qwen2_5_VLConfig(
            vision_config=tiny_qwen_vision(tokens_per_second=2), text_config=tiny_qwen_text(tok),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=True)
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
        return cls(model, tok, frame_size=frame_size)

    @classmethod
    def from_model(cls, model, tokenizer, model_dir=None, frame_size=None):
        frame_size = frame_size or preprocess.frame_size_from_dir(model_dir, DEFAULT_FRAME_SIZE)
        return cls(model, tokenizer, frame_size=frame_size, pixel_norm=preprocess.norm_from_dir(model_dir, preprocess.CLIP_NORM))
