"""Script (spec `shared/specs/script.md`): test vectors S1/S2 of §9, the exact greedy MAP against a brute-force
log-det greedy, the GSP ∩ DPP selection and the registered method."""
import pytest
import torch

from vlmedge.compression import FrameContext, get_method
from vlmedge.compression.script import (cdpruner_relevance, fast_greedy_map, gsp_prune, gsp_redundancy,
                                        head_relevance, head_structural_score, naive_head_dpp, relevance_clip,
                                        relevance_llm_embed, script_select, similarity)
from vlmedge.compression.script.relevance import quality
from vlmedge.errors import InputError
from vlmedge.models.base import FrameTokens

X = torch.tensor([[1.0, 0.2, 0.0, 0.1], [0.9, 0.3, 0.1, 0.0], [0.0, 1.0, 0.2, 0.1],
                  [0.1, 0.8, 0.5, 0.0], [0.0, 0.1, 1.0, 0.3], [0.3, 0.0, 0.2, 1.0]], dtype=torch.float64)
E = torch.tensor([[.5, -.2, .1, .3], [.4, -.1, .2, .1], [-.3, .6, .1, .2], [.2, .2, .2, .2], [.1, -.5, .7, 0],
                  [-.2, .1, -.4, .9]], dtype=torch.float64)
Q = torch.tensor([[.3, -.4, .5, .2]], dtype=torch.float64)


def kernel(r, S):
    return r[:, None] * S * r[None, :]


def brute_greedy(L, steps):
    """Float64 greedy MAP by definition: each step adds the item maximising log det of L on selected + item."""
    L = L.double()
    chosen = []
    for _ in range(steps):
        best, arg = None, None
        for j in range(L.shape[0]):
            if j in chosen:
                continue
            idx = chosen + [j]
            val = torch.logdet(L[idx][:, idx]).item()
            if best is None or val > best:
                best, arg = val, j
        chosen.append(arg)
    return chosen


# ----- §9 S1: structural scores -----
def test_s1_head_dense_score():
    deg, score = head_structural_score(similarity(X))
    assert deg.tolist() == [4, 5, 4, 5, 4, 4]
    torch.testing.assert_close(score, torch.tensor([6.29962, 7.48205, 6.21121, 7.75748, 5.87618, 5.53844],
                                                   dtype=torch.float64), rtol=1e-4, atol=0)
    assert set(torch.topk(score, 3).indices.tolist()) == {0, 1, 3}


def test_s1_bipartite_gsp():
    S = similarity(X)
    torch.testing.assert_close(S[0::2, 1::2], torch.tensor([[.9821, .2675, .3672], [.3274, .9258, .1285],
                                                            [.1299, .5829, .4485]], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    deg, red = gsp_redundancy(S)
    assert deg.tolist() == [3, 2, 2]
    torch.testing.assert_close(red, torch.tensor([4.2103, 3.0641, 2.7424], dtype=torch.float64), atol=1e-3, rtol=0)
    keep, n_gsp = gsp_prune(S, budget=3, ratio=0.5)
    assert n_gsp == 1 and keep.tolist() == [False, True, True, True, True, True]


def test_gsp_count_is_capped_by_connected_tokens_and_budget():
    S = similarity(X)
    assert gsp_prune(S, budget=3, ratio=0.0)[1] == 0  # disabled
    assert gsp_prune(S, budget=5, ratio=0.9)[1] == 1  # N − T = 1
    assert gsp_prune(S, budget=6, ratio=0.9)[1] == 0
    eye = torch.eye(6, dtype=torch.float64)  # no edge reaches tau: nothing is redundant
    assert gsp_prune(eye, budget=1, ratio=0.9)[1] == 0
    assert gsp_redundancy(eye)[1].tolist() == [0.0, 0.0, 0.0]


# ----- §9 S2: relevance, kernel, DPP -----
def test_s2_reference_relevances():
    torch.testing.assert_close(head_relevance(E, Q), torch.tensor(
        [0.292683, 0.365853, 0.999999, 0.560975, 0.0, 0.853657], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(cdpruner_relevance(E, Q), torch.tensor(
        [0.124157, 0.072106, 1.000001, 0.366379, 1e-6, 0.781405], dtype=torch.float64), atol=1e-5, rtol=0)


def test_s2_dpp_orders():
    S = similarity(X)
    L_head, L_cdp = kernel(head_relevance(E, Q), S), kernel(cdpruner_relevance(E, Q), S)
    for L in (L_head, L_head.float()):
        assert fast_greedy_map(L, 3).tolist() == [2, 5, 1]
    assert naive_head_dpp(L_head, 3).tolist() == [2, 5, 1]
    for L in (L_cdp, L_cdp.float()):
        assert fast_greedy_map(L, 3).tolist() == [2, 5, 3]
    assert brute_greedy(L_head, 3) == [2, 5, 1] and brute_greedy(L_cdp, 3) == [2, 5, 3]


def test_relevance_clip_is_the_unnegated_cdpruner_min_max():
    r = relevance_clip(E, Q, sign=-1)
    x = cdpruner_relevance(E, Q)  # (x' − min + 1e-6) / range: same ranking, shifted by 1e-6 / range
    assert r.argsort().tolist() == x.argsort().tolist()
    assert r.min().item() == 0.0 and r.max().item() < 1.0


# ----- exact greedy MAP -----
@pytest.mark.parametrize("seed", range(5))
def test_fast_greedy_map_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(12, 20, generator=g, dtype=torch.float64)
    L = B @ B.T / 20
    expect = brute_greedy(L, 6)
    assert fast_greedy_map(L, 6).tolist() == expect
    assert fast_greedy_map(L.float(), 6).tolist() == expect


def test_fast_greedy_map_early_stop_fills_by_relevance():
    # tokens 0 and 2 are the same direction, 1 and 3 another: after two picks nothing is left to explain
    H = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    S = similarity(H)
    r = torch.tensor([0.5, 0.4, 0.9, 0.4, 0.7])
    order = fast_greedy_map(kernel(r, S), 5, r)
    assert order.tolist() == [2, 4, 0, 1, 3]  # exact for 2 picks, then descending r, ties lower index
    assert fast_greedy_map(torch.zeros(4, 4), 3).tolist() == [0, 1, 2]  # all-zero kernel: no NaN, index order


# ----- selection -----
def _frame(n=48, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype), torch.randn(d, generator=g,
                                                                                        dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("T", [1, 5, 12, 30, 47])
def test_select_returns_exactly_T_ascending_unique(T):
    H, q = _frame()
    keep = script_select(H, T, q=q, tau=0.1)
    assert keep.numel() == T and keep.unique().numel() == T and bool((keep[1:] > keep[:-1]).all())


def test_gsp_ratio_zero_is_pure_dpp_top_T():
    H, q = _frame(seed=1)
    r = relevance_llm_embed(H, q)
    order = fast_greedy_map(kernel(r, similarity(H)), 10, r)
    assert script_select(H, 10, q=q, ratio=0.0).tolist() == order.sort().values.tolist()


def test_gsp_changes_the_selection_unlike_head():
    # one-hot tokens; src token 0 duplicates dst token 1, everything else is orthogonal
    H = torch.eye(8)
    H[0] = H[1]
    assert script_select(H, 4, ratio=0.0).tolist() == [0, 2, 3, 4]  # pure DPP keeps the duplicate's twin 0
    keep, n_gsp = gsp_prune(similarity(H), 4, 0.5)
    assert n_gsp == 1 and not keep[0]
    assert script_select(H, 4, ratio=0.5).tolist() == [2, 3, 4, 5]  # GSP dropped 0; the fill goes past T


def test_all_duplicate_frame_prunes_redundant_source_tokens():
    H = torch.zeros(8, 4)
    H[:, 0] = 1.0  # every token identical: every source token is maximally redundant (ties: lower first)
    assert script_select(H, 2, ratio=0.5).tolist() == [1, 3]  # sources 0, 2 pruned; then index order (r = 1)
    assert script_select(H, 2, ratio=0.0).tolist() == [0, 1]


def test_constant_relevance_is_pure_diversity():
    H, _ = _frame(seed=2)
    r = relevance_llm_embed(H, None)
    assert torch.equal(r, torch.ones(48))
    q_orth = torch.zeros(16)
    q_orth[0] = 1.0
    flat = relevance_llm_embed(torch.ones(5, 16), q_orth)  # all tokens equally relevant: r = 1, not 0 / NaN
    assert torch.equal(flat, torch.ones(5))
    keep = script_select(H, 8)
    assert keep.numel() == 8 and torch.isfinite(keep.float()).all()


def test_budget_at_or_above_N_keeps_everything():
    H, q = _frame(n=10)
    assert script_select(H, 10, q=q).tolist() == list(range(10))
    assert script_select(H, 99, q=q).tolist() == list(range(10))


def test_fp32_and_fp64_agree():
    H, q = _frame(n=64, d=32, seed=3, dtype=torch.float64)
    a = script_select(H, 16, q=q, tau=0.1)
    b = script_select(H.float(), 16, q=q.float(), tau=0.1)
    assert a.tolist() == b.tolist()


def test_relevance_max_follows_the_best_matching_question_token():
    """`llm_embed_max`: a token matching one question word is the most relevant even when the other words pull the
    mean elsewhere; `llm_embed` (mean) ranks by the mean direction."""
    H = torch.eye(4)
    words = torch.tensor([[1.0, 0, 0, 0], [0, 0.6, 0.8, 0], [0, 0.6, 0.8, 0], [0, 0.6, 0.8, 0]])  # one content word
    r_max = relevance_llm_embed(H, words, reduce="max")
    r_mean = relevance_llm_embed(H, words, reduce="mean")
    assert int(r_max.argmax()) == 0 and int(r_mean.argmax()) == 2
    q = torch.tensor([0.2, 0.5, -0.1, 0.7])
    torch.testing.assert_close(relevance_llm_embed(H, q[None], reduce="max"), relevance_llm_embed(H, q))
    with pytest.raises(ValueError, match="reduce"):
        relevance_llm_embed(H, q, reduce="sum")


def test_theta_quality_keeps_every_token_selectable():
    """The spec's kernel gives the least relevant token quality 0, so the DPP never picks it however distinct it
    is; CDPruner's exp(α r) quality (θ = 0.5: [1, e^0.5]) still lets diversity pick it; θ = 0 is pure diversity."""
    r = torch.tensor([1.0, 0.9, 0.0])
    assert quality(r, None) is r
    torch.testing.assert_close(quality(r, 0.5), torch.exp(0.5 * r))
    assert torch.equal(quality(r, 0.0), torch.ones(3))
    H = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]])  # 0 and 1 near-duplicates, 2 distinct but irrelevant
    q = torch.tensor([[1.0, 0.0]])
    assert script_select(H, 2, q=q, ratio=0.0, reduce="max", theta=None).tolist() == [0, 1]
    assert script_select(H, 2, q=q, ratio=0.0, reduce="max", theta=0.5).tolist() == [0, 2]


# ----- registered method -----
def test_method_through_registry():
    g = torch.Generator().manual_seed(4)
    d = 24
    tokens = FrameTokens(features=torch.randn(144, d, generator=g), grid_hw=(12, 12), trailer=torch.zeros(1, d))
    m = get_method("script:ratio=0.25")
    assert m.query_conditioned and get_method(m.spec()) == m
    assert m.relevance_source == "llm_embed_max" and m.theta == 0.5  # our defaults (method.py says why)
    assert get_method("script:theta=none,relevance_source=llm_embed").theta is None  # the spec's kernel
    for query in (None, torch.randn(d, generator=g), torch.randn(5, d, generator=g)):
        sel = m.compress(tokens, FrameContext(0, 0.0, query=query), m.new_state())
        assert sel.keep.numel() == 36 and bool((sel.keep[1:] > sel.keep[:-1]).all()) and sel.features is None
    assert get_method("script").compress(tokens, FrameContext(0, 0.0), None).keep.numel() == 16  # 64/576 of 144
    assert get_method("script:tokens=10,gsp_ratio=0,relevance_sign=-1").compress(
        tokens, FrameContext(0, 0.0), None).keep.numel() == 10


@pytest.mark.parametrize("spec,match", [
    ("script:gsp_ratio=1", "gsp_ratio"), ("script:gsp_ratio=-0.1", "gsp_ratio"), ("script:tau=1.5", "tau"),
    ("script:gamma=-1", "gamma"), ("script:relevance_sign=2", "relevance_sign"),
    ("script:relevance_source=clip_text", "relevance_source must be 'llm_embed_max' or 'llm_embed'"),
    ("script:ratio=0", "ratio"), ("script:eps=-1", "eps"), ("script:theta=1", "theta"), ("script:theta=-0.5", "theta"),
])
def test_bad_settings_raise_input_error(spec, match):
    with pytest.raises(InputError, match=match):
        get_method(spec)


def test_bad_query_shape_raises_input_error():
    tokens = FrameTokens(features=torch.randn(16, 8), grid_hw=(4, 4), trailer=torch.zeros(0, 8))
    with pytest.raises(InputError, match="query"):
        get_method("script:tokens=4").compress(tokens, FrameContext(0, 0.0, query=torch.randn(5)), None)
