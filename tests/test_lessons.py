"""Every lesson runs as a script (fast mode) and ends by printing its OK line."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_and_checks(path, tmp_path):
    number = re.match(r"(\d\d)_", path.name).group(1)
    env = dict(os.environ, MINIGPT_FAST="1", MPLBACKEND="Agg", MINIGPT_FIGURES=str(tmp_path))
    result = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert f"lesson {number} OK" in result.stdout
