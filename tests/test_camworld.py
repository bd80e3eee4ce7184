"""camworld: determinism, the seed rule, ground truth recomputed from the event log, balance, media."""
from __future__ import annotations

import collections
import shutil

import numpy as np
import pytest

from vlmedge.errors import InputError
from vlmedge.models import camworld as cw
from vlmedge.models.camworld.world import build_world, quadrant_of


@pytest.fixture(scope="module")
def streams():
    return [cw.generate(seed) for seed in range(40)]


# --- determinism and the seed rule ------------------------------------------------------------------------

def test_same_seed_same_stream_different_seed_different_stream():
    a, b, c = cw.generate(11), cw.generate(11), cw.generate(12)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert a.questions == b.questions and a.events == b.events
    assert not np.array_equal(a.frames, c.frames) and not np.array_equal(a.audio, c.audio)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (8, 96, 96, 3)
    assert a.audio.dtype == np.float32 and a.audio.shape == (64000,)
    assert a.fps == 2 and a.sample_rate == 16000 and a.frame_time(3) == 1.5


def test_world_does_not_depend_on_frame_rate():
    slow, fast = cw.generate(5), cw.generate(5, cw.WorldConfig(fps=10))
    assert slow.events == fast.events and slow.objects == fast.objects
    assert fast.frames.shape[0] == 40
    for q in fast.questions:
        assert fast.world.settled(fast.frame_time(q.frame))


def test_seed_rule():
    assert cw.EVAL_SEED_START == 1_000_000 and cw.TRAIN_SEEDS == range(0, 1_000_000)
    assert cw.check_seed(999_999, "train") == 999_999 and cw.check_seed(1_000_000, "eval") == 1_000_000
    for seed, split in [(1_000_000, "train"), (5_000_000, "train"), (999_999, "eval"), (-1, None), (2.5, None)]:
        with pytest.raises(InputError):
            cw.check_seed(seed, split)
    with pytest.raises(InputError):
        cw.generate(1_000_001, split="train")
    with pytest.raises(InputError):
        cw.train_seeds(10, start=999_995)
    assert list(cw.eval_seeds(2)) == [1_000_000, 1_000_001]
    assert cw.split_of(3) == "train" and cw.split_of(1_234_567) == "eval"


# --- answers recomputed from the event log alone -----------------------------------------------------------

def _in_view(events, t):
    where = {}
    for e in sorted(events, key=lambda e: e.end):
        if e.end <= t and e.kind in ("present", "enter", "move"):
            where[e.obj] = e.dst
        elif e.end <= t and e.kind == "leave":
            where.pop(e.obj, None)
    return where


def _expected(stream, q):
    objs, events = stream.objects, stream.events
    t = q.time
    view = _in_view(events, t)
    name = {o.id: f"{o.colour} {o.shape}" for o in objs}
    words = q.text.split()
    if q.qtype == "count":
        return ["one", "two", "three", "four"][len(view) - 1]
    if q.qtype == "color":
        if words[-4] == "in":
            return [objs[i].colour for i, quad in view.items() if quad == words[-2]][0]
        (only,) = [i for i in view if objs[i].shape == words[-2]]
        return objs[only].colour
    if q.qtype == "where":
        (only,) = [i for i in view if name[i] == " ".join(words[-3:-1])]
        return view[only]
    if q.qtype == "exists":
        return "yes" if " ".join(words[-3:-1]) in {name[i] for i in view} else "no"
    if q.qtype == "small":
        (only,) = [i for i in view if objs[i].colour == words[-3] and objs[i].size == "small"]
        return objs[only].shape
    entries = [e for e in events if e.kind == "enter" and e.end <= t]
    if q.template == "appeared.last":
        return objs[entries[-1].obj].colour
    named = [e for e in entries if name[e.obj] == " ".join(words[-3:-1] if q.qtype == "appeared" else words[-4:-2])]
    assert len(named) == 1
    if q.qtype == "appeared":
        return objs[entries[entries.index(named[0]) - 1].obj].colour
    (sound,) = [e.sound for e in events if e.kind == "sound" and e.obj == named[0].obj]
    return sound


def test_answers_match_event_log_and_pixels(streams):
    seen = collections.Counter()
    for s in streams:
        for q in cw.sample_questions(s, np.random.default_rng(s.seed), per_type=3):
            seen[q.qtype] += 1
            assert q.answer == _expected(s, q), (s.seed, q)
            assert q.answer in q.choices and q.chance == 1 / len(q.choices)
            assert 0 <= q.evidence_start <= q.frame < s.num_frames
            if q.qtype in ("where", "small", "color") and q.refs:
                # The drawn object really sits inside its quadrant on that frame (the pixels agree).
                x0, y0, x1, y1 = s.boxes[q.frame, q.refs[0]]
                assert x0 >= 0 and quadrant_of((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, s.config) == \
                    _in_view(s.events, q.time)[q.refs[0]]
                assert (x0 < 48) == (x1 <= 48) and (y0 < 48) == (y1 <= 48)
    assert set(seen) == set(cw.QTYPES)


def test_exists_refs_are_the_named_objects_or_the_near_misses(streams):
    """"yes": every object in view of that name; "no": every object in view sharing its colour or its shape."""
    answers = collections.Counter()
    for s in streams:
        objs = s.world.objects
        for q in cw.candidates(s.world)["exists"]:
            colour, shape = q.text.split()[-3:-1]
            view = _in_view(s.events, q.time)
            if q.answer == "yes":
                want = [i for i in sorted(view) if objs[i].colour == colour and objs[i].shape == shape]
            else:
                want = [i for i in sorted(view) if objs[i].colour == colour or objs[i].shape == shape]
            assert list(q.refs) == want and want, (s.seed, q.text)
            answers[q.answer] += 1
    assert answers["yes"] and answers["no"]


def test_shape_curriculum_is_training_only(streams):
    """"shape" names the large object of a colour; it is never sampled, scored or given a chance level."""
    n = 0
    vocab = set(cw.vocabulary())
    for s in streams:
        objs = s.world.objects
        for q in cw.candidates(s.world)["shape"]:
            colour = q.text.split()[-3]
            view = _in_view(s.events, q.time)
            (only,) = [i for i in view if objs[i].colour == colour and objs[i].size == "large"]
            assert q.refs == (only,) and q.answer == objs[only].shape and q.choices == cw.SHAPES
            assert set(q.text.split()) <= vocab
            n += 1
        assert all(q.qtype != "shape" for q in cw.sample_questions(s, np.random.default_rng(0), per_type=3))
        assert all(q.qtype != "shape" for q in s.questions)
    assert n > 100
    assert "shape" not in cw.QTYPES and "shape" not in cw.chance_levels()
    picked = cw.sample_questions(streams[0], np.random.default_rng(0), per_type=2, qtypes=("shape",))
    assert picked and {q.qtype for q in picked} == {"shape"}


def test_heard_asks_for_the_last_sound_and_is_training_only(streams):
    """"heard" names the last sound that ended by the question (tied to an arrival or not), while it is recent."""
    n, kinds = 0, set()
    for s in streams:
        sounds = sorted(s.world.sound_events(), key=lambda e: e.start)
        for q in cw.candidates(s.world)["heard"]:
            ended = [e for e in sounds if e.end <= q.time]
            last = ended[-1]
            assert q.answer == last.sound and q.refs == (last.obj,) and q.text == "what sound played last ?"
            assert q.time - last.start <= cw.questions.HEARD_S and q.choices == cw.SOUNDS
            assert q.evidence_start <= q.frame and s.frame_time(q.evidence_start) <= last.start
            kinds.add(last.obj >= 0)
            n += 1
        assert all(q.qtype != "heard" for q in s.questions)
    assert n > 50 and kinds == {True, False}  # both sounds that announce an object and free ones are asked about
    assert "heard" in cw.TRAINING_QTYPES and "heard" not in cw.QTYPES and "heard" not in cw.chance_levels()


def test_questions_are_whitespace_words_from_the_vocabulary(streams):
    vocab = set(cw.vocabulary())
    assert set(cw.answer_vocabulary()) <= vocab
    for s in streams[:10]:
        for q in s.questions:
            assert q.text == q.text.lower() and q.text.split() == q.text.split(" ")
            assert set(q.text.split()) <= vocab and q.answer in vocab and " " not in q.answer
    assert cw.chance_levels()["exists"] == 0.5 and cw.chance_levels()["color"] == pytest.approx(1 / 6)
    assert cw.default_qtypes(cw.WorldConfig(audio=False)) == cw.VISUAL_QTYPES


def test_answers_are_balanced_over_300_seeds():
    answers = collections.defaultdict(collections.Counter)
    for seed in range(300):
        world = build_world(seed, cw.WorldConfig())
        for q in cw.sample_questions(world, np.random.default_rng(seed)):
            key = "colour" if q.qtype in ("color", "appeared") else q.qtype
            answers[key][q.answer] += 1
    yes, no = answers["exists"]["yes"], answers["exists"]["no"]
    assert abs(yes / (yes + no) - 0.5) < 0.08
    colours = answers["colour"]
    n = sum(colours.values())
    assert set(colours) == set(cw.COLOURS) and max(abs(v / n - 1 / 6) for v in colours.values()) < 0.06
    for key in ("count", "where", "small"):
        c = answers[key]
        n = sum(c.values())
        assert max(abs(v / n - 1 / len(c)) for v in c.values()) < 0.09, (key, c)


# --- pixels and sound -----------------------------------------------------------------------------------

def test_small_objects_are_small_and_large_ones_are_not(streams):
    cfg = cw.WorldConfig()
    for s in streams:
        for o in s.objects:
            boxes = s.boxes[:, o.id]
            shown = boxes[boxes[:, 0] >= 0]
            area = (shown[:, 2] - shown[:, 0]) * (shown[:, 3] - shown[:, 1])
            if o.size == "small":
                assert area.max() <= cfg.small_px ** 2  # at most 2x2 patches' worth of pixels
            else:
                full = area[area == area.max()]
                assert full.size and full[0] == cfg.large_px ** 2


def test_object_pixels_have_their_colour(streams):
    s = streams[0]
    f = len(s.frames) - 1
    for oid in _in_view(s.events, s.frame_time(f)):
        x0, y0, x1, y1 = s.boxes[f, oid]
        ref = np.array(cw.COLOURS[s.objects[oid].colour], float)
        centre = s.frames[f, (y0 + y1) // 2, (x0 + x1) // 2].astype(float)  # every shape covers its centre
        assert np.abs(centre - ref).max() < 70


def test_sound_events_stand_out_of_the_background(streams):
    for s in streams[:20]:
        sr, sounds = s.sample_rate, s.world.sound_events()
        quiet = np.ones(len(s.audio), bool)
        for e in sounds:
            quiet[max(0, int(e.start * sr) - 800):int(e.end * sr) + 800] = False
        background = float(np.mean(s.audio[quiet] ** 2))
        for e in sounds:
            window = s.audio[int(e.start * sr):int(e.end * sr)]
            assert np.mean(window ** 2) > 30 * background, (s.seed, e)
    # Some arrivals make a sound, some sounds belong to no arrival.
    kinds = collections.Counter(e.obj >= 0 for s in streams for e in s.world.sound_events())
    assert kinds[True] > 10 and kinds[False] > 10


def test_audio_off_gives_empty_track_and_no_sound_questions():
    s = cw.generate(4, cw.WorldConfig(audio=False))
    assert s.audio.size == 0 and all(q.qtype != "sound" for q in s.questions)


# --- export -------------------------------------------------------------------------------------------------

def test_arrays_round_trip(tmp_path):
    s = cw.generate(21)
    back = cw.load_arrays(cw.save_arrays(s, tmp_path / "s.npz"))
    assert np.array_equal(back.frames, s.frames) and np.array_equal(back.audio, s.audio)
    assert back.questions == s.questions and back.events == s.events and back.config == s.config
    assert np.array_equal(back.boxes, s.boxes)


@pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="gst-launch-1.0 not installed")
def test_media_round_trip(tmp_path):
    s = cw.generate(22)
    path = cw.write_media(s, tmp_path / "s.mkv")
    assert (tmp_path / "s.mkv.json").exists()
    frames, audio = cw.decode_media(path, 96, 96)
    assert frames.shape == s.frames.shape
    assert np.abs(frames.astype(int) - s.frames).mean() < 12  # VP8 is lossy but close
    assert audio.shape == s.audio.shape and np.abs(audio - s.audio).max() < 1e-3  # FLAC: 16-bit lossless


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_speech_events_are_spoken_words():
    s = cw.generate(0, cw.WorldConfig(speech=True))
    spoken = [e for e in s.world.sound_events() if e.sound in cw.SPEECH_WORDS]
    assert spoken and set(cw.SPEECH_WORDS) <= set(cw.choices("sound", s.config))
    sr = s.sample_rate
    for e in spoken:
        assert np.sqrt(np.mean(s.audio[int(e.start * sr):int(e.end * sr)] ** 2)) > 0.03


def test_evidence_clip_covers_the_question(streams):
    s = streams[3]
    for q in s.questions:
        frames, audio = s.evidence(q)
        assert len(frames) == q.frame - q.evidence_start + 1
        assert len(audio) == round((q.frame + 1 - q.evidence_start) / s.fps * s.sample_rate)
