"""GlimpsePrune's pruned prefill on an export directory: the `llm_head`, `vip` and `llm_tail` graphs (export/glimpse.py)
in the order prefill.py runs the torch layers, with the same keep rule on the host.

The backend's KV cache is read as arrays (`tail(0)`) and written back whole (`crop(0)` + `extend`): the head and
tail graphs take different layers' KV, and layers 0..K are pruned between them. That copies the cache once per
glimpse prefill (a frame, or a question's re-selection), the price of keeping the backends' cache classes unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from vlmedge.compression.glimpse.keep import keep_indices_multi
from vlmedge.compression.glimpse.prefill import frame_taps, glimpse_ids, kept_rows
from vlmedge.errors import InputError

HEAD, TAIL, VIP_STAGE = "llm_head", "llm_tail", "vip"


def has_glimpse_stages(backend) -> bool:
    stages = getattr(getattr(backend, "manifest", None), "stages", {}) or {}
    return all(s in stages for s in (HEAD, TAIL, VIP_STAGE))


def layout(backend) -> dict:
    """What the runtime needs from the export: K, the ViT taps the VIP reads, the VIP's token grid."""
    if not has_glimpse_stages(backend):
        method = backend.manifest.method.spec
        raise InputError(f"glimpse needs the {HEAD}/{TAIL}/{VIP_STAGE} graphs, which this export lacks (exported for "
                         f"{method!r}); re-export with `vlmedge export --method glimpse ...`")
    vip = backend.manifest.stage(VIP_STAGE).attrs
    return {"select_layer": int(vip["select_layer"]), "taps": [int(t) for t in vip["taps"]],
            "grid_hw": tuple(vip["grid_hw"])}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def prefill(backend, cache, pieces, threshold: float = 0.5, max_ratio: float | None = None, min_keep: int = 1,
            spread: float = 0.0):
    """As prefill.prefill: (logits of the last kept row [1, V], kept indices per frame piece, VIP logits per
    frame piece), with the cache extended by the kept rows."""
    lay = layout(backend)
    k = lay["select_layer"]
    start = cache.get_seq_length()
    embeds = torch.cat([p.embeds.float() for p in pieces])
    ids = torch.cat([p.ids for p in pieces], dim=1)
    ids = torch.cat([ids, glimpse_ids(ids)], dim=1)
    # the glimpse row's input is the trained embedding, set inside llm_head; this row only holds its place
    embeds = torch.cat([embeds, torch.zeros(1, embeds.shape[1])])
    n = embeds.shape[0]
    model_ids = _np(backend.positions.model_position_ids(ids)).astype(np.int64)
    raw = cache.tail(0)
    as_torch = bool(raw) and isinstance(raw[0], torch.Tensor)  # the TensorRT backend's cache holds tensors
    kv = [_np(v) for v in raw]
    head_kv, tail_kv = kv[: 2 * (k + 1)], kv[2 * (k + 1):]
    names = [f"past_{part}_{i}" for i in range(k + 1) for part in ("key", "value")]
    out = backend.run_stage(HEAD, {"inputs_embeds": _np(embeds)[None], "position_ids": model_ids,
                                   "glimpse_row": np.array([n - 1], np.int64), **dict(zip(names, head_kv))})
    row = torch.from_numpy(np.asarray(out["glimpse_logits"], np.float32))  # [H, start + n]

    z, off = [], start
    tap_names = [f"tap_{t}" for t in lay["taps"]]
    for p in pieces:
        if p.tokens is not None:
            m = p.tokens.num_tokens
            if tuple(p.tokens.grid_hw) != lay["grid_hw"] or m != lay["grid_hw"][0] * lay["grid_hw"][1]:
                raise InputError(f"glimpse: a frame of grid {tuple(p.tokens.grid_hw)} reached a VIP exported for "
                                 f"{lay['grid_hw']}; frames must have the export's frame size")
            feeds = {"attn": row[:, off:off + m].transpose(0, 1).numpy(),
                     **{nm: t.numpy() for nm, t in zip(tap_names, frame_taps(p.tokens, lay["taps"]))}}
            z.append(torch.from_numpy(np.asarray(backend.run_stage(VIP_STAGE, feeds)["logits"], np.float32)))
        off += p.embeds.shape[0]
    keeps = keep_indices_multi(z, threshold=threshold, max_ratio=max_ratio, min_keep=min_keep,
                                   spread=spread) if z else []

    keep = kept_rows(pieces, keeps).numpy()
    index = np.concatenate([np.arange(start), start + keep])
    pruned = [np.ascontiguousarray(np.asarray(out[f"present_{part}_{i}"])[:, :, index])
              for i in range(k + 1) for part in ("key", "value")]

    layers = range(k + 1, len(kv) // 2)
    names = [f"past_{part}_{i}" for i in layers for part in ("key", "value")]
    hidden = np.asarray(out["hidden"])[:, keep]
    tail = backend.run_stage(TAIL, {"hidden": hidden, "position_ids": model_ids[..., keep],
                                    "logits_positions": np.array([len(keep) - 1], np.int64),
                                    **dict(zip(names, tail_kv))})
    new = pruned + [np.asarray(tail[f"present_{part}_{i}"]) for i in layers for part in ("key", "value")]
    cache.crop(0)
    cache.extend([torch.from_numpy(a) for a in new] if as_torch else new)
    return torch.from_numpy(np.asarray(tail["logits"], np.float32)[0]), keeps, z
