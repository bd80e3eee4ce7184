"""train-reference end to end on a tiny config: a few steps, a loadable checkpoint, and resuming."""
import json
import os

import pytest

from vlmedge.models import from_pretrained
from vlmedge.models.training.data import TypeWeights
from vlmedge.models.training.trainer import TrainConfig, train


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_omni"])
def test_train_checkpoint_and_resume(tmp_path, family):
    out, work = str(tmp_path / "model"), str(tmp_path / "work")
    cfg = TrainConfig(family=family, out=out, work=work, minutes=10, batch=2, questions=7, max_steps=2,
                      shape="tiny", val_streams=2, threads=1, vision_minutes=0.01)
    logs = []
    res = train(cfg, log=logs.append)
    assert res["steps"] == 2 and len(res["curve"]) == 1
    assert any("vision warm-up done" in m for m in logs)  # from scratch: the dense-only stage ran first
    assert set(res["curve"][0]) >= {"minutes", "step", "mean"}
    adapter = from_pretrained(out)
    assert type(adapter).__name__.lower().startswith(family.split("_")[0][:4])
    if family == "qwen2_5_omni":
        assert adapter.frame_size == (96, 96)  # recorded in preprocessor_config.json by the trainer
    meta = json.load(open(os.path.join(out, "training.json")))
    assert meta["steps"] == 2 and meta["family"] == family

    cfg.max_steps = 3
    res = train(cfg, log=logs.append)
    assert res["steps"] == 3 and any("resumed" in m for m in logs)

    os.remove(os.path.join(work, "train_state.pt"))  # only the bundled checkpoint survives between sessions
    cfg.max_steps = 4
    res = train(cfg, log=logs.append)
    assert res["steps"] == 4 and any("from the bundled weights" in m for m in logs)
    # the dense per-token head trains beside the answers and is kept in the training state
    assert any("tokens colour:" in m for m in logs)
    import torch
    st = torch.load(os.path.join(work, "train_state.pt"), weights_only=False)
    assert st["dense_head"] is not None and st["warm_from"] == 3


def _first_lr(logs):
    import re
    return float(re.search(r"lr ([0-9.e+-]+)", [m for m in logs if m.startswith("[train] step")][-1]).group(1))


def test_continuing_with_a_restarted_schedule(tmp_path):
    out, work = str(tmp_path / "model"), str(tmp_path / "work")
    cfg = TrainConfig(family="llava_onevision", out=out, work=work, minutes=10, batch=1, questions=7, max_steps=1,
                      shape="tiny", val_streams=1, threads=1, lr=1e-3, warmup=10, vision_minutes=0)
    train(cfg, log=lambda m: None)
    os.remove(os.path.join(work, "train_state.pt"))
    logs = []
    cfg.max_steps, cfg.minutes = 2, 1e6  # far from the end: the old cosine would still be near its peak
    train(cfg, log=logs.append)
    assert abs(_first_lr(logs) - 1e-3 / (10 // 3)) < 1e-6  # the short re-warm-up of a plain continuation
    os.remove(os.path.join(work, "train_state.pt"))
    logs = []
    cfg.max_steps, cfg.restart_schedule = 3, True
    train(cfg, log=logs.append)
    assert abs(_first_lr(logs) - 1e-3 / 10) < 1e-6  # a full warm-up from the cosine's start
    st = __import__("torch").load(os.path.join(work, "train_state.pt"), weights_only=False)
    assert st["warm_from"] == 2  # the bundled step count the warm-up restarted from

    # A training-only type added on resume starts at full error, is trained and validated, and stays out of the mean
    logs = []
    cfg.max_steps, cfg.extra_qtypes = 4, ("shape",)
    res = train(cfg, log=logs.append)
    assert any("resumed" in m for m in logs) and any("shape:" in m for m in logs if m.startswith("[train] step"))
    # resuming the full training state with restart_schedule also starts a new warm-up and cosine there
    assert abs(_first_lr(logs) - 1e-3 / 10) < 1e-6
    st = __import__("torch").load(os.path.join(work, "train_state.pt"), weights_only=False)
    assert st["warm_from"] == 3 and st["sched_from"] > 0
    last = res["curve"][-1]
    scored = [v for k, v in last.items() if k not in ("minutes", "step", "mean", "ground", "shape")]
    assert "shape" in last and last["mean"] == pytest.approx(sum(scored) / len(scored), abs=2e-3)


def test_training_only_types_are_checked():
    from vlmedge.errors import InputError
    from vlmedge.models.training.trainer import qtypes_for

    assert qtypes_for("llava_onevision", ("shape",))[-1] == "shape"
    assert "sound" not in qtypes_for("llava_onevision") and qtypes_for("qwen2_5_omni")[-1] == "sound"
    with pytest.raises(InputError, match="choose from shape"):
        qtypes_for("llava_onevision", ("count",))


def test_type_weights_follow_errors():
    w = TypeWeights(("color", "where"))
    for _ in range(50):
        w.update("color", 1.0)
        w.update("where", 0.0)
    counts = w.per_type(10)
    assert counts["where"] > counts["color"] >= 1 and sum(counts.values()) in (10, 11)
    # errors on token-dropped clips are their own: count fails only there, and only dropped streams ask it more
    w = TypeWeights(("color", "count"))
    for _ in range(50):
        w.update("color", 1.0)
        w.update("count", 1.0)
        w.update("color", 1.0, dropped=True)
        w.update("count", 0.0, dropped=True)
    assert w.per_type(10, dropped=True)["count"] > w.per_type(10, dropped=True)["color"]
    assert w.per_type(10)["count"] == w.per_type(10)["color"]
    assert w.error["count"] < 0.01 < 0.99 < w.error["count@drop"]


def test_token_drop_prunes_training_clips(tmp_path, monkeypatch):
    from vlmedge.models.training import trainer

    seen = []
    real = trainer.keep_indices

    def spy(plan, mask, rng, features=None):
        idx = real(plan, mask, rng, features)
        seen.append((plan.mode, idx.numel(), mask.numel()))
        return idx

    monkeypatch.setattr(trainer, "keep_indices", spy)
    cfg = TrainConfig(family="llava_onevision", out=str(tmp_path / "m"), work=str(tmp_path / "w"), minutes=10,
                      batch=2, questions=7, max_steps=2, shape="tiny", val_streams=1, threads=1, vision_minutes=0,
                      token_drop=1.0)
    res = train(cfg, log=lambda m: None)
    assert res["steps"] == 2 and seen
    assert all(1 <= k <= round(0.6 * n) for _, k, n in seen)  # within the 10-60% keep range
    assert {m for m, _, _ in seen} <= {"random", "objects", "salient"}
    assert not [1 for c in res["curve"] for v in c.values() if v != v]  # validation (full frames) ran, no NaN


def test_reference_words_come_in_id_order():
    """Tiny training models are built from this list; a hash-map order gave them different token ids per process."""
    from vlmedge.models.training.reference import reference_tokenizer, reference_words

    words = reference_words()
    assert reference_tokenizer().convert_tokens_to_ids(words) == list(range(len(words)))
