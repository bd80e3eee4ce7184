"""What a bench run measures: method variants at each keep ratio, named so tables read as comparisons.

A keep ratio k is a fraction of a frame's P visual tokens. Each method takes it in its own setting (STC's
pruner keeps `tokens = round(k·P)`; the others take `ratio=k`), so all rows at one k keep the same count.
Variants that isolate a part of a method ride along: STC's cacher only / pruner only (the issue's four-way
table), Script without its graph stage (DPP only), OmniZip's two baselines (random audio+video, video-only) at
OmniZip's own retention. Methods that need something the model lacks (OmniZip needs
audio) or that are not registered in this build are listed as skipped, with the reason, never dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass

from vlmedge.compression.registry import available
from vlmedge.errors import InputError

METHODS = ("none", "uniform", "random", "stc", "omnizip", "script", "glimpse")


@dataclass(frozen=True)
class Variant:
    label: str  # row name in tables and plots
    family: str  # the method family it belongs to (plot series)
    spec: str  # `--method` spec
    keep: float | None  # nominal keep ratio (None: keeps every token, e.g. cacher only)


GLIMPSE_SPREAD = 0.05  # the bench's `spread` row: 7 of the reference model's 144 tokens, 10 of 196


def variants(methods, ratios, tokens_per_frame: int, has_audio: bool,
             glimpse_weights: str | None = None) -> tuple[list[Variant], dict[str, str]]:
    """The variants to run and {method: reason} for the ones skipped. GlimpsePrune runs only with trained
    modules (`glimpse_weights`: a folder holding them)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown bench method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    bad = [r for r in ratios if not 0.0 < r <= 1.0]
    if bad:
        raise InputError(f"keep ratios must be in (0, 1], got {', '.join(map(str, bad))}")
    registered = set(available())
    out: list[Variant] = []
    skipped: dict[str, str] = {}
    for m in methods:
        if m not in registered:
            skipped[m] = "not implemented in this build"
            continue
        if m == "omnizip" and not has_audio:
            skipped[m] = "needs an audio-video (Omni) model"
            continue
        if m == "glimpse" and not glimpse_weights:
            skipped[m] = "no trained predictor for this model (vlmedge train-vip)"
            continue
        if m == "glimpse":
            # its own data-driven count, then capped at each ratio (the paper's ≤11.1% / ≤22.2% / ≤33.3% rows)
            out.append(Variant("glimpse", "glimpse", f"glimpse:weights={glimpse_weights}", None))
        if m == "none":
            out.append(Variant("none", "none", "none", 1.0))
            continue
        if m == "stc":
            out.append(Variant("stc cacher only", "stc cacher only", "stc:pruner=false", None))
            # every row attending in every block, and the released cacher (only recomputed tokens attend), so
            # what the default "tail" trades is in the table
            out.append(Variant("stc cacher only all", "stc cacher only all", "stc:pruner=false,attention=all", None))
            out.append(Variant("stc cacher only released", "stc cacher only released",
                               "stc:pruner=false,attention=selected", None))
        for k in ratios:
            tag = f"{k:.0%}"
            n = max(1, round(k * tokens_per_frame))
            if m in ("uniform", "random"):
                out.append(Variant(f"{m} {tag}", m, f"{m}:ratio={k}", k))
            elif m == "stc":
                out.append(Variant(f"stc pruner only {tag}", "stc pruner only", f"stc:cacher=false,tokens={n}", k))
                out.append(Variant(f"stc {tag}", "stc", f"stc:tokens={n}", k))
                out.append(Variant(f"stc all {tag}", "stc all", f"stc:tokens={n},attention=all", k))
                # the release: no evenly spaced context tokens, only the recomputed tokens attend in the cacher
                out.append(Variant(f"stc released {tag}", "stc released",
                                   f"stc:tokens={n},context=0,attention=selected", k))
            elif m == "script":
                out.append(Variant(f"script {tag}", "script", f"script:ratio={k}", k))
                out.append(Variant(f"script dpp-only {tag}", "script dpp-only", f"script:ratio={k},gsp_ratio=0", k))
                # the spec's kernel diag(r) S diag(r) with the mean-embedding relevance, beside our defaults
                out.append(Variant(f"script spec kernel {tag}", "script spec kernel",
                                   f"script:ratio={k},theta=none,relevance_source=llm_embed", k))
            elif m == "omnizip":
                rho = omnizip_rhos(k)
                out.append(Variant(f"omnizip {tag}", "omnizip", f"omnizip:{rho},exact_budget=true", k))
                # the release's ISTC (odd frames pruned by their change against the previous one), beside our
                # default of DPC-KNN on every frame; both with the exact budget, so the counts are the same
                out.append(Variant(f"omnizip released {tag}", "omnizip released",
                                   f"omnizip:{rho},exact_budget=true,odd_frames=temporal", k))
                # the baselines keep exactly OmniZip's count in every window (budget=omnizip): only WHICH differ
                out.append(Variant(f"omnizip random {tag}", "omnizip random",
                                   f"omnizip_random:{rho},exact_budget=true", k))
                out.append(Variant(f"omnizip video-only {tag}", "omnizip video-only",
                                   f"omnizip_videoonly:{rho},exact_budget=true", k))
            elif m == "glimpse":
                out.append(Variant(f"glimpse ≤{tag}", "glimpse capped", f"glimpse:weights={glimpse_weights},"
                                                                       f"max_ratio={k}", k))
                # our extension (off by default): 5% of each frame's tokens evenly spaced on top of the capped set
                out.append(Variant(f"glimpse spread ≤{tag}", "glimpse spread",
                                   f"glimpse:weights={glimpse_weights},max_ratio={k},spread={GLIMPSE_SPREAD}", k))
    return out, skipped


def omnizip_rhos(retention: float) -> str:
    """OmniZip's discard ratios for a total (audio + video) retention, as `rho_a=..,rho_v=..` settings.

    The paper's two settings, ρa/ρv = 0.3/0.6 for "45% retained" and 0.4/0.7 for "35%", both keep ρv = ρa + 0.3
    and both give their retention when audio is a sixth of the tokens (Qwen2.5-Omni at 2 fps: 128 video and 25
    audio tokens a second). Other retentions follow the same line, ρa = 0.75 − retention, clamped to [0, 1]:
    the published points are reproduced exactly and the rest is interpolated, not invented per ratio.
    """
    rho_a = min(1.0, max(0.0, 0.75 - retention))
    rho_v = min(1.0, max(0.0, 1.05 - retention))
    return f"rho_a={rho_a:.4g},rho_v={rho_v:.4g}"
