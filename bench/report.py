"""Bench results as JSON, Markdown tables (ratios against the uncompressed row) and PNG plots."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict

from vlmedge.runtime.evaluation import kept_text

ACC_TYPES = ("color", "count", "where", "exists", "appeared", "small", "sound")


def _f(x, fmt="{:.1f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _ratio(x, base) -> str:
    if x is None or base is None or base == 0 or any(isinstance(v, float) and math.isnan(v) for v in (x, base)):
        return "–"
    return f"{x / base:.2f}×"


def timing_table(timing: list, baseline: str = "none") -> str:
    base = next((t for t in timing if t.label == baseline), None)
    # audio-video models: the audio encoder's time per frame gets a column (prefill already includes audio)
    audio = any(t.metrics["audio_ms"].median > 0 for t in timing if "audio_ms" in t.metrics)

    def b(name):
        return base.value(name) if base else None

    head = ("| method | tokens/frame | vision ms | vision × | " + ("audio ms | " if audio else "") +
            "prefill ms | prefill × | TTFT ms | decode tok/s | KV MB | peak MB |")
    lines = [head, "|" + "---|" * (10 + audio)]
    for t in timing:
        m = t.metrics
        audio_cell = f"| {_f(m['audio_ms'].median)} " if audio else ""
        lines.append(
            f"| {t.label} | {_f(m['tokens_kept'].median)} of {_f(m['tokens_in'].median, '{:.0f}')} "
            f"| {_f(m['vision_ms'].median)} ± {_f(m['vision_ms'].spread / 2)} | {_ratio(m['vision_ms'].median, b('vision_ms'))} "
            f"{audio_cell}"
            f"| {_f(m['prefill_ms'].median)} ± {_f(m['prefill_ms'].spread / 2)} | {_ratio(m['prefill_ms'].median, b('prefill_ms'))} "
            f"| {_f(m['ttft_ms'].median)} | {_f(m['decode_tok_s'].median)} | {_f(m['kv_mb'].median, '{:.2f}')} "
            f"| {_f(m['peak_mb'].median, '{:.0f}')} |")
    return "\n".join(lines)


def accuracy_table(accuracy: list, baseline: str = "none") -> str:
    base = next((a for a in accuracy if a["label"] == baseline), None)
    types = [q for q in ACC_TYPES if any(q in a["report"].accuracy for a in accuracy)]
    # audio-video runs: the share of ALL tokens kept, which is what OmniZip's "45% retained" means
    av = any(getattr(a["report"], "retention", None) is not None for a in accuracy)
    head = "| method | tokens/frame | " + ("kept (video+audio) | " if av else "") + "overall | of none | " \
        + " | ".join(types) + " |"
    lines = [head, "|" + "---|" * (4 + av + len(types))]
    for a in accuracy:
        r = a["report"]
        keep = f"{kept_text(r)} of {r.tokens_in_per_frame:.0f}"
        if av:
            ret = getattr(r, "retention", None)
            # frame methods keep every audio token; only window methods count both
            audio = f" (audio {r.audio_retention:.0%})" if getattr(r, "audio_retention", None) is not None else ""
            keep += " | " + (f"{ret:.1%}{audio}" if ret is not None else "–")
        base_acc = base["report"].accuracy["overall"] if base else 0.0
        rel = f"{r.accuracy['overall'] / base_acc:.1%}" if base_acc else "–"
        cells = " | ".join(_f(r.accuracy.get(q), "{:.3f}") for q in types)
        lines.append(f"| {a['label']} | {keep} | {r.accuracy['overall']:.3f} | {rel} | {cells} |")
    if accuracy:
        r = accuracy[0]["report"]
        lines.append("| chance | | " + ("| " if av else "") + f"{r.chance['overall']:.3f} | | "
                     + " | ".join(_f(r.chance.get(q), "{:.3f}") for q in types) + " |")
    return "\n".join(lines)


def to_json(result) -> dict:
    return {
        "config": result.config,
        "skipped": result.skipped,
        "timing": [{**{k: v for k, v in asdict(t).items() if k != "metrics"},
                    "metrics": {k: asdict(m) for k, m in t.metrics.items()}} for t in result.timing],
        "accuracy": [{"label": a["label"], "family": a["family"], "keep": a["keep"],
                      **json.loads(a["report"].to_json())} for a in result.accuracy],
        "wall_s": result.wall_s,
    }


def markdown(result) -> str:
    c = result.config
    parts = [f"# vlmedge bench ({'quick' if c['quick'] else 'full'})", ""]
    if result.accuracy:
        parts += [f"## Accuracy — {c['accuracy_model']}, camworld seeds {c['seeds'][0]}..{c['seeds'][1] - 1}", "",
                  accuracy_table(result.accuracy), ""]
    if result.timing:
        parts += [f"## Latency per frame — {c['timing_model']} ({c['backend']}, {c['device']}, "
                  f"{c['threads']} threads), median of {c['repeats']} runs ± half the spread", "",
                  timing_table(result.timing), ""]
    if result.skipped:
        parts += ["Skipped: " + "; ".join(f"{m} ({why})" for m, why in result.skipped.items()), ""]
    parts.append(f"Wall time {result.wall_s / 60:.1f} min.")
    return "\n".join(parts) + "\n"


def plots(result, out_dir: str) -> list[str]:
    """accuracy_vs_tokens.png and latency.png; returns the files written ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if result.accuracy:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        series: dict[str, list] = {}
        for a in result.accuracy:
            r = a["report"]
            series.setdefault(a["family"], []).append((r.tokens_per_frame, r.accuracy["overall"]))
        for fam, pts in series.items():
            pts.sort()
            style = "o" if len(pts) == 1 else "o-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=fam)
        chance = result.accuracy[0]["report"].chance["overall"]
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
        ax.set_xlabel("visual tokens per frame (kept)")
        ax.set_ylabel("accuracy (camworld eval)")
        ax.set_title("Accuracy vs tokens kept")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        written.append(save_figure(plt, fig, out_dir, "accuracy_vs_tokens.png"))
    if result.timing:
        fig, ax = plt.subplots(figsize=(7.2, 0.45 * len(result.timing) + 1.4))
        labels = [t.label for t in result.timing]
        left = [0.0] * len(labels)
        for stage, colour in (("vision_ms", "#4C72B0"), ("compress_ms", "#DD8452"), ("prefill_ms", "#55A868")):
            vals = [t.value(stage) for t in result.timing]
            ax.barh(labels, vals, left=left, color=colour, label=stage.replace("_ms", ""))
            left = [a + b for a, b in zip(left, vals)]
        ax.invert_yaxis()
        ax.set_xlabel("ms per frame")
        ax.set_title("Per-frame latency by stage")
        ax.legend(fontsize=8)
        written.append(save_figure(plt, fig, out_dir, "latency.png"))
    return written


def save_figure(plt, fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
