"""The short soak: a few hundred frames of one long stream stay inside their bound, under both policies."""
import pytest

from vlmedge.runtime.soak import soak


@pytest.mark.parametrize("policy,extra", [("evict", {}), ("offload", {"offload_tokens": 80, "retrieve_tokens": 30}),
                                          ("focus", {"offload_tokens": 80, "retrieve_tokens": 30}),
                                          ("focus", {"offload_tokens": 80, "retrieve_tokens": 30,
                                                     "offload_precision": "int8", "retrieval_score": "all-heads",
                                                     "retrieval_positions": "adjacent", "retrieval_context": 2})])
def test_short_soak_stays_bounded(tiny_adapters, policy, extra):
    a = tiny_adapters["llava_onevision"]
    r = soak(a, "uniform:ratio=0.25", 240, policy=policy, max_stream_tokens=100, sample_every_s=10.0,
             recall_after=3, **extra)
    assert r.frames == 240 and r.stream_seconds == 120.0 and r.counts["overall"] > 20
    assert max(s["stream_tokens"] for s in r.samples) <= 100
    kv_cap = 100 * 512  # the store's capacity in bytes: 2 layers x 2 (K, V) x 2 heads x 16 x fp32 per token
    assert max(s["kv"] for s in r.samples) <= kv_cap
    assert r.store["evicted_blocks"] > 100
    growth = r.growth(30, 110)
    assert growth is not None and abs(growth) < 0.05  # resident memory flat once the store is full
    if policy != "evict":
        assert r.store["retrieved_blocks"] > 0 and r.store["dropped_blocks"] > 0
        assert (r.offload_precision, r.retrieval_score, r.retrieval_positions, r.retrieval_context) == (
            extra.get("offload_precision", "full"), extra.get("retrieval_score", "middle-layer"),
            extra.get("retrieval_positions", "in-place"), extra.get("retrieval_context", 0))
    # recall questions: asked 3 clips later, when 100 tokens no longer hold their clip
    c = r.counts
    assert c["recall"] > 5 and c["recall"] == c["recall_in_cache"] + c["recall_evicted"]
    assert c["recall_evicted"] == c["recall"] and c["recall_after_clips"] == 3
    # only an offload store keeps evicted evidence retrievable (80 tokens: about the last two clips)
    assert c["recall_offloaded"] == 0 if policy == "evict" else 0 <= c["recall_offloaded"] <= c["recall_evicted"]
    # under focus, each recall question still held is asked again from exactly its evidence frames
    assert c["recall_given_evidence"] == (c["recall_offloaded"] + c["recall_in_cache"] if policy == "focus" else 0)


def test_recall_questions_name_an_object_unique_in_their_clip():
    from vlmedge.models import camworld
    from vlmedge.runtime.soak import recall_questions

    found = 0
    for seed in range(1_000_000, 1_000_010):
        clip = camworld.generate(seed, split="eval")
        for r in recall_questions(clip, index=4, after=6, offset=100.0):
            found += 1
            q = r.question
            assert q.template == "appeared.before" and r.due == 10 and r.evidence_s >= 100.0
            assert [o.name() for o in clip.objects].count(r.name) == 1
            assert q.text == f"what color appeared just before the {r.name} ?"
            assert q.answer == clip.objects[q.refs[0]].colour
    assert found >= 3


def test_an_unknown_policy_is_refused(tiny_adapters):
    from vlmedge.errors import InputError

    with pytest.raises(InputError, match="focus-original"):
        soak(tiny_adapters["llava_onevision"], "none", 4, policy="lru", max_stream_tokens=100)
