"""Every lesson runs as a script (fast mode) and ends by printing its OK line; every lesson file is one the
README's lesson map names, and is a jupytext percent script with the house structure."""
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext  # the test extra installs it
import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
IDS = [p.stem for p in LESSONS]


def lesson_number(path):
    return re.match(r"(\d\d)_", path.name).group(1)


def lesson_map():
    """{NN: topic} from the lesson table of README.md (the map every lesson file must belong to)."""
    rows = re.findall(r"^\| (\d\d) \| ([^|]+?) \|", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)
    return dict(rows)


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_lesson_runs_and_checks(path, tmp_path):
    number = lesson_number(path)
    # one BLAS thread: the lessons' matrices are small, and on a busy machine two BLAS threads waiting for each
    # other made a lesson ten times slower (the numbers are the same either way)
    env = dict(os.environ, MINIGPT_FAST="1", MPLBACKEND="Agg", MINIGPT_FIGURES=str(tmp_path), OPENBLAS_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert result.stdout.rstrip().splitlines()[-1] == f"lesson {number} OK"


def test_lessons_map_one_file_per_number():
    """Each lesson file's number is a row of the lesson map, no number has two files, and the lessons that
    exist start at 00 with no gap in the first ones written (00..08)."""
    the_map = lesson_map()
    assert len(the_map) >= 27, "README.md's lesson table was not found or is incomplete"
    numbers = [lesson_number(p) for p in LESSONS]
    assert len(numbers) == len(set(numbers)), f"two lesson files share a number: {numbers}"
    assert set(numbers) <= set(the_map), f"lesson files not in the map: {sorted(set(numbers) - set(the_map))}"
    assert {f"{n:02d}" for n in range(9)} <= set(numbers), f"missing early lessons: {numbers}"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_lesson_is_a_jupytext_percent_script(path):
    """Opens as a notebook: percent format, a markdown title with the right number, markdown and code cells,
    Summary / Exercises (2 to 4) / Check sections, a FAST switch, and a last code cell that asserts and prints
    the OK line."""
    number = lesson_number(path)
    text = path.read_text(encoding="utf-8")
    notebook = jupytext.reads(text, fmt="py:percent")
    assert notebook.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    cells = notebook.cells
    kinds = [c.cell_type for c in cells]
    assert kinds.count("markdown") >= 5 and kinds.count("code") >= 3, kinds
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# Lesson {number} — "), cells[0].source[:60]
    markdown = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    for section in ("**You will learn**", "## Summary", "## Exercises", "## Check"):
        assert section in markdown, f"{path.name}: no {section!r}"
    exercises = markdown.split("## Exercises", 1)[1].split("## Check", 1)[0]
    assert 2 <= len(re.findall(r"^\d\. ", exercises, re.M)) <= 4, f"{path.name}: want 2-4 numbered exercises"
    assert 'FAST = os.environ.get("MINIGPT_FAST") == "1"' in text
    assert cells[-2].cell_type == "markdown" and cells[-2].source.strip() == "## Check"
    assert cells[-1].cell_type == "code" and cells[-1].source.rstrip().endswith(f'print("lesson {number} OK")')
    assert "assert " in cells[-1].source
