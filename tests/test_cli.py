"""The installed console script, run as a user would, from another directory."""
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("mimic-ils")


def run(*args, cwd):
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed in this environment")
def test_synth_then_run_from_any_directory(tmp_path):
    synth = run("synth", "--studies", "4", "--out", "corpus", "--seed", "1", cwd=tmp_path)
    assert synth.returncode == 0, synth.stderr
    result = run("run", "--input", "corpus", "--output", "out", "--config", "classical", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "contract check: passed" in result.stdout and (tmp_path / "out" / "manifest.json").is_file()


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed in this environment")
@pytest.mark.parametrize("args, needle", [
    (("run", "--input", "nowhere", "--output", "out"), "input folder not found"),
    (("run", "--input", ".", "--output", "out", "--config", "nonesuch"), "unknown config 'nonesuch'"),
    (("anatomy", "--images", ".", "--output", "out"), "no .png/.jpg images"),
])
def test_user_errors_are_one_line(tmp_path, args, needle):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
