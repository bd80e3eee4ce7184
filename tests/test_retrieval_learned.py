"""The learned retrieval score: its file format, what it reads from a block, its place in the budget, and that the
bundled one finds named objects 10 clips back on held-out streams."""
import json

import numpy as np
import pytest
import torch

from conftest import make_frames, pushed_session
from vlmedge.errors import InputError, ModelFileError
from vlmedge.runtime import StreamingSession


def test_scorer_round_trips_and_refuses_a_missing_or_foreign_folder(tiny_adapters, tmp_path):
    from vlmedge.runtime.retrieval_scorer import RetrievalScorer

    a = tiny_adapters["llava_onevision"]
    sc = RetrievalScorer.for_adapter(a, rank=8, seed=1)
    sc.cfg.trained = {"steps": 3}
    path = sc.save(str(tmp_path))
    back = RetrievalScorer.load(str(tmp_path), a)  # the model folder or its retrieval/ both work
    assert RetrievalScorer.load(path).cfg == sc.cfg
    s = pushed_session(a)
    emb = a.embed_text(a.tokenize("where is the red square ?"))
    vals = [[layer.values[:, :, st:st + 9] for layer in s.cache.layers] for st in (0, 9, 18)]
    torch.testing.assert_close(back.score(emb, vals), sc.score(emb, vals))
    with pytest.raises(ModelFileError, match="train-retrieval"):
        RetrievalScorer.load(str(tmp_path / "nothing"))
    cfg = json.loads((tmp_path / "retrieval" / "config.json").read_text())
    (tmp_path / "retrieval" / "config.json").write_text(json.dumps({**cfg, "layers": [0, 99]}))
    with pytest.raises(ModelFileError, match="another model"):
        RetrievalScorer.load(str(tmp_path), a)  # a layer this model does not have


def test_scorer_takes_its_best_token_and_ignores_where_a_block_sits(tiny_adapters):
    """A block's score is its best token's; values carry no RoPE, so the same frame content scores the same live,
    offloaded in full precision, or offloaded as int8 (within int8's rounding)."""
    from vlmedge.runtime.kv_quant import Int8BlockKV
    from vlmedge.runtime.retrieval import learned_scores
    from vlmedge.runtime.retrieval_scorer import RetrievalScorer
    from vlmedge.runtime.token_store import Block

    a = tiny_adapters["llava_onevision"]
    sc = RetrievalScorer.for_adapter(a, rank=8, seed=2)
    s = pushed_session(a)
    cache = s.cache
    pairs = [(layer.keys[:, :, 9:18].clone(), layer.values[:, :, 9:18].clone()) for layer in cache.layers]
    host = [Block(9, 9, "frame", 0.0, pairs), Block(9, 9, "frame", 0.0, Int8BlockKV.from_pairs(pairs))]
    live = [Block(9, 9, "frame", 0.0), Block(18, 9, "frame", 1.0)]
    emb = a.embed_text(a.tokenize("is there a red square ?"))
    got = learned_scores(sc, cache, host, emb, live)
    assert got[0] == got[2] and abs(float(got[1] - got[0])) < 0.05
    with torch.no_grad():
        q = sc.query(emb)
        per_token = sc.logits(sc.tokens(sc.features([layer.values[:, :, 18:27] for layer in cache.layers])), q)
    assert per_token.shape == (9,) and float(got[3]) == pytest.approx(float(per_token.max()))


def test_learned_retrieval_needs_a_trained_score_and_counts_its_bytes(tiny_adapters, tmp_path):
    from vlmedge.runtime.planner import tensor_bytes
    from vlmedge.runtime.retrieval_scorer import RetrievalScorer

    a = tiny_adapters["llava_onevision"]
    kw = dict(max_stream_tokens=60, eviction="offload", offload_tokens=60, retrieve_tokens=20, retrieval="focus",
              retrieval_score="learned")
    with pytest.raises(InputError, match="train-retrieval"):
        StreamingSession(a, "uniform:ratio=0.25", **kw)  # a tiny model has no folder to read it from
    RetrievalScorer.for_adapter(a, rank=8).save(str(tmp_path))
    a.model_dir = str(tmp_path)
    try:
        s = StreamingSession(a, "uniform:ratio=0.25", max_new_tokens=2, **kw)
        plain = StreamingSession(a, "uniform:ratio=0.25", **{**kw, "retrieval_score": "middle-layer"})
        assert s.memory()["weights"] - plain.memory()["weights"] == tensor_bytes(list(s.scorer.state_dict().values()))
        for i, f in enumerate(make_frames(12, seed=4)):
            s.push_frame(f, time_s=float(i))
        assert s.store.host
        ans = s.ask("where is the red square ?")
        assert ans.retrieved_blocks > 0 and s.store.retrieved_blocks == ans.retrieved_blocks
    finally:
        del a.model_dir


def test_latest_targets_are_the_latest_clip_showing_the_name():
    from vlmedge.models.training.retrieval import StreamData, latest_targets

    names = [["red square"], ["red square", "blue cross"], [], ["blue cross"], ["red square"], ["red square"]]
    data = StreamData(torch.zeros(6, 1, 1), torch.ones(6, 1, dtype=torch.bool), names, np.array([0, 0, 1, 1, 2, 2]))
    assert latest_targets(data, 0, 6) == {"red square": [4, 5], "blue cross": [3]}
    assert latest_targets(data, 0, 4) == {"red square": [0, 1], "blue cross": [3]}


def test_bundled_score_finds_objects_from_clips_ago():
    """Held-out training seeds, the method the soak uses: an object named 6 clips (48+ frames) back is among the
    7 best of up to 170 frames far more often than chance (about 0.1 with 7 picks among the ~8 frames showing it;
    untrained 0.05). Measured 0.84 (hit@1 0.44) on 87 objects; 10 clips back on 1,200 frames 0.85 (hit@1 0.48)."""
    from vlmedge.models.training.retrieval import VAL_SEED_START, _Questions, collect, evaluate
    from vlmedge.runtime.model_source import open_model
    from vlmedge.runtime.retrieval_scorer import RetrievalScorer

    a = open_model("reference:llava_onevision", "torch")[0]
    sc = RetrievalScorer.load(a.model_dir, a)
    data = collect(a, sc, "uniform:ratio=0.25", 600, seed_start=VAL_SEED_START + 500, progress=None)
    got = evaluate(sc, data, _Questions(a), window=170, after=6)
    assert got["questions"] > 60
    assert got["hit@7"] > 0.65 and got["hit@1"] > 0.3


def test_training_scores_frames_as_the_session_scores_blocks():
    """What training ranks (all frames of a window at once, padded) is what `RetrievalScorer.score` gives a block."""
    from vlmedge.models.training.retrieval import StreamData, _frame_scores
    from vlmedge.runtime.retrieval_scorer import RetrievalScorer, ScorerConfig

    torch.manual_seed(0)
    sc = RetrievalScorer(ScorerConfig("test", [0, 1], 4, 6, rank=3))
    vals = [[torch.randn(1, 2, n, 2) for _ in range(2)] for n in (3, 2, 3)]  # per block, per layer [1, kvh, n, hd]
    feats = [sc.features(v) for v in vals]
    x = torch.zeros(3, 3, 8)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    for i, f in enumerate(feats):
        x[i, :len(f)], mask[i, :len(f)] = f, True
    data = StreamData(x.half(), mask, [[]] * 3, np.zeros(3))
    emb = torch.randn(5, 6)
    with torch.no_grad():
        got = _frame_scores(sc, StreamData(x, mask, [[]] * 3, np.zeros(3)), 0, 3, sc.query(emb)[None], None)[0]
        torch.testing.assert_close(got, sc.score(emb, vals))
        soft = _frame_scores(sc, data, 0, 3, sc.query(emb)[None], tau=0.01)[0]
    torch.testing.assert_close(soft, got, atol=0.05, rtol=0)  # the soft maximum training uses tends to the max
