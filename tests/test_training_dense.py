"""Dense per-token labels for reference-model training: they say what the rendered frame shows."""
import numpy as np
import torch

from vlmedge.models import camworld
from vlmedge.models.camworld.config import COLOURS
from vlmedge.models.training import dense


def _label(name: str, idx: int) -> str:
    return dense.HEADS[name][idx]


def test_labels_match_the_rendered_pixels_and_the_world():
    checked = 0
    for seed in range(1_000_000, 1_000_012):
        s = camworld.generate(seed)
        for f in range(s.num_frames):
            lab = dense.token_labels(s, f, (12, 12)).reshape(12, 12, len(dense.HEADS))
            frame = np.asarray(s.frames[f]).astype(float)
            t = s.config.frame_time(f)
            quads = s.world.quadrants_at(t) if s.world.settled(t) else {}
            for oid, obj in enumerate(s.world.objects):
                on = (lab[..., 0] == dense.HEADS["colour"].index(obj.colour)) & \
                     (lab[..., 1] == dense.HEADS["shape"].index(obj.shape))
                in_view = [o for o in s.world.objects if s.boxes[f, o.id, 0] >= 0]
                if s.boxes[f, oid, 0] < 0 or sum(o.name() == obj.name() for o in in_view) > 1:
                    continue
                assert on.any(), (seed, f, oid)
                # a large object covers about 3x3 tokens, a small one about 2x2
                n = int(on.sum())
                assert (4 <= n <= 16) if obj.size == "large" else (1 <= n <= 9), (seed, f, obj, n)
                assert {_label("size", int(v)) for v in lab[..., 2][on]} == {obj.size}
                if oid in quads:  # resting objects: the label's quadrant is the world's
                    assert {_label("quadrant", int(v)) for v in lab[..., 3][on]} == {quads[oid]}
                # the object's colour really is in the labelled cells
                ys, xs = np.nonzero(on.numpy())
                cells = np.concatenate([frame[8 * y:8 * y + 8, 8 * x:8 * x + 8].reshape(-1, 3) for y, x in zip(ys, xs)])
                near = np.abs(cells - np.array(COLOURS[obj.colour]) * obj.shade).sum(-1) < 90
                assert near.mean() > 0.15, (seed, f, obj)
                checked += 1
            # tokens no object covers are "none" in every head
            empty = lab[..., 0] == 0
            assert (lab[empty] == 0).all()
    assert checked > 100


def test_dense_head_learns_separable_labels():
    torch.manual_seed(0)
    s = camworld.generate(1_000_003)
    labels = torch.cat([dense.token_labels(s, f, (12, 12)) for f in range(s.num_frames)])
    # features that carry the labels linearly (plus noise): the head must reach them
    width = [len(v) for v in dense.HEADS.values()]
    feats = torch.cat([torch.nn.functional.one_hot(labels[:, j], w).float() for j, w in enumerate(width)], 1)
    feats = feats @ torch.randn(feats.shape[1], 32) + 0.05 * torch.randn(len(feats), 32)
    head = dense.DenseHead(32)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = None
    for _ in range(150):
        loss, acc = head.loss(feats, labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    assert (acc > 0.95).all(), acc


def test_vision_warm_up_trains_the_vision_side_only():
    import numpy as np

    from vlmedge.models import tiny
    from vlmedge.models.training.reference import reference_words

    a = tiny("llava_onevision", seed=0, words=reference_words())
    llm_before = {n: p.detach().clone() for n, p in a.language_model().named_parameters()}
    tower_before = [p.detach().clone() for p in a.model.model.vision_tower.parameters()]
    logs = []
    steps = dense.pretrain_vision(a, dense.DenseHead(a.hidden_size), 0.02, np.random.default_rng(0), 1e-3, logs.append)
    assert steps >= 2 and logs and "vision warm-up step" in logs[0]
    assert all(torch.equal(p, llm_before[n]) for n, p in a.language_model().named_parameters())
    moved = [not torch.equal(p, b) for p, b in zip(a.model.model.vision_tower.parameters(), tower_before)]
    assert sum(moved) > len(moved) // 2


def test_reference_tower_starts_with_position_above_content_noise():
    from vlmedge.models.training.reference import llava_onevision

    emb = llava_onevision(0).model.model.vision_tower.embeddings
    # rows of norm ~8 (std 8/sqrt(width)): the scale at which a dense probe learns position in minutes
    assert 6.0 < emb.position_embedding.weight.norm(dim=1).mean().item() < 10.0



def test_small_object_tokens_weigh_more_in_the_dense_loss():
    """One wrong token carries the whole loss; a small object's counts SMALL_WEIGHT times a large object's."""
    import pytest

    labels = torch.tensor([[1, 1, 1, 1], [2, 2, 2, 2], [0, 0, 0, 0]])  # a large-object, a small-object, an empty token
    width = [len(v) for v in dense.HEADS.values()]
    head = dense.DenseHead(sum(width))
    head.norm, head.proj = torch.nn.Identity(), torch.nn.Identity()  # logits in, as given

    def loss_with_wrong(i):
        logits = torch.full((3, sum(width)), -20.0)
        k = 0
        for j, w in enumerate(width):
            for t in range(3):
                logits[t, k + (int(labels[t, j]) if t != i else (int(labels[t, j]) + 1) % w)] = 20.0
            k += w
        return head.loss(logits, labels)[0].item()

    big, small = loss_with_wrong(0), loss_with_wrong(1)
    # class weights 4 (object) and 1 (none); small-object tokens x SMALL_WEIGHT, normalised by the weight sum
    sw = dense.SMALL_WEIGHT
    assert big == pytest.approx(40.0 * 4 / (4 + 4 * sw + 1), rel=1e-3)
    assert small == pytest.approx(40.0 * 4 * sw / (4 + 4 * sw + 1), rel=1e-3)
