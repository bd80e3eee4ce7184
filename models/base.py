"""The one stage interface every supported Hugging Face architecture is adapted to.

A session (and later the exporter and the other backends) talks only to this interface: encode a frame
through the vision tower block by block, project to LLM space, embed text, assign position ids, and run the
LLM over explicit embeddings with an explicit KV cache. Families differ in the details, which live in one
file each (`llava_onevision.py`, `qwen2_5_vl.py`, `qwen2_5_omni.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from transformers import DynamicCache

from vlmedge.models import preprocess
from vlmedge.models.positions import PositionScheme


@dataclass
class PromptFormat:
    """How a stream is laid out as text around the visual tokens (the model's chat template, streaming form).

    The stream is `prefix`, then for every frame `frame_open` + frame tokens + `frame_close`; a question adds
    `question_template.format(question=...)` after the latest frame and decoding stops at any of `stop`.
    """

    prefix: str
    frame_open: str
    frame_close: str
    question_template: str
    stop: tuple[str, ...]


@dataclass
class VisionContext:
    """What the vision blocks of one frame need besides the hidden states (rotary tables, window layout)."""

    grid_hw: tuple[int, int]  # patch grid the blocks see
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ViTLayerParts:
    """One pre-norm ViT block taken apart, on one frame's tokens `[T, C]` (no batch dimension).

    block(h) == h1 + mlp(norm2(h1)) with h1 = h + attend(all, q(norm1(h)), k(norm1(h)), v(norm1(h))).
    `attend(rows, q_rows, k, v)` runs attention for the query rows `rows` (indices into T, with their
    projected queries `q_rows [n, C]`) over all keys/values `[T, C]` and returns the output projection
    `[n, C]`; family details (rotary embeddings, attention windows) stay inside it. The STC cacher needs
    exactly these pieces to recompute only some tokens.
    """

    norm1: Any
    q: Any
    k: Any
    v: Any
    attend: Any
    norm2: Any
    mlp: Any


@dataclass
class FrameTokens:
    """One frame after the vision tower and projector, before compression.

    `features` are the compressible visual tokens `[N, D]` in raster order over `grid_hw` (the grid the LLM
    sees, after any patch merging). `trailer` holds tokens the family appends to every frame that are not
    visual content (LLaVA-OneVision's learned `image_newline`); compressors never drop them.
    `taps` are the requested intermediate vision-block outputs in the same raster order as the blocks' grid.
    """

    features: torch.Tensor
    grid_hw: tuple[int, int]
    trailer: torch.Tensor
    taps: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.features.shape[0])


@dataclass
class AudioTokens:
    """An audio clip after the audio tower: LLM-space tokens and the last encoder layer's q/k.

    `q`/`k` are `[heads, T_enc, head_dim]` for the encoder frames (before the tower's stride-2 pooling, so two
    encoder frames map to one LLM token); `chunks` are the encoder's attention windows as `(start, end)`
    frame ranges, since attention (and hence saliency) never crosses a window.
    """

    features: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    chunks: list[tuple[int, int]]
    seconds_per_token: float


class Adapter:
    """Base class: one model family over the stage interface. Torch eager is the reference backend."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.model_type values this adapter loads
    has_audio: ClassVar[bool] = False
    model_dir: str | None = None  # the checkpoint folder when loaded with from_pretrained

    def __init__(self, model: nn.Module, tokenizer, prompt: PromptFormat, positions: PositionScheme,
                 pixel_norm: preprocess.PixelNorm):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.positions = positions
        self.pixel_norm = pixel_norm

    # ----- construction -----
    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "Adapter":
        """Loads a local Hugging Face checkpoint; the family comes from its config.json (never from a hub)."""
        from vlmedge.models.loading import from_pretrained

        adapter = from_pretrained(path, **kwargs)
        if cls is not Adapter and not isinstance(adapter, cls):
            from vlmedge.errors import ModelFileError
            raise ModelFileError(f"{path} holds a {adapter.family} model, not {cls.family}")
        return adapter

    @classmethod
    def tiny(cls, family: str, seed: int = 0, **kwargs) -> "Adapter":
        """A small randomly initialised model of `family`'s real architecture (families override this
        with `tiny(seed, ...)`)."""
        from vlmedge.models.loading import adapter_class

        return adapter_class(family).tiny(seed=seed, **kwargs)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, model_dir: str | None = None) -> "Adapter":
        raise NotImplementedError  # pragma: no cover - per family

    # ----- vision -----
    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) the vision tower is fed; frames of another size are resized to it."""
        raise NotImplementedError  # pragma: no cover

    def pixels(self, frame) -> torch.Tensor:
        """Validated, resized, normalised `[1, 3, H, W]` float tensor for one HxWx3 uint8 RGB frame."""
        return preprocess.to_pixels(frame, self.frame_size, self.pixel_norm, dtype=self.dtype)

    def vision_embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, VisionContext]:
        """Patch (and position) embedding: returns the first block's input and the context the blocks need."""
        raise NotImplementedError  # pragma: no cover

    def vision_blocks(self) -> Sequence[nn.Module]:
        """The vision transformer blocks that run for the LLM's feature layer, in order.

        The STC cacher reaches each block's norms, q/k/v projections and MLP through these modules.
        """
        raise NotImplementedError  # pragma: no cover

    def vision_block_forward(self, index: int, hidden: torch.Tensor, ctx: VisionContext) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def vision_layer_parts(self, index: int, ctx: VisionContext) -> ViTLayerParts:
        raise NotImplementedError  # pragma: no cover

    def vision_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """A block input/output as `[T, C]` (drops the batch dimension some towers carry)."""
        return hidden.reshape(-1, hidden.shape[-1])

    def vision_hidden(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Inverse of `vision_tokens`: `[T, C]` back to the tower's block layout."""
        return tokens.reshape(like.shape)

    def vision_project(self, hidden: torch.Tensor, ctx: VisionContext) -> FrameTokens:
        """From the last block's output to LLM-space tokens (merger/projector), in raster order."""
        raise NotImplementedError  # pragma: no cover

    def tap_to_raster(self, hidden: torch.Tensor, ctx: VisionContext) -> torch.Tensor:
        """A block's output `[N, Dv]` reordered to raster order over the block grid (identity for most)."""
        return hidden.reshape(-1, hidden.shape[-1])

    @torch.no_grad()
    def encode_frame(self, frame, taps: Sequence[int] = ()) -> FrameTokens:
        """Frame → compressible LLM-space tokens, with the requested vision-block outputs."""
        hidden, ctx = self.vision_embed(self.pixels(frame))
        wanted = {self.block_index(t) for t in taps}
        got: dict[int, torch.Tensor] = {}
        for i in range(len(self.vision_blocks())):
            hidden = self.vision_block_forward(i, hidden, ctx)
            if i in wanted:
                got[i] = self.tap_to_raster(hidden, ctx)
        out = self.vision_project(hidden, ctx)
        out.taps = {t: got[self.block_index(t)] for t in taps}
        return out

    def encode_frames(self, frames) -> list[FrameTokens]:
        """Many frames at once, with autograd on (training); same tokens as `encode_frame` per frame."""
        return [self._encode_with_grad(f) for f in frames]

    def _encode_with_grad(self, frame) -> FrameTokens:
        hidden, ctx = self.vision_embed(self.pixels(frame))
        for i in range(len(self.vision_blocks())):
            hidden = self.vision_block_forward(i, hidden, ctx)
        return self.vision_project(hidden, ctx)

    def block_index(self, tap: int) -> int:
        """A tap (negative counts from the end) as a block index; out of range is an `InputError`."""
        n = len(self.vision_blocks())
        idx = tap + n if tap < 0 else tap
        if not 0 <= idx < n:
            from vlmedge.errors import InputError
            raise InputError(f"vision tap {tap} is out of range: the tower runs {n} blocks (use 0..{n - 1} or -1..-{n})")
        return idx

    # ----- audio (omni families) -----
    def encode_audio(self, wave) -> AudioTokens:
        from vlmedge.errors import InputError
        raise InputError(f"model family {self.family!r} has no audio tower; use an omni model (qwen2_5_omni)")

    # ----- text and LLM -----
    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def text_config(self):
        raise NotImplementedError  # pragma: no cover

    def language_model(self) -> nn.Module:
        raise NotImplementedError  # pragma: no cover

    def lm_head(self) -> nn.Module:
        raise NotImplementedError  # pragma: no cover

    def tokenize(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_text_grad(ids)

    def embed_text_grad(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model().get_input_embeddings()(ids.reshape(-1))

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.text_config)

    def forward_packed(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Training forward over padded packed streams: embeds [B, L, D], positions [rows, B, L],
        mask [B, 1, L, L] bool (True = attend) → logits [B, L, V]. No cache: the mask is explicit."""
        pos = positions[0] if positions.shape[0] == 1 else positions
        out = self.language_model()(inputs_embeds=embeds.to(self.dtype), position_ids=pos, attention_mask=mask,
                                    use_cache=False)
        return self.lm_head()(out.last_hidden_state)

    @torch.no_grad()
    def forward_llm(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache,
                    last_only: bool = True) -> torch.Tensor:
        """Runs `embeds [L, D]` at `position_ids [P, L]` after whatever `cache` holds; returns logits.

        A cache is always passed: with no cache and no attention mask, transformers reads non-contiguous
        position ids (our gapped ids after pruning) as packed sequences and masks across the gaps. The causal
        mask comes from the cache length, so gaps in position ids only change RoPE, as intended.
        """
        out = self.language_model()(
            inputs_embeds=embeds.unsqueeze(0).to(self.dtype),
            position_ids=self.positions.model_position_ids(position_ids),
            past_key_values=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[0]
        if last_only:
            hidden = hidden[-1:]
        return self.lm_head()(hidden).float()


def kv_shape(text_config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder config: what one token's KV-cache entry is made of."""
    heads = int(text_config.num_attention_heads)
    kv = int(getattr(text_config, "num_key_value_heads", None) or heads)
    hd = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // heads)
    return int(text_config.num_hidden_layers), kv, hd
