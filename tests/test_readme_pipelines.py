"""Every line of the README's pipeline block runs as written (from the checkout, with bash), so the documented
gst-launch-1.0 lines cannot rot."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- pipelines: run by tests/test_readme_pipelines.py -->"


def readme_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    assert MARK in text, "the README's pipeline block marker is missing"
    block = re.search(re.escape(MARK) + r"\s*```sh\n(.*?)```", text, re.S)
    assert block, "the marker must be followed by a ```sh block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_the_block_has_gst_launch_lines():
    lines = readme_lines()
    assert sum("gst-launch-1.0" in ln for ln in lines) >= 2


@pytest.mark.skipif(not shutil.which("gst-launch-1.0"), reason="GStreamer tools are not installed")
@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "vlmedge").exists(), reason="needs the checkout's .venv")
def test_readme_pipelines_run_as_written():
    env = dict(os.environ)
    for line in readme_lines():
        res = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 0, f"{line}\nexit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        if "gst-launch-1.0" in line:
            assert "ERROR" not in res.stdout, res.stdout[-2000:]
            if " -m " in line:
                assert "vlmedge-answer" in res.stdout
        if "filesink location=" in line:
            out = Path(re.search(r"filesink location=(\S+)", line).group(1))
            assert out.stat().st_size > 1000
