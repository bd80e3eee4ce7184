import pytest
import torch

from vlmedge.compression import FrameContext, Selection, available, get_method
from vlmedge.compression.baselines import pool_grid
from vlmedge.errors import InputError, UnknownNameError
from vlmedge.models.base import FrameTokens


def tokens(h, w, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FrameTokens(features=torch.randn(h * w, d, generator=g), grid_hw=(h, w), trailer=torch.zeros(0, d))


def test_baselines_are_registered_and_specs_round_trip():
    assert {"none", "uniform", "random"} <= set(available())
    for spec in ["none", "uniform:ratio=0.25", "uniform:tokens=36", "random:ratio=0.5,seed=3"]:
        m = get_method(spec)
        assert get_method(m.spec()) == m


def test_settings_are_typed_and_validated():
    m = get_method("random:tokens=5,seed=2")
    assert m.tokens == 5 and isinstance(m.tokens, int) and m.seed == 2
    with pytest.raises(UnknownNameError, match="unknown method 'stcx'.*available"):
        get_method("stcx")
    with pytest.raises(UnknownNameError, match="no setting 'foo'"):
        get_method("uniform:foo=1")
    with pytest.raises(InputError, match="must be"):
        get_method("uniform:tokens=many")
    with pytest.raises(InputError, match=r"ratio must be in \(0, 1\]"):
        get_method("uniform:ratio=1.5")
    with pytest.raises(InputError, match="key=value"):
        get_method("uniform:0.5")


def test_none_keeps_everything():
    sel = get_method("none").compress(tokens(4, 6), FrameContext(0, 0.0), None)
    assert sel.keep.tolist() == list(range(24)) and sel.features is None


def test_uniform_pools_exact_2x2_blocks_on_a_12x12_grid():
    t = tokens(12, 12)
    sel = get_method("uniform:ratio=0.25").compress(t, FrameContext(0, 0.0), None)
    assert sel.keep.numel() == 36
    grid = t.features.reshape(12, 12, -1)
    expect = grid.reshape(6, 2, 6, 2, -1).mean(dim=(1, 3)).reshape(36, -1)
    torch.testing.assert_close(sel.features, expect)
    # each pooled token sits at its 2x2 block's top-left (the bin centre rounded down): kept ids stay spatial
    assert sel.keep[:3].tolist() == [0, 2, 4] and sel.keep[6].item() == 24


@pytest.mark.parametrize("h,w,target,expect", [(12, 12, 36, (6, 6)), (12, 12, 16, (4, 4)), (4, 6, 6, (2, 3)),
                                                (27, 27, 64, (8, 8)), (3, 3, 100, (3, 3)), (1, 7, 2, (1, 2))])
def test_pool_grid(h, w, target, expect):
    assert pool_grid(h, w, target) == expect


def test_random_is_seeded_per_stream_and_sorted():
    m = get_method("random:ratio=0.25,seed=11")
    a, b = m.new_state(), m.new_state()
    t = tokens(8, 8)
    ka = [m.compress(t, FrameContext(i, i), a).keep for i in range(3)]
    kb = [m.compress(t, FrameContext(i, i), b).keep for i in range(3)]
    for x, y in zip(ka, kb):
        assert x.tolist() == y.tolist() and x.numel() == 16
        assert bool((x[1:] > x[:-1]).all())
    assert ka[0].tolist() != ka[1].tolist()  # the stream's generator advances frame to frame


def test_selection_rejects_unsorted_indices():
    with pytest.raises(AssertionError):
        Selection(keep=torch.tensor([3, 1]))
