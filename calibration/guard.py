"""The accuracy guard of a quantised export: how far each graph output moved, and what that did to answers.

Two views, both against the fp32 export it came from:

* per output (per layer where a graph exposes layers: the LLM's present keys/values of every layer, the vision
  taps): relative L2 error on held-out calibration frames' recorded inputs, and the LLM's next-token agreement;
* end to end: camworld accuracy and per-frame time (vision + compression + prefill) through the streaming
  session with the export's method, on held-out evaluation seeds.

A quantised export whose accuracy keeps less than `1 - max_drop` of fp32 is refused unless the caller accepts it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class GuardReport:
    outputs: dict  # stage -> output -> {"mean_rel_err", "max_rel_err"}
    next_token_agreement: float | None
    accuracy_fp32: float | None
    accuracy_int8: float | None
    frame_ms_fp32: float | None
    frame_ms_int8: float | None
    seeds: list | None
    questions: int = 0
    max_drop: float = 0.03
    per_type: dict = field(default_factory=dict)

    @property
    def retention(self) -> float | None:
        if self.accuracy_fp32 is None or self.accuracy_int8 is None:
            return None
        return self.accuracy_int8 / self.accuracy_fp32 if self.accuracy_fp32 > 0 else 1.0

    @property
    def speed_ratio(self) -> float | None:
        if not self.frame_ms_fp32 or not self.frame_ms_int8:
            return None
        return self.frame_ms_int8 / self.frame_ms_fp32

    @property
    def passed(self) -> bool:
        r = self.retention
        return r is None or r >= 1.0 - self.max_drop - 1e-12

    def to_dict(self) -> dict:
        return {**asdict(self), "retention": self.retention, "speed_ratio": self.speed_ratio, "passed": self.passed}

    def table(self) -> str:
        lines = [f"{'stage':<20} {'output':<22} {'mean rel err':>12} {'max rel err':>12}"]
        for stage, outs in self.outputs.items():
            for name, e in outs.items():
                lines.append(f"{stage:<20} {name:<22} {e['mean_rel_err']:>12.2e} {e['max_rel_err']:>12.2e}")
        if self.next_token_agreement is not None:
            lines.append(f"LLM next-token agreement with fp32: {self.next_token_agreement:.1%}")
        if self.retention is not None:
            lines.append(f"camworld accuracy (seeds {self.seeds[0]}..{self.seeds[1] - 1}, {self.questions} questions): "
                         f"fp32 {self.accuracy_fp32:.3f}, int8 {self.accuracy_int8:.3f} -> {self.retention:.1%} kept "
                         f"(floor {1 - self.max_drop:.0%})")
        if self.speed_ratio is not None:
            lines.append(f"per frame (vision + compression + prefill, median): fp32 {self.frame_ms_fp32:.2f} ms, "
                         f"int8 {self.frame_ms_int8:.2f} ms -> {self.speed_ratio:.2f}x")
        return "\n".join(lines)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(a)
    return float(np.linalg.norm(a - b) / denom) if denom > 0 else float(np.linalg.norm(b))


def output_errors(fp32, int8, feeds: dict[str, list[dict]]) -> tuple[dict, float | None]:
    """Runs both exports' graphs on the same recorded inputs; per stage and output, the mean and max relative
    error, and the share of LLM runs whose last-position argmax agrees."""
    errors: dict = {}
    agree = []
    for stage, runs in feeds.items():
        a_sess, b_sess = fp32.session(stage), int8.session(stage)
        names = [o.name for o in a_sess.get_outputs()]
        per: dict[str, list[float]] = {n: [] for n in names}
        for f in runs:
            ya = a_sess.run(names, f)
            yb = b_sess.run(names, f)
            for n, x, y in zip(names, ya, yb):
                per[n].append(rel_err(x, y))
            if stage == "llm":
                agree.append(float(np.argmax(ya[0][0, -1]) == np.argmax(yb[0][0, -1])))
        errors[stage] = {n: {"mean_rel_err": float(np.mean(v)), "max_rel_err": float(np.max(v))}
                         for n, v in per.items() if v}
    return errors, (float(np.mean(agree)) if agree else None)


def accuracy_and_speed(fp32, int8, method: str, seeds: tuple[int, int], progress=None) -> dict:
    """camworld accuracy and median per-frame time of both exports with `method` on `seeds`."""
    from vlmedge.runtime.evaluation import evaluate

    out = {}
    for name, adapter in (("fp32", fp32), ("int8", int8)):
        def each(done, total, n=name):
            if progress and (done == total or done % max(1, total // 4) == 0):
                progress(f"{n}: {done}/{total} streams")

        rep = evaluate(adapter, method, seeds, name=name, progress=each)
        out[name] = {"accuracy": rep.accuracy["overall"], "per_type": rep.accuracy, "questions": rep.counts["overall"],
                     "frame_ms": rep.ms["encode"] + rep.ms["compress"] + rep.ms["prefill"]}
    return out
