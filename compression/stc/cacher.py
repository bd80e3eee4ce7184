"""STC-Cacher layer passes (spec §3) over one pre-norm ViT block taken apart (`ViTLayerParts`).

Pure functions on one frame's block input `h [T, C]` (no batch dimension) and, for the selective pass, the
layer's reference (`LayerRef`). Nothing is stored on modules; the caller keeps the returned references in
the stream's state (`STCStreamState`).

- `refresh_layer` is the unmodified block, `h1 = h + attend(q, k, v)(norm1(h))`, `out = h1 + mlp(norm2(h1))`,
  computed once from the parts, and returns the reference it saw: K and V (after projection, before the head
  split), A (attention output after the output projection, before the residual) and M (MLP output before the
  residual).
- `selective_layer` recomputes keys for all T tokens, picks the `n` least similar to the reference keys
  (`selection.py`), and recomputes queries, values, attention and MLP only at those rows: values elsewhere are
  the reference's, attention runs for the selected queries over all (new) keys and the mixed values, the
  other rows take the cached A and M (released; `attention="all"`, our extension, lets every row attend and
  caches only M, see `selective_from_indices`; the method's default "tail" does that in the last blocks only,
  see `block_attention`). Residuals always come from the current frame's `h`.
  References are not changed.

How the selective pass is computed (bit-for-bit the spec's `h1 = h + A_full; out = h1 + M_full`, without
materialising A_full / M_full): `out = (h + A_ref) + M_ref` for every row, then the selected rows are
overwritten with `(h + A_sel) + mlp(norm2(h + A_sel))`. LayerNorm/RMSNorm are per token, so normalising only
the selected rows of `h1` equals selecting rows of `norm2(h1)`.

Qwen2.5 vision tower (Qwen2.5-VL, Qwen2.5-Omni thinker) — what differs from SigLIP and why it still works:
- Window attention: most blocks attend only inside a window, a few (`fullatt_block_indexes`) over the whole
  frame. That lives inside `parts.attend`, which masks keys outside each query row's window; the cacher
  passes the selected rows and all keys/values and never sees windows. A changed token therefore only makes
  the cached attention of its own window stale in windowed blocks.
- Token order: block inputs are in the tower's window order, not raster order. Selection, references and
  scatters are all per position index, and the order is the same for every frame of one resolution, so the
  order does not matter (a resolution change changes T or the layout and forces a refresh).
- Rotary embeddings: `parts.k` returns keys BEFORE the rotary embedding (`attend` applies it to the
  selected queries and to all keys). The selector therefore compares pre-rotary keys. At one position both
  frames' keys would be rotated by the same orthogonal matrix, so the per-position cosine is the same either
  way; comparing pre-rotary keys avoids the rotation's cost and keeps the selector independent of the
  position scheme.
- Fused projections: Qwen2.5-VL has one `qkv` linear and its parts slice q/k/v out of its output, so as the
  adapter stands each of `parts.q/k/v` evaluates the whole fused `qkv` (a selective pass pays a full-width
  qkv GEMM over all T rows for the keys, a refresh pass three). Slicing the weight instead would remove that
  overhead without changing this module.
- Patch merger: the cacher runs on the blocks only; the merger (projector) and then the STC-Pruner run
  after it, on merged LLM-space tokens in raster order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vlmedge.compression.stc.selection import key_similarity, select_from_similarity


ATTENTION_MODES = ("selected", "all")  # what one selective block does
STREAM_ATTENTION = ("selected", "all", "tail")  # the method's setting: one mode for every block, or "tail"


def tail_blocks(tail: float, num_blocks: int) -> int:
    """How many of the last blocks attend with every row under `attention="tail"`: `ceil(tail * blocks)`, at
    least 1 (the last block's attention output is what the unselected rows carry out of the tower)."""
    return max(1, min(num_blocks, math.ceil(tail * num_blocks - 1e-9)))


def block_attention(attention: str, tail: float, index: int, num_blocks: int) -> str:
    """The per-block mode ("selected" | "all") of block `index` for the method's `attention` setting.

    "tail" (our extension, the default): the released selected-rows attention in the first blocks, every row
    attending in the last `tail_blocks(tail, n)`. Why the last ones: the unselected rows leave a block with
    `h + A + M`, and a stale A of the LAST blocks reaches the projector unchanged, while a stale A early on is
    mostly replaced by later blocks that attend. On the reference LLaVA model (4 blocks, full STC at a third
    of the tokens, 200 evaluation seeds) every-row attention in block 3 only scored 0.903 (count 0.985),
    blocks 2-3 0.904, block 0 only 0.885 (count 0.860), every block 0.905, none (released) 0.861.
    """
    if attention not in STREAM_ATTENTION:
        raise ValueError(f"attention must be one of {STREAM_ATTENTION}, got {attention!r}")
    if attention != "tail":
        return attention
    return "all" if index >= num_blocks - tail_blocks(tail, num_blocks) else "selected"


def ref_names(attention: str) -> tuple[str, ...]:
    """What a reference holds per block, as the exported graphs name it: the released cacher reuses the
    attention output (`attn`); with `attention="all"` every row attends again, which needs the queries (`q`)
    instead. Either way four `[T, C]` tensors per block. For the method's "tail" setting the stacked third
    slot is `attn_q`: `attn` in the blocks that run "selected", `q` in the tail."""
    if attention == "tail":
        return ("k", "v", "attn_q", "mlp")
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {STREAM_ATTENTION}, got {attention!r}")
    return ("k", "v", "attn" if attention == "selected" else "q", "mlp")


@dataclass
class LayerRef:
    """One layer's reference from its last refresh pass, each `[T, C]` in the tower's dtype."""

    k: torch.Tensor  # keys after projection (pre-rotary for Qwen towers), before the head split
    v: torch.Tensor  # values after projection
    attn: torch.Tensor | None  # attention output after the output projection, before the residual ("selected")
    mlp: torch.Tensor  # MLP output before the residual
    q: torch.Tensor | None = None  # queries after projection, pre-rotary like k (attention="all")

    @property
    def num_tokens(self) -> int:
        return int(self.k.shape[0])

    def fits(self, new: dict) -> bool:
        """Whether this reference's tensors can take `new` (name -> tensor or None) in place: the same slots
        filled, each of the same shape, dtype and device."""
        for name, t in new.items():
            mine = getattr(self, name)
            if (t is None) != (mine is None):
                return False
            if t is not None and (mine.shape != t.shape or mine.dtype != t.dtype or mine.device != t.device):
                return False
        return True

    @classmethod
    def from_named(cls, names, tensors, block_mode: str | None = None) -> "LayerRef":
        """From `ref_names(...)`-ordered tensors (the exported graphs' inputs/outputs, one block's slice each);
        an `attn_q` slot is `attn` or `q` by the block's mode."""
        named = dict(zip(names, tensors))
        if "attn_q" in named:
            if block_mode not in ATTENTION_MODES:
                raise ValueError(f"an attn_q reference needs the block's mode, one of {ATTENTION_MODES}")
            named["attn" if block_mode == "selected" else "q"] = named.pop("attn_q")
        return cls(**{"attn": None, **named})


def refresh_layer(parts, h: torch.Tensor, x: torch.Tensor | None = None,
                  k: torch.Tensor | None = None, attention: str = "selected",
                  into: LayerRef | None = None) -> tuple[torch.Tensor, LayerRef]:
    """The full block on `h [T, C]`; returns its output and the layer's new reference (holding what a selective
    pass of that `attention` mode reads: `ref_names`).

    `x = norm1(h)` and `k = parts.k(x)` may be passed when the caller already has them (the refresh gate).
    `into`: the layer's previous reference, overwritten in place and returned when it can hold the new one
    (`LayerRef.fits`); the caller must then treat the old reference as gone, even if this raises.
    """
    keep = ref_names(attention)
    if x is None:
        x = parts.norm1(h)
    if k is None:
        k = parts.k(x)
    v = parts.v(x)
    q = parts.q(x)
    rows = torch.arange(h.shape[0], device=h.device)
    a = parts.attend(rows, q, k, v)
    h1 = h + a
    m = parts.mlp(parts.norm2(h1))
    new = dict(k=k, v=v, attn=a if "attn" in keep else None, mlp=m, q=q if "q" in keep else None)
    if into is not None and into.fits(new):
        # Why in place: a fresh reference set per refresh frame (4 [T, C] tensors per block, 363 MB for
        # SigLIP-so400m) is new memory the allocator takes from and gives back to the OS every other frame;
        # measured in a streaming session (so400m, 2 cores) refresh frames took 2.9 s against 2.55 s for the
        # plain tower, up to 3.6 s, and two full sets were alive at the frame's peak.
        for name, t in new.items():
            if t is not None:
                getattr(into, name).copy_(t)
        return h1 + m, into
    # contiguous copies only where q/k/v are slices of a fused projection (keeps [T, 3C] from living on)
    return h1 + m, LayerRef(**{name: t.contiguous() if t is not None else None for name, t in new.items()})


def selective_layer(parts, h: torch.Tensor, ref: LayerRef, ratio: float, x: torch.Tensor | None = None,
                    k: torch.Tensor | None = None, attention: str = "selected") -> tuple[torch.Tensor, torch.Tensor]:
    """The cached block on `h [T, C]` against `ref`; returns its output and the recomputed rows (ascending)."""
    if h.shape[0] != ref.num_tokens:
        raise ValueError(f"frame has {h.shape[0]} tokens but the layer reference has {ref.num_tokens}; refresh first")
    if x is None:
        x = parts.norm1(h)
    if k is None:
        k = parts.k(x)  # new keys for ALL tokens
    idx = select_from_similarity(key_similarity(k, ref.k), ratio)
    return selective_from_indices(parts, h, ref, idx, x=x, k=k, attention=attention), idx


def selective_from_indices(parts, h: torch.Tensor, ref: LayerRef, idx: torch.Tensor, x: torch.Tensor | None = None,
                           k: torch.Tensor | None = None, attention: str = "selected") -> torch.Tensor:
    """The selective pass with the recomputed rows `idx` given (for tests and for fixed-index replays).

    `attention="selected"` is the release: only the selected rows attend, the others take the cached A.
    `attention="all"` (our extension) lets every row attend over the current keys and the mixed values, with
    the reference's queries scattered with the selected rows' new ones (as the values are); only the MLP stays
    cached for the unselected rows. Why: with the release a token whose own
    patch did not change is never selected (its block input, hence its key, equals the reference's at every
    layer) and replays the reference frame's attention output, including what it took in from an object that
    has since moved or left. On the reference LLaVA model (200 evaluation seeds) those ghosts cost the cacher
    alone 0.909 -> 0.883 overall and "how many" 1.00 -> 0.865; with every row attending it gives 0.908 and
    0.995, and full STC at a third of the tokens 0.884 -> 0.906. The extra work per block is the unselected
    rows' attention and output projection (about T C^2 + 2 T^2 C of a block's ~12 T C^2 + 2 T^2 C); measured
    on SigLIP-base shapes (8 frames, one thread) the cacher alone took 0.80x of a full pass against 0.81x
    released. Current queries for every row instead of the reference's scored the same (0.908) and cost a
    query projection of every row more (0.89x). The reference holds q instead of the unused A: same size.
    """
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if x is None:
        x = parts.norm1(h)
    if k is None:
        k = parts.k(x)
    xs = x[idx]
    v_mix = ref.v.clone()
    v_mix[idx] = parts.v(xs).to(v_mix.dtype)  # V_ref with the selected rows' new values scattered in
    if attention == "all":
        if ref.q is None:
            raise ValueError("this reference holds no queries: refresh with attention='all' first")
        q_mix = ref.q.clone()
        q_mix[idx] = parts.q(xs).to(q_mix.dtype)
        rows = torch.arange(h.shape[0], device=h.device)
        h1 = h + parts.attend(rows, q_mix, k, v_mix)  # every query over all keys and the mixed values
        h1_sel = h1[idx]
        out = h1.add_(ref.mlp)  # in place: a fresh [T, C] result costs more than the add itself on CPU
    else:
        if ref.attn is None:
            raise ValueError("this reference holds no attention output: refresh with attention='selected' first")
        a_sel = parts.attend(idx, parts.q(xs), k, v_mix)  # selected queries over all keys and the mixed values
        out = (h + ref.attn).add_(ref.mlp)  # rows that reuse the cache: h1 = h + A_ref, out = h1 + M_ref
        h1_sel = h[idx] + a_sel
    out[idx] = h1_sel + parts.mlp(parts.norm2(h1_sel))
    return out


def mean_key_similarity(parts, h: torch.Tensor, ref: LayerRef) -> tuple[float, torch.Tensor, torch.Tensor]:
    """`mean_t cos(K[t], K_ref[t])` for the refresh gate, with the `x` and `k` it computed (to reuse)."""
    x = parts.norm1(h)
    k = parts.k(x)
    return float(key_similarity(k, ref.k).mean()), x, k
