"""GlimpsePrune building blocks (spec `shared/specs/glimpseprune.md`): test vectors G1/G2 of §11, the keep rule's
edge cases, the 2-D RoPE, the VIP (shape, init, gradients, parameter count of §4) and the mask loss of §5."""
import math

import pytest
import torch
import torch.nn.functional as F

from vlmedge.compression.glimpse import (VIP, VIPConfig, apply_rope, dice_loss, gt_token_mask, keep_indices,
                                         keep_indices_multi, keep_mask, mask_loss, remap_released_state_dict,
                                         rope_2d)
from vlmedge.errors import InputError

G1 = torch.tensor([2.0, -1.0, 0.3, -0.2, 1.5, -3.0, 0.05, -0.05, 4.0, 0.9, -2.0, 0.6, -0.7, 0.0, 1.1, -1.2, 0.2,
                   -0.4, 3.0, -5.0])


def ids(t):
    return t.tolist()


# ---------------------------------------------------------------- keep rule

def test_g1_threshold_keeps_strictly_above_half():
    out = keep_indices(G1)
    assert out.dtype == torch.long
    assert ids(out) == [0, 2, 4, 6, 8, 9, 11, 14, 16, 18]  # logit 0.0 (index 13) is p = 0.5: dropped


def test_g1_cap_keeps_top_by_probability():
    assert ids(keep_indices(G1, max_ratio=0.2)) == [0, 4, 8, 18]


def test_g1_min_keep_rescues_empty_mask():
    assert ids(keep_indices(G1 - 10.0)) == [8]
    assert ids(keep_indices(G1 - 10.0, min_keep=3)) == [0, 8, 18]
    assert ids(keep_indices(G1 - 10.0, min_keep=0)) == []
    assert ids(keep_indices(G1 - 10.0, min_keep=None)) == []


def test_min_keep_larger_than_n_keeps_everything():
    assert ids(keep_indices(torch.tensor([-1.0, -2.0, -3.0]), min_keep=10)) == [0, 1, 2]


def test_cap_only_when_strictly_exceeded():
    z = torch.tensor([3.0, 2.0] + [-1.0] * 8)
    assert ids(keep_indices(z, max_ratio=0.2)) == [0, 1]  # mean(keep) = 0.2, not > 0.2
    assert ids(keep_indices(z, max_ratio=0.1)) == [0]


def test_cap_flooring_to_zero_is_rescued_by_min_keep():
    z = torch.tensor([1.0, 3.0, 2.0])
    assert ids(keep_indices(z, max_ratio=0.2)) == [1]  # int(0.6) = 0, then min_keep 1
    assert ids(keep_indices(z, max_ratio=0.2, min_keep=0)) == []


def test_ties_go_to_lower_index():
    assert ids(keep_indices(torch.ones(6), max_ratio=0.5)) == [0, 1, 2]
    assert ids(keep_indices(torch.full((5,), -3.0), min_keep=2)) == [0, 1]
    z = torch.tensor([0.5, 2.0, 0.5, 2.0, 0.5])
    assert ids(keep_indices(z, max_ratio=0.6)) == [0, 1, 3]


def test_saturated_probabilities_rank_by_logit():
    z = torch.tensor([20.0, 30.0, 25.0])  # all sigmoid to exactly 1.0 in float32
    assert torch.sigmoid(z).eq(1.0).all()
    assert ids(keep_indices(z, max_ratio=0.34)) == [1]


def test_threshold_is_a_parameter_and_low_precision_logits_work():
    assert ids(keep_indices(G1, threshold=0.9)) == [8, 18]  # sigmoid(2.0) = 0.881
    assert ids(keep_indices(G1.to(torch.bfloat16))) == ids(keep_indices(G1))
    assert keep_mask(G1).dtype == torch.bool and keep_mask(G1).sum() == 10


def test_cap_applies_per_sample_across_images():
    a = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    b = torch.tensor([0.4, 0.3, 0.2, 0.1])
    out = keep_indices_multi([a, b], max_ratio=0.3)  # 10 of 10 pass; int(0.3·10) = 3 over both images
    assert [ids(t) for t in out] == [[0, 1, 2], []]
    assert ids(keep_indices(a, max_ratio=0.3)) == [0] and ids(keep_indices(b, max_ratio=0.3)) == [0]  # per image
    out = keep_indices_multi([a - 10, b - 1], min_keep=1)  # nothing passes; best token is in image b
    assert [ids(t) for t in out] == [[], [0]]
    out = keep_indices_multi([G1, G1 - 10])
    assert [ids(t) for t in out] == [ids(keep_indices(G1)), []]


def test_spread_adds_evenly_spaced_background_per_image():
    """Our extension: floor(spread * N + 0.5) of the dropped tokens, the j-th of the M dropped at rank
    floor((j + 0.5) * M / c), per image and on top of the cap; spread=0 is the released rule."""
    assert [ids(t) for t in keep_indices_multi([G1], spread=0.0)] == [ids(keep_indices(G1))]
    kept = ids(keep_indices(G1))  # [0, 2, 4, 6, 8, 9, 11, 14, 16, 18]
    dropped = [i for i in range(20) if i not in kept]  # 10 left; c = round(0.2 * 20) = 4 -> ranks 1, 3, 6, 8
    (out,) = keep_indices_multi([G1], spread=0.2)
    assert ids(out) == sorted(kept + [dropped[r] for r in (1, 3, 6, 8)])
    a, b = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5]), torch.tensor([0.4, 0.3, 0.2, 0.1])
    out = keep_indices_multi([a, b], max_ratio=0.3, spread=0.25)  # cap leaves [0, 1, 2] and []
    # a: c = floor(1.5 + 0.5) = 2 of the dropped {3, 4, 5} at ranks 0, 2; b (nothing kept): c = 1 of 4 at rank 2
    assert [ids(t) for t in out] == [[0, 1, 2, 3, 5], [2]]


@pytest.mark.parametrize("call", [
    lambda: keep_indices(G1[None]),
    lambda: keep_indices(torch.tensor([1, 2, 3])),
    lambda: keep_indices(torch.tensor([1.0, float("nan")])),
    lambda: keep_indices([1.0, 2.0]),
    lambda: keep_indices(G1, threshold=1.5),
    lambda: keep_indices(G1, max_ratio=-0.1),
    lambda: keep_indices(G1, max_ratio=1.2),
    lambda: keep_indices(G1, min_keep=-1),
    lambda: keep_indices(G1, min_keep=1.5),
    lambda: keep_indices_multi([]),
    lambda: keep_indices_multi(G1),
    lambda: keep_indices_multi([G1, G1[None]]),
    lambda: keep_indices_multi([G1], spread=1.0),
    lambda: keep_indices_multi([G1], spread=-0.1),
])
def test_keep_rejects_bad_input(call):
    with pytest.raises(InputError):
        call()


# ---------------------------------------------------------------- GT token mask

def cells(mask, w):
    return sorted((int(i) // w, int(i) % w) for i in mask.nonzero().flatten())


def test_g2_boxes():
    a = gt_token_mask([[0.1, 0.2, 0.5, 0.9]], (5, 7))
    assert a.shape == (35,) and a.dtype == torch.bool
    assert cells(a, 7) == [(r, c) for r in range(1, 5) for c in range(0, 4)]
    b = gt_token_mask([[0.8, 0.0, 1.0, 0.1]], (5, 7))
    assert cells(b, 7) == [(0, 5), (0, 6)]  # x2 clamped to w' − 1
    both = gt_token_mask(torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.8, 0.0, 1.0, 0.1]]), (5, 7))
    assert both.sum() == 18 and torch.equal(both, a | b)


def test_gt_mask_edge_cases():
    assert not gt_token_mask([], (5, 7)).any() and gt_token_mask([], (5, 7)).shape == (35,)
    assert not gt_token_mask(torch.zeros(0, 4), (2, 3)).any()
    assert gt_token_mask([0.0, 0.0, 1.0, 1.0], (2, 3)).all()  # a single box, whole image
    assert cells(gt_token_mask([[0.5, 0.5, 0.5, 0.5]], (4, 4)), 4) == [(2, 2)]  # a point covers one cell
    assert not gt_token_mask([[1.0, 0.0, 1.0, 1.0]], (4, 4)).any()  # starts past the last column, as released
    boxes = [[0.29, 0.13, 0.71, 0.57]]  # Python floats floor like the released code: 0.13·100 = 13.000000000000002
    assert cells(gt_token_mask(boxes, (100, 100)), 100)[0] == (13, 28)
    assert torch.equal(gt_token_mask(boxes, (100, 100)),
                       gt_token_mask(torch.tensor(boxes, dtype=torch.float64), (100, 100)))
    assert cells(gt_token_mask(torch.tensor(boxes), (100, 100)), 100)[0] == (12, 28)  # float32 is already rounded


@pytest.mark.parametrize("boxes, grid", [
    ([[0.5, 0.1, 0.4, 0.9]], (5, 7)),  # x2 < x1
    ([[0.1, 0.6, 0.5, 0.2]], (5, 7)),  # y2 < y1
    ([[0.1, 0.2, 1.5, 0.9]], (5, 7)),  # not normalised
    ([[-0.1, 0.2, 0.5, 0.9]], (5, 7)),
    ([[float("nan"), 0.2, 0.5, 0.9]], (5, 7)),
    ([[0.1, 0.2, 0.5]], (5, 7)),  # wrong shape
    (torch.zeros(2, 2, 4), (5, 7)),
    ([["a", 0, 1, 1]], (5, 7)),
    ([[0.1, 0.2, 0.5, 0.9]], (0, 7)),
    ([[0.1, 0.2, 0.5, 0.9]], (5, 7, 1)),
    ([[0.1, 0.2, 0.5, 0.9]], (2.5, 7)),
])
def test_gt_mask_rejects_bad_input(boxes, grid):
    with pytest.raises(InputError):
        gt_token_mask(boxes, grid)


# ---------------------------------------------------------------- 2-D RoPE

def test_rope_shapes_and_frequencies():
    cos, sin = rope_2d((5, 7), 192)
    assert cos.shape == sin.shape == (35, 192) and cos.dtype == torch.float32
    torch.testing.assert_close(cos ** 2 + sin ** 2, torch.ones(35, 192))
    angle = torch.atan2(sin, cos)
    inv_freq = torch.tensor([1e4 ** (-2 * i / 96) for i in range(48)])
    token = 0 * 7 + 1  # (row 0, col 1): row half 0, column half = inv_freq
    torch.testing.assert_close(angle[token, :48], torch.zeros(48))
    torch.testing.assert_close(angle[token, 48:96], inv_freq)
    torch.testing.assert_close(angle[token, 96:], angle[token, :96])  # duplicated for rotate-half
    token = 1 * 7 + 0  # (row 1, col 0)
    torch.testing.assert_close(angle[token, :48], inv_freq)


def test_apply_rope_rotates_pairs_and_preserves_norms():
    torch.manual_seed(0)
    d, grid = 16, (3, 4)
    cos, sin = rope_2d(grid, d, theta=100.0)
    x = torch.randn(2, 12, d)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    inv_freq = [100.0 ** (-2 * i / (d // 2)) for i in range(d // 4)]
    r, c = 2, 3
    t = r * 4 + c
    for j in range(d // 2):  # pair (j, j + d/2) rotated by row·f_j (first quarter) or col·f_j (second)
        th = (r if j < d // 4 else c) * inv_freq[j % (d // 4)]
        x1, x2 = x[0, t, j], x[0, t, j + d // 2]
        torch.testing.assert_close(y[0, t, j], x1 * math.cos(th) - x2 * math.sin(th))
        torch.testing.assert_close(y[0, t, j + d // 2], x2 * math.cos(th) + x1 * math.sin(th))


def test_rope_dot_product_depends_only_on_relative_offset():
    torch.manual_seed(1)
    h, w, d = 8, 9, 24
    cos, sin = rope_2d((h, w), d)
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    qr = apply_rope(q.expand(h * w, d), cos.double(), sin.double())
    kr = apply_rope(k.expand(h * w, d), cos.double(), sin.double())

    def score(a, b):
        return (qr[a[0] * w + a[1]] @ kr[b[0] * w + b[1]]).item()

    base = score((1, 2), (3, 0))
    for dr, dc in [(1, 0), (0, 3), (4, 5), (-1, 2)]:
        assert score((1 + dr, 2 + dc), (3 + dr, 0 + dc)) == pytest.approx(base, abs=1e-5)  # fp32 cos/sin
    assert abs(score((1, 2), (3, 1)) - base) > 1e-3  # a different column offset changes it
    assert abs(score((1, 2), (4, 0)) - base) > 1e-3  # and so does a different row offset


def test_rope_rejects_bad_input():
    with pytest.raises(InputError):
        rope_2d((4, 4), 6)
    with pytest.raises(InputError):
        rope_2d((0, 4), 8)
    cos, sin = rope_2d((2, 2), 8)
    with pytest.raises(InputError):
        apply_rope(torch.randn(5, 8), cos, sin)


# ---------------------------------------------------------------- VIP

SMALL = VIPConfig(attn_dim=6, vit_dim=16, n_taps=2, hidden=32, cond=64, heads=4)


def inputs(cfg, grid=(3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    return torch.randn(n, cfg.attn_dim, generator=g), [torch.randn(n, cfg.vit_dim, generator=g)
                                                        for _ in range(cfg.n_taps)]


def test_vip_output_shape_dtype_and_tap_forms():
    torch.manual_seed(0)
    vip = VIP(SMALL)
    attn, taps = inputs(SMALL)
    out = vip(attn, taps, (3, 5))
    assert out.shape == (15,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(vip(attn, torch.stack(taps), (3, 5)), out)
    assert vip(attn[:1], [t[:1] for t in taps], (1, 1)).shape == (1,)
    out16 = vip.to(torch.bfloat16)(attn, taps, (3, 5))
    assert out16.dtype == torch.float32


def test_vip_positions_matter():
    torch.manual_seed(0)
    vip = VIP(SMALL)
    attn, taps = inputs(SMALL)
    out = vip(attn, taps, (3, 5))
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(3))
    out_perm = vip(attn[perm], [t[perm] for t in taps], (3, 5))
    assert not torch.allclose(out_perm, out[perm], atol=1e-4)  # 2-D RoPE breaks permutation equivariance
    assert not torch.allclose(vip(attn, taps, (5, 3)), out, atol=1e-4)  # same tokens, another grid


def test_vip_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    vip = VIP(SMALL)
    attn, taps = inputs(SMALL)
    target = gt_token_mask([[0.2, 0.0, 0.7, 0.6]], (3, 5))
    mask_loss([vip(attn, taps, (3, 5))], [target]).backward()
    for name, p in vip.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_vip_is_deterministic_under_manual_seed_and_initialised_as_released():
    attn, taps = inputs(SMALL)
    torch.manual_seed(7)
    a = VIP(SMALL)
    torch.manual_seed(7)
    b = VIP(SMALL)
    assert torch.equal(a(attn, taps, (3, 5)), b(attn, taps, (3, 5)))
    for name, p in a.named_parameters():
        if name.endswith("bias"):
            assert not p.any(), name
        elif "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        else:  # Xavier-uniform bound sqrt(6 / (fan_in + fan_out))
            assert p.abs().max() <= math.sqrt(6.0 / sum(p.shape)) + 1e-6, name


def hand_count(attn_dim, vit_dim, m, f, c, ratio=2):
    block = (vit_dim * c + c) + f + 2 * (f + c) ** 2 + 2 * f * f + f + 2 * (f * ratio * f + ratio * f) \
        + (ratio * f * f + f)
    return attn_dim * f + f + m * block + f + 1


def test_vip_parameter_count_qwen_7b_shape():
    cfg = VIPConfig(attn_dim=28, vit_dim=1280, n_taps=4, hidden=256, cond=512, heads=4)
    n = VIP(cfg).num_parameters()
    assert n == hand_count(28, 1280, 4, 256, 512) == 9_454_081
    assert abs(n - 9.45e6) / 9.45e6 < 0.02  # spec §4 table
    assert (cfg.qk_head_dim, cfg.v_head_dim) == (192, 64)


def test_vip_for_model_sizes():
    tiny = VIPConfig.for_model(n_sel_heads=6, vit_dim=128, n_taps=4, llm_hidden=192)
    assert (tiny.attn_dim, tiny.hidden, tiny.cond, tiny.heads) == (6, 96, 192, 4)
    assert VIP(tiny).num_parameters() == hand_count(6, 128, 4, 96, 192) == 1_060_993
    big = VIPConfig.for_model(n_sel_heads=28, vit_dim=1280, n_taps=4, llm_hidden=3584)
    assert (big.hidden, big.cond) == (256, 512)  # released sizes for released models
    assert VIPConfig.for_model(4, 64, 4, 64).hidden == 64
    assert VIPConfig.for_model(32, 1024, 4, 4096).hidden == 256


def test_vip_loads_released_state_dict_names():
    torch.manual_seed(0)
    src = VIP(SMALL)
    released = {("attn_fuser." + k).replace("out_proj.", f"attn_out_projs.{SMALL.n_taps - 1}."): v
                for k, v in src.state_dict().items()}
    released["learnable_embeddings"] = torch.zeros(3, 1, 8)
    released["le_proj.weight"] = torch.zeros(8, 8)
    dst = VIP(SMALL)
    dst.load_state_dict(remap_released_state_dict(released, SMALL.n_taps))
    attn, taps = inputs(SMALL)
    assert torch.equal(dst(attn, taps, (3, 5)), src(attn, taps, (3, 5)))
    with pytest.raises(InputError):
        remap_released_state_dict({"attn_fuser.attn_out_projs.0.weight": torch.zeros(1, 32)}, SMALL.n_taps)


def test_vip_rejects_bad_input():
    vip = VIP(SMALL)
    attn, taps = inputs(SMALL)
    bad = [
        lambda: vip(attn[None], taps, (3, 5)),  # batch dim
        lambda: vip(attn[:, :5], taps, (3, 5)),
        lambda: vip(attn, taps[:1], (3, 5)),
        lambda: vip(attn, [taps[0], taps[1][:, :8]], (3, 5)),
        lambda: vip(attn, taps[0], (3, 5)),
        lambda: vip(attn, taps, (4, 4)),
    ]
    for call in bad:
        with pytest.raises(InputError):
            call()
    VIPConfig(attn_dim=6, vit_dim=16, hidden=8, cond=8, heads=4)  # q/k head dim 4: the smallest RoPE-able
    for kwargs in [dict(heads=5), dict(hidden=0), dict(cond=0), dict(hidden=12, cond=12, heads=4),  # q/k dim 6
                   dict(n_taps=0), dict(eps=0.0)]:
        with pytest.raises(InputError):
            VIPConfig(attn_dim=6, vit_dim=16, **kwargs)


# ---------------------------------------------------------------- loss

def test_dice_perfect_inverted_and_empty():
    g = gt_token_mask([[0.1, 0.2, 0.5, 0.9]], (5, 7))
    sign = g.float() * 2 - 1
    assert dice_loss(30 * sign, g).item() < 1e-6
    assert dice_loss(-30 * sign, g).item() > 1 - 1e-6
    empty = torch.zeros(35, dtype=torch.bool)
    assert dice_loss(torch.full((35,), -30.0), empty).item() < 1e-3  # nothing predicted, nothing wanted
    assert dice_loss(torch.zeros(35), empty).item() == pytest.approx(1.0, abs=1e-6)
    z = torch.randn(35, requires_grad=True)
    loss = mask_loss([z], [empty])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_mask_loss_weights_and_per_sample_means():
    torch.manual_seed(0)
    zs = [torch.randn(6), torch.randn(20)]
    gs = [torch.tensor([1, 0, 0, 1, 0, 0]), gt_token_mask([[0.0, 0.0, 0.5, 0.5]], (4, 5))]
    d = (dice_loss(zs[0], gs[0]) + dice_loss(zs[1], gs[1])) / 2
    b = (F.binary_cross_entropy_with_logits(zs[0], gs[0].float())
         + F.binary_cross_entropy_with_logits(zs[1], gs[1].float())) / 2
    torch.testing.assert_close(mask_loss(zs, gs), d + 0.1 * b)
    torch.testing.assert_close(mask_loss(zs, gs, dice_w=0.0, bce_w=1.0), b)
    torch.testing.assert_close(mask_loss(zs, gs, dice_w=2.0, bce_w=0.0), 2 * d)
    pooled = F.binary_cross_entropy_with_logits(torch.cat(zs), torch.cat(gs).float())
    assert not torch.allclose(b, pooled)  # averaged per sample, not over the pooled tokens
    total, dm, bm = mask_loss(zs, gs, return_parts=True)
    torch.testing.assert_close((dm, bm), (d, b))
    assert mask_loss([z.to(torch.bfloat16) for z in zs], gs).dtype == torch.float32


@pytest.mark.parametrize("call", [
    lambda: dice_loss(torch.zeros(4), torch.zeros(5)),
    lambda: dice_loss(torch.zeros(2, 4), torch.zeros(2, 4)),
    lambda: dice_loss(torch.zeros(0), torch.zeros(0)),
    lambda: dice_loss(torch.zeros(3), torch.tensor([0.0, 2.0, 1.0])),
    lambda: mask_loss([], []),
    lambda: mask_loss([torch.zeros(3)], []),
    lambda: mask_loss(torch.zeros(2, 3), torch.zeros(2, 3)),
])
def test_loss_rejects_bad_input(call):
    with pytest.raises(InputError):
        call()
