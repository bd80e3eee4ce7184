"""Loading local checkpoints: round trip through the normal transformers files, and clear errors."""
import json
import os
import shutil

import pytest
import torch

from conftest import make_frames
from vlmedge.errors import ModelFileError, UnknownNameError
from vlmedge.models import from_pretrained, tiny
from vlmedge.runtime import StreamingSession


def save(adapter, path):
    adapter.model.save_pretrained(path)
    adapter.tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen2_5_omni"])
def test_save_and_load_round_trip_gives_the_same_logits(tiny_adapters, tmp_path, family):
    a = tiny_adapters[family]
    kwargs = {} if family == "llava_onevision" else {"frame_size": a.frame_size}
    b = from_pretrained(str(save(a, tmp_path / family)), **kwargs)
    assert type(b) is type(a)
    frames = make_frames(2)
    out = []
    for adapter in (a, b):
        s = StreamingSession(adapter, "none", keep_logits=True)
        for i, f in enumerate(frames):
            s.push_frame(f, time_s=i)
        out.append(s.ask("what color is the square ?", max_new_tokens=1).logits[0])
    torch.testing.assert_close(out[0], out[1])


def test_missing_and_mismatched_files_are_named(tiny_adapters, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        from_pretrained(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="config.json is missing"):
        from_pretrained(str(empty))

    good = save(tiny_adapters["llava_onevision"], tmp_path / "good")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(good, no_weights)
    os.remove(no_weights / "model.safetensors")
    with pytest.raises(ModelFileError, match="no weights"):
        from_pretrained(str(no_weights))

    no_tok = tmp_path / "no_tok"
    shutil.copytree(good, no_tok)
    os.remove(no_tok / "tokenizer.json")
    with pytest.raises(ModelFileError, match="no tokenizer"):
        from_pretrained(str(no_tok))

    mismatched = tmp_path / "mismatched"
    shutil.copytree(good, mismatched)
    cfg = json.loads((mismatched / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 96
    (mismatched / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="do not match|do not belong"):
        from_pretrained(str(mismatched))

    other = tmp_path / "other"
    shutil.copytree(good, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "bert"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnknownNameError, match="not supported"):
        from_pretrained(str(other))


def test_unknown_family_is_a_clear_error():
    with pytest.raises(UnknownNameError, match="supported: llava_onevision"):
        tiny("llava_next")


def test_adapter_classmethods(tiny_adapters, tmp_path):
    from vlmedge.models import Adapter
    from vlmedge.models.qwen2_5_vl import Qwen25VLAdapter

    a = Adapter.tiny("qwen2_5_vl", seed=1)
    assert isinstance(a, Qwen25VLAdapter)
    path = save(tiny_adapters["llava_onevision"], tmp_path / "llava")
    assert Adapter.from_pretrained(str(path)).family == "llava_onevision"
    with pytest.raises(ModelFileError, match="not qwen2_5_vl"):
        Qwen25VLAdapter.from_pretrained(str(path))
