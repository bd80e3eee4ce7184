"""LLaVA-OneVision (SigLIP vision tower + 2-layer MLP projector + Qwen2), the family STC was evaluated on.

Streaming layout: every frame is one base-resolution image in multi-image form (no anyres tiles), i.e. the
SigLIP grid of projected patches followed by the learned `image_newline`, with 1-D positions running on.
That is what `LlavaOnevisionModel.get_image_features(..., batch_num_images != 1)` produces per image, so
the HF pixel path and this adapter give the same tokens (tests hold them together).
"""
from __future__ import annotations

import torch
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                          SiglipVisionConfig)

from vlmedge.errors import InputError
from vlmedge.models import preprocess
import torch.nn.functional as F

from vlmedge.models.base import Adapter, FrameTokens, PromptFormat, ViTLayerParts, VisionContext
from vlmedge.models.positions import Rope1D
from vlmedge.models.tokenizer import build_word_tokenizer

QWEN_CHAT = PromptFormat(
    prefix="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    frame_open="",
    frame_close="",
    question_template="\n{question}<|im_end|>\n<|im_start|>assistant\n",
    stop=("<|im_end|>", "<|endoftext|>"),
)


class LlavaOneVisionAdapter(Adapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)

    def __init__(self, model: LlavaOnevisionForConditionalGeneration, tokenizer, prompt: PromptFormat = QWEN_CHAT,
                 pixel_norm: preprocess.PixelNorm = preprocess.SIGLIP_NORM):
        super().__init__(model, tokenizer, prompt, Rope1D(), pixel_norm)
        cfg = model.config
        if cfg.vision_feature_select_strategy != "full":
            # "default" drops the first token (a CLS that SigLIP does not have) and so a real patch: refuse
            # rather than silently shift the grid.
            raise InputError(
                f"vision_feature_select_strategy={cfg.vision_feature_select_strategy!r} is not supported for "
                "streaming frames; SigLIP towers need 'full'")
        layer = cfg.vision_feature_layer
        if not isinstance(layer, int):
            raise InputError(f"vision_feature_layer must be one layer index, got {layer!r}")
        n_layers = cfg.vision_config.num_hidden_layers
        # hidden_states[i] is the output of block i-1 (index 0 = embeddings); blocks past it never run.
        self._n_blocks = layer + n_layers + 1 if layer < 0 else layer
        if not 1 <= self._n_blocks <= n_layers:
            raise InputError(f"vision_feature_layer={layer} is outside the tower's {n_layers} layers")

    # ----- construction -----
    @classmethod
    def tiny(cls, seed: int = 0, image_size: int = 32, patch_size: int = 8, words=None) -> "LlavaOneVisionAdapter":
        torch.manual_seed(seed)
        tok = build_word_tokenizer(words) if words is not None else build_word_tokenizer()
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=image_size, patch_size=patch_size, vision_use_head=False)
        text = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                           tie_word_embeddings=True, bos_token_id=None,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        cfg = LlavaOnevisionConfig(
            vision_config=vision, text_config=text, vision_feature_select_strategy="full", vision_feature_layer=-1,
            image_grid_pinpoints=[[image_size, image_size]], tie_word_embeddings=True,
            image_token_id=tok.convert_tokens_to_ids("<image>"), video_token_id=tok.convert_tokens_to_ids("<video>"),
        )
        model = LlavaOnevisionForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
        return cls(model, tok)

    @classmethod
    def from_model(cls, model, tokenizer, model_dir: str | None = None) -> "LlavaOneVisionAdapter":
        return cls(model, tokenizer, pixel_norm=preprocess.norm_from_dir(model_dir, preprocess.SIGLIP_NORM))

    # ----- vision -----
    @property
    def _tower(self):
        return self.model.model.vision_tower

    @property
    def frame_size(self):
        s = self.model.config.vision_config.image_size
        return (s, s)

    @property
    def text_config(self):
        return self.model.config.text_config

    def vision_embed(self, pixels):
        hidden = self._tower.embeddings(pixels.to(self.dtype))
        g = self.frame_size[0] // self.model.config.vision_config.patch_size
        return hidden, VisionContext(grid_hw=(g, g))

    def vision_blocks(self):
        return self._tower.encoder.layers[: self._n_blocks]

    def vision_block_forward(self, index, hidden, ctx):
        return self._tower.encoder.layers[index](hidden, attention_mask=None)

    def vision_layer_parts(self, index, ctx):
        layer = self._tower.encoder.layers[index]
        attn = layer.self_attn
        heads, hd = attn.num_heads, attn.head_dim

        def attend(rows, q, k, v):
            # SigLIP attention is global and has no positional term inside the block
            # 4-D [1, heads, T, hd]: on CPU only that layout reaches the fused (flash) SDPA kernel; 3-D falls
            # back to the unfused math path (bmm + softmax + masking), about 8% slower per block at SigLIP-base
            split = lambda x: x.reshape(1, x.shape[0], heads, hd).transpose(1, 2)  # noqa: E731
            out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=attn.scale)
            return attn.out_proj(out[0].transpose(0, 1).reshape(q.shape[0], heads * hd))

        return ViTLayerParts(norm1=layer.layer_norm1, q=attn.q_proj, k=attn.k_proj, v=attn.v_proj, attend=attend,
                             norm2=layer.layer_norm2, mlp=layer.mlp)

    def vision_project(self, hidden, ctx):
        feats = self.model.model.multi_modal_projector(hidden)[0]
        trailer = self.model.model.image_newline[None, :].to(feats.dtype)
        return FrameTokens(features=feats, grid_hw=ctx.grid_hw, trailer=trailer)

    def tap_to_raster(self, hidden, ctx):
        return hidden[0]

    def encode_frames(self, frames):
        # SigLIP has no cross-frame state: the whole batch goes through each block at once
        hidden, ctx = self.vision_embed(torch.cat([self.pixels(f) for f in frames]))
        for i in range(len(self.vision_blocks())):
            hidden = self.vision_block_forward(i, hidden, ctx)
        feats = self.model.model.multi_modal_projector(hidden)
        trailer = self.model.model.image_newline[None, :].to(feats.dtype)
        return [FrameTokens(features=f, grid_hw=ctx.grid_hw, trailer=trailer) for f in feats]

    # ----- LLM -----
    def language_model(self):
        return self.model.model.language_model

    def lm_head(self):
        return self.model.lm_head
