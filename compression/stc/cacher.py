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
  caches only M, see `selective_from_indices`). Residuals always come from the current frame's `h`.
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

from dataclasses import dataclass

import torch

from vlmedge.compression.stc.selection import key_similarity, select_from_similarity


ATTENTION_MODES = ("selected", "all")


def ref_names(attention: str) -> tuple[str, ...]:
    """What a reference holds per block, as the exported graphs name it: the released cacher reuses the
    attention output (`attn`); with `attention="all"` every row attends again, which needs the queries (`q`)
    instead. Either way four `[T, C]` tensors per block."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
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

    @classmethod
    def from_named(cls, names, tensors) -> "LayerRef":
        """From `ref_names(...)`-ordered tensors (the exported graphs' inputs/outputs, one block's slice each)."""
        return cls(**{"attn": None, **dict(zip(names, tensors))})


def refresh_layer(parts, h: torch.Tensor, x: torch.Tensor | None = None,
                  k: torch.Tensor | None = None, attention: str = "selected") -> tuple[torch.Tensor, LayerRef]:
    """The full block on `h [T, C]`; returns its output and the layer's new reference (holding what a selective
    pass of that `attention` mode reads: `ref_names`).

    `x = norm1(h)` and `k = parts.k(x)` may be passed when the caller already has them (the refresh gate).
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
    # contiguous copies only where q/k/v are slices of a fused projection (keeps [T, 3C] from living on)
    return h1 + m, LayerRef(k=k.contiguous(), v=v.contiguous(), attn=a if "attn" in keep else None, mlp=m,
                            q=q.contiguous() if "q" in keep else None)


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
        out = h1 + ref.mlp
        h1_sel = h1[idx]
    else:
        if ref.attn is None:
            raise ValueError("this reference holds no attention output: refresh with attention='selected' first")
        a_sel = parts.attend(idx, parts.q(xs), k, v_mix)  # selected queries over all keys and the mixed values
        out = (h + ref.attn) + ref.mlp  # rows that reuse the cache: h1 = h + A_ref, out = h1 + M_ref
        h1_sel = h[idx] + a_sel
    out[idx] = h1_sel + parts.mlp(parts.norm2(h1_sel))
    return out


def mean_key_similarity(parts, h: torch.Tensor, ref: LayerRef) -> tuple[float, torch.Tensor, torch.Tensor]:
    """`mean_t cos(K[t], K_ref[t])` for the refresh gate, with the `x` and `k` it computed (to reuse)."""
    x = parts.norm1(h)
    k = parts.k(x)
    return float(key_similarity(k, ref.k).mean()), x, k
