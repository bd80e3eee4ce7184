"""STC-Cacher on an export directory (ONNX Runtime): the refresh pass is the `vision` graph with the blocks'
internals as outputs, the selective pass is `vision_stc_select` (export/stc.py) fed the stream's references.

Same schedule and state as the torch path (method.py): the references are kept both as per-block `LayerRef`
views and packed `[blocks, T, C]` as the graph takes them, so a selective frame feeds them without copying.
"""
from __future__ import annotations

import torch

from vlmedge.compression.stc.cacher import LayerRef, ref_names
from vlmedge.compression.stc.state import STCStreamState, refresh_due
from vlmedge.errors import InputError
from vlmedge.models.base import FrameTokens

SELECT_STAGE = "vision_stc_select"  # export/stc.py registers the stage under this name


def has_select_stage(backend) -> bool:
    manifest = getattr(backend, "manifest", None)
    return manifest is not None and SELECT_STAGE in manifest.stages


def encode_exported(method, backend, frame, state: STCStreamState, taps):
    if not has_select_stage(backend):
        raise InputError(f"stc's cacher needs the {SELECT_STAGE!r} graph, which this export lacks (exported for "
                         f"{getattr(backend, 'method_spec', '?')!r}); re-export with --method stc, or run stc:cacher=false")
    select = backend.manifest.stage(SELECT_STAGE).attrs
    vision = backend.manifest.stage("vision").attrs
    if abs(float(select["ratio"]) - method.ratio) > 1e-9:
        raise InputError(f"this export's selective pass recomputes ratio {select['ratio']} of the tokens; run with "
                         f"stc:ratio={select['ratio']} or re-export with the ratio you want")
    exported_attention = select.get("attention", "selected")  # exports made before the setting: the release
    n_blocks = int(select["vision_blocks"])
    modes = method.block_modes(n_blocks)
    if exported_attention != method.attention or select.get("block_modes", modes) != modes:
        shown = exported_attention + (f",tail={select['tail']}" if exported_attention == "tail" else "")
        wanted = method.attention + (f",tail={method.tail}" if method.attention == "tail" else "")
        raise InputError(f"this export's selective pass was built with stc:attention={shown}; run with "
                         f"that setting or re-export with attention={wanted}")
    missing = [t for t in taps if t not in select["taps"]]
    if missing:
        raise InputError(f"vision taps {missing} were not exported (this export has {select['taps'] or 'none'})")
    num_tokens = int(select["vision_tokens"])
    refresh = refresh_due(state, n_blocks, num_tokens, method.cache_interval)
    tap_names = [f"tap_{t}" for t in taps]
    pixels = backend.pixels(frame).numpy()
    names = list(method.vision_refs)
    if refresh:
        out = backend.run_stage("vision", {"pixels": pixels}, ["features", "trailer", *tap_names, *names])
        packed = tuple(out[n] for n in names)
        views = [torch.from_numpy(p) for p in packed]
        short = ref_names(method.attention)
        new_refs = [LayerRef.from_named(short, [v[i] for v in views], modes[i]) for i in range(n_blocks)]
    else:
        out = backend.run_stage(SELECT_STAGE, {"pixels": pixels, **dict(zip(names, state.packed_refs))},
                                ["features", "trailer", *tap_names])
    tokens = FrameTokens(features=torch.from_numpy(out["features"]), grid_hw=tuple(vision["grid_hw"]),
                         trailer=torch.from_numpy(out["trailer"]))
    tokens.taps = {t: torch.from_numpy(out[n]) for t, n in zip(taps, tap_names)}
    if refresh:
        state.packed_refs = packed
    method.advance(state, refresh, num_tokens, new_refs if refresh else None)
    return tokens
