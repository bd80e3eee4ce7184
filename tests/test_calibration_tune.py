"""`vlmedge calibrate tune`: sweeps, targets, what lands in the manifest, the plot, and the command line."""
from __future__ import annotations

import shutil

import pytest

from vlmedge.calibration.tune import memory_bytes, parse_grid, settings_grid, tune, with_settings
from vlmedge.compression import get_method
from vlmedge.errors import InputError
from vlmedge.export.manifest import Manifest
from vlmedge.runtime.backends.onnxruntime import load_backend

GRID = {"ratio": [0.11, 0.5]}


@pytest.fixture
def export_copy(calib_export, tmp_path):
    d = tmp_path / "exp"
    shutil.copytree(calib_export, d)
    return str(d)


@pytest.fixture(scope="module")
def sweep(calib_export, calib_set):
    return tune(calib_export, calib_set, target_latency_ms=1e6, grid=GRID, write=False, log=lambda s: None)


def test_sweep_measures_each_setting(sweep):
    chosen, trials = sweep
    assert [t.settings["ratio"] for t in trials] == [0.11, 0.5]
    small, large = trials
    assert small.tokens_per_frame == 16 and large.tokens_per_frame == 64  # pooled 12x12 grid: 4x4 and 8x8
    assert small.memory_bytes < large.memory_bytes
    assert all(0.0 <= t.accuracy <= 1.0 and t.latency_ms >= t.median_ms > 0 for t in trials)
    # keeping half the tokens agrees with the uncompressed model at least as often as keeping a ninth
    assert large.accuracy >= small.accuracy
    assert chosen is max(trials, key=lambda t: (t.accuracy, -t.latency_ms))


def test_tune_writes_the_choice_and_the_plot(export_copy, calib_set, sweep, tmp_path):
    _, trials = sweep
    budget = (trials[0].memory_bytes + trials[1].memory_bytes) // 2  # only the smaller setting fits
    plot = tmp_path / "frontier.png"
    chosen, _ = tune(export_copy, calib_set, target_latency_ms=1e6, memory_budget=budget, grid=GRID,
                     plot=str(plot), log=lambda s: None)
    assert chosen.settings == {"ratio": 0.11}
    m = Manifest.load(export_copy, verify=True)  # only the manifest changed, files still check
    assert m.method.spec == get_method("uniform:ratio=0.11").spec() == chosen.spec
    assert m.tuning["exported_spec"] == "uniform:ratio=0.33" and m.tuning["memory_budget_bytes"] == budget
    assert [t["settings"] for t in m.tuning["trials"]] == [{"ratio": 0.11}, {"ratio": 0.5}]
    assert load_backend(export_copy).method_spec == chosen.spec  # what `vlmedge run --engine` uses by default
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_unmeetable_targets_change_nothing(export_copy, calib_set):
    before = open(f"{export_copy}/manifest.json").read()
    with pytest.raises(InputError, match="no setting of uniform meets p90 <= 0.001 ms"):
        tune(export_copy, calib_set, target_latency_ms=0.001, grid=GRID, log=lambda s: None)
    with pytest.raises(InputError, match="within"):
        tune(export_copy, calib_set, target_latency_ms=1e6, memory_budget=1000, grid=GRID, log=lambda s: None)
    assert open(f"{export_copy}/manifest.json").read() == before


def test_grids_are_checked():
    assert parse_grid("tokens=16,32;cache_interval=1, 2") == {"tokens": [16, 32], "cache_interval": [1, 2]}
    with pytest.raises(InputError, match="NAME=V1"):
        parse_grid("tokens")
    stc = get_method("stc:tokens=47")
    assert len(settings_grid(stc, None)) == 15
    with pytest.raises(InputError, match="fixed by the exported graphs"):
        settings_grid(stc, {"ratio": [0.5]})
    with pytest.raises(InputError, match="has no setting 'keep'"):
        settings_grid(stc, {"keep": [1]})
    with pytest.raises(InputError, match="no settings to tune"):
        settings_grid(get_method("none"), None)
    assert with_settings(stc, {"tokens": 16}) == get_method("stc:tokens=16").spec()
    with pytest.raises(InputError):
        with_settings(get_method("uniform:ratio=0.5"), {"ratio": 7})


def test_memory_counts_weights_and_kv(calib_export):
    adapter = load_backend(calib_export)
    m = adapter.manifest
    per_token = 2 * m.model.num_layers * m.model.num_kv_heads * m.model.head_dim * 4
    assert memory_bytes(adapter, 10, 20, frames=5) - memory_bytes(adapter, 10, 20, frames=4) == 10 * per_token


def test_cli_record_quantize_tune(calib_export, tmp_path, capsys):
    from vlmedge.cli import main

    cs, q = tmp_path / "cs", tmp_path / "int8"
    assert main(["calibrate", "record", "--source", "camworld:11", "--frames", "8", "--min-change", "0",
                 "--out", str(cs)]) == 0
    assert "8 frames kept" in capsys.readouterr().out
    assert main(["calibrate", "quantize", "--engine", calib_export, "--calib", str(cs), "--out", str(q),
                 "--stages", "vision", "--eval-seeds", "none"]) == 0
    assert "int8 export written" in capsys.readouterr().out
    assert main(["calibrate", "tune", "--engine", str(q), "--calib", str(cs), "--target-latency", "100000",
                 "--grid", "ratio=0.2,0.4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ratio=0.2" in out and "ratio=0.4" in out and "chosen: uniform:ratio=" in out
    assert Manifest.load(str(q)).tuning is None  # --dry-run
    assert main(["calibrate", "quantize", "--engine", calib_export, "--calib", str(cs), "--out", str(q)]) == 2
    assert "--force" in capsys.readouterr().err
