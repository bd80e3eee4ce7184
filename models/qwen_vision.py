"""The Qwen2.5 vision tower (shared by Qwen2.5-VL and the Qwen2.5-Omni thinker), run block by block.

What differs from a plain ViT, and matters to anything that caches or taps block outputs (STC, GlimpsePrune):
- patches enter merge-window-major (each run of merge² patches becomes one LLM token in the merger);
- between the patch embedding and the merger the sequence is additionally permuted into attention windows
  (`window_index`), and most blocks attend only inside a window (`cu_window_seqlens`), a few
  (`fullatt_block_indexes`) across the whole frame; rotary tables are permuted the same way;
- the merger (RMSNorm + MLP over merge² concatenated patches) is the projector to LLM space.
Block outputs are therefore in window order; `tap_to_raster` undoes both permutations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from vlmedge.errors import InputError
from vlmedge.models.base import FrameTokens, ViTLayerParts, VisionContext
from vlmedge.models.preprocess import qwen_patchify


class QwenVisionMixin:
    """What Qwen2.5-VL and the Omni thinker share: the vision tower and the module layout around the LLM
    (`model.model.visual`, `model.model.language_model`, `model.lm_head`). Expects `self._frame_size`."""

    @property
    def _visual(self):
        return self.model.model.visual

    @property
    def frame_size(self):
        return self._frame_size

    @property
    def text_config(self):
        return self.model.config.text_config

    def language_model(self):
        return self.model.model.language_model

    def lm_head(self):
        return self.model.lm_head

    def _check_frame_size(self, size_hw):
        cfg = self._visual.config
        unit = cfg.patch_size * cfg.spatial_merge_size
        if size_hw[0] % unit or size_hw[1] % unit or min(size_hw) < unit:
            raise InputError(f"frame_size {tuple(size_hw)} must be positive multiples of {unit} "
                             f"(patch_size {cfg.patch_size} x spatial_merge_size {cfg.spatial_merge_size})")
        return tuple(int(s) for s in size_hw)

    def vision_patches(self, pixels):
        cfg = self._visual.config
        return qwen_patchify(pixels, cfg.patch_size, cfg.temporal_patch_size, cfg.spatial_merge_size)

    def vision_embed(self, pixels):
        vis = self._visual
        patches, thw = self.vision_patches(pixels)
        grid_thw = torch.tensor([thw])
        position_ids = get_vision_position_ids(grid_thw, vis.spatial_merge_size)
        cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, vis.config)
        window_index, cu_window = get_vision_window_index(
            grid_thw, spatial_merge_size=vis.spatial_merge_size, window_size=vis.window_size,
            patch_size=vis.patch_size)
        cu_window = torch.unique_consecutive(torch.as_tensor(cu_window, dtype=torch.int32))
        hidden = vis.patch_embed(patches.to(self.dtype))
        n = hidden.shape[0]
        hidden = vis.permute_input_for_window_attn(hidden, window_index, seq_len=n)
        rot = vis.rotary_pos_emb(hidden, position_ids)
        rot = tuple(vis.permute_input_for_window_attn(r, window_index, seq_len=n) for r in rot)
        window_ids = torch.repeat_interleave(torch.arange(len(cu_window) - 1, device=hidden.device),
                                             (cu_window[1:] - cu_window[:-1]).long().to(hidden.device), output_size=n)
        ctx = VisionContext(grid_hw=(thw[1], thw[2]), extras=dict(
            cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, cu_window=cu_window,
            max_window=int((cu_window[1:] - cu_window[:-1]).max()), window_index=window_index,
            rotary=rot, window_ids=window_ids, frame_ids=torch.zeros(n, dtype=torch.long, device=hidden.device)))
        return hidden, ctx

    def vision_blocks(self):
        return self._visual.blocks

    def vision_block_forward(self, index, hidden, ctx):
        x = ctx.extras
        full = index in self._visual.fullatt_block_indexes
        return self._visual.blocks[index](
            hidden, cu_seqlens=x["cu_seqlens"] if full else x["cu_window"],
            max_seqlen=x["max_seqlen"] if full else x["max_window"], position_embeddings=x["rotary"])

    def vision_layer_parts(self, index, ctx):
        blk = self._visual.blocks[index]
        attn = blk.attn
        heads, hd, dim = attn.num_heads, attn.head_dim, attn.dim
        full = index in self._visual.fullatt_block_indexes
        window = ctx.extras["frame_ids" if full else "window_ids"]
        cos, sin = ctx.extras["rotary"]
        if hasattr(attn, "qkv"):
            # Qwen2.5-VL fuses q/k/v in one Linear: project with slices of its weight, so that keys for all
            # tokens and queries/values for a few rows each cost only their own third
            w, b = attn.qkv.weight, attn.qkv.bias
            q_fn, k_fn, v_fn = (lambda h, i=i: F.linear(h, w[i * dim:(i + 1) * dim], b[i * dim:(i + 1) * dim])
                                for i in range(3))
        else:  # the Omni tower keeps q, k, v apart
            q_fn, k_fn, v_fn = attn.q, attn.k, attn.v

        def attend(rows, q, k, v):
            q = q.reshape(-1, heads, hd)
            k = k.reshape(-1, heads, hd)
            q, _ = apply_rotary_pos_emb_vision(q, q, cos[rows], sin[rows])
            k, _ = apply_rotary_pos_emb_vision(k, k, cos, sin)
            mask = window[rows][:, None] == window[None, :]  # attention never crosses a window
            out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                                 v.reshape(-1, heads, hd).transpose(0, 1), attn_mask=mask,
                                                 scale=attn.scaling)
            return attn.proj(out.transpose(0, 1).reshape(len(rows), dim))

        return ViTLayerParts(norm1=blk.norm1, q=q_fn, k=k_fn, v=v_fn, attend=attend, norm2=blk.norm2, mlp=blk.mlp)

    def vision_project(self, hidden, ctx):
        merged = self._visual.merger(hidden)[torch.argsort(ctx.extras["window_index"])]
        m = self._visual.spatial_merge_size
        grid = (ctx.grid_hw[0] // m, ctx.grid_hw[1] // m)
        return FrameTokens(features=merged, grid_hw=grid, trailer=merged.new_zeros(0, merged.shape[-1]))

    def encode_frames(self, frames):
        # the HF tower packs frames as one grid_thw row each (attention never crosses rows): one call for all
        pieces = [self.vision_patches(self.pixels(f)) for f in frames]
        thw = pieces[0][1]
        merged = self._visual(torch.cat([p for p, _ in pieces]).to(self.dtype),
                              grid_thw=torch.tensor([list(thw)] * len(frames))).pooler_output
        m = self._visual.spatial_merge_size
        grid = (thw[1] // m, thw[2] // m)
        n = grid[0] * grid[1]
        empty = merged.new_zeros(0, merged.shape[-1])
        return [FrameTokens(features=merged[i * n:(i + 1) * n], grid_hw=grid, trailer=empty) for i in range(len(frames))]

    def tap_to_raster(self, hidden, ctx):
        m = self._visual.spatial_merge_size
        gh, gw = ctx.grid_hw
        unit = hidden.reshape(-1, m * m, hidden.shape[-1])[torch.argsort(ctx.extras["window_index"])]
        # merge-unit-major [gh/m, gw/m, m, m] → raster [gh, gw]
        x = unit.reshape(gh // m, gw // m, m, m, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(gh * gw, -1)
