"""The book: lessons/build_book.py runs lessons as notebooks and writes one HTML page each plus an index. Two short
lessons (00, and 04 which draws figures) are built in fast mode; the pages must carry their titles, the figures
inline, the OK line and the links between them. Needs the `book` extra (nbclient, nbconvert, ipykernel)."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("nbclient", "nbconvert", "ipykernel", "jupytext"):
    pytest.importorskip(_module, reason=f"{_module} is not installed: the book needs pip install -e '.[book,test]'")

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "lessons" / "build_book.py"
PAGES = {"00": "00_setup_and_backend", "04": "04_causal_self_attention"}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """Build lessons 00 and 04 once (fast mode) into a temporary folder; return (folder, the builder's output)."""
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run([sys.executable, str(BUILDER), "--fast", "--only", "00,04", "--out", str(out)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"build_book failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return out, result.stdout


def page(out, number):
    return (out / f"{PAGES[number]}.html").read_text(encoding="utf-8")


def printed(text):
    """What the page shows as the cells' printed output (not their code)."""
    return re.findall(r'data-mime-type="text/plain"[^>]*>\s*<pre>(.*?)</pre>', text, re.S)


def test_book_builds_the_pages_it_was_asked_for(book):
    out, stdout = book
    assert sorted(p.name for p in out.glob("*.html")) == ["00_setup_and_backend.html", "04_causal_self_attention.html",
                                                           "index.html"]
    for stem in PAGES.values():
        assert re.search(rf"^{stem}\s+\d+\.\d s  ok$", stdout, re.M), stdout
    assert re.search(r"^2 lessons in \d+\.\d s", stdout, re.M), stdout


@pytest.mark.parametrize("number", sorted(PAGES))
def test_book_page_has_title_and_ok_line(book, number):
    out, _ = book
    text = page(out, number)
    assert re.search(rf"<title>Lesson {number} — [^<]+</title>", text), text[:2000]
    assert printed(text) and printed(text)[-1].strip().endswith(f"lesson {number} OK"), printed(text)[-1:]
    assert 'class="book-error"' not in text


def test_book_page_shows_figures_inline(book):
    """Lesson 04 saves two PNGs with minigpt.viz; both are embedded in its page, not linked as files."""
    out, _ = book
    text = page(out, "04")
    saved = sorted((out / "lessons" / PAGES["04"] / "figures").glob("*.png"))
    assert len(saved) >= 2, saved
    inline = re.findall(r'<img[^>]*src="data:image/png;base64,', text)
    assert len(inline) >= len(saved), f"{len(inline)} inline images for {len(saved)} saved figures"
    assert not re.search(r'<img[^>]*src="[^"]*\.png"', text), "a figure is linked as a file, not embedded"


def test_book_pages_link_neighbours_and_index(book):
    out, _ = book
    first, second = page(out, "00"), page(out, "04")
    assert re.search(rf'<a[^>]*href="{PAGES["04"]}\.html"[^>]*rel="next"|rel="next"[^>]*href="{PAGES["04"]}\.html"',
                     first)
    assert re.search(rf'<a[^>]*href="{PAGES["00"]}\.html"[^>]*rel="prev"|rel="prev"[^>]*href="{PAGES["00"]}\.html"',
                     second)
    assert 'rel="prev"' not in first and 'rel="next"' not in second  # the ends of this two-page book
    for text in (first, second):
        assert 'href="index.html"' in text


def test_book_index_maps_every_lesson(book):
    """The index has one row per lesson of README.md's map: the built ones linked, the others marked."""
    out, _ = book
    index = (out / "index.html").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    numbers = re.findall(r"^\| (\d\d) \| [^|]+? \|", readme, re.M)
    rows = re.findall(r"<tr class=\"(built|absent)\"><td>(\d\d)</td>", index)
    assert [n for _, n in rows] == numbers
    assert {n for kind, n in rows if kind == "built"} == set(PAGES)
    for stem in PAGES.values():
        assert f'href="{stem}.html"' in index
    written = {p.name[:2] for p in (ROOT / "lessons").glob("[0-9][0-9]_*.py")}
    assert ("not in this build" in index) == bool(written - set(PAGES))
    assert ("not written yet" in index) == bool(set(numbers) - written)


def test_book_names_the_failing_cell(tmp_path, monkeypatch, capsys):
    """A lesson whose cell raises still gets its page (traceback and a red banner); the build exits 1 naming the
    lesson file, the line that raised and the error."""
    spec = importlib.util.spec_from_file_location("build_book", BUILDER)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    (lessons / "00_broken.py").write_text('# %% [markdown]\n# # Lesson 00 — Broken\n\n# %%\nprint("before")\n\n'
                                          '# %%\nwidth = -3\nraise ValueError(f"width={width} must be positive")\n'
                                          '\n# %%\nprint("lesson 00 OK")\n', encoding="utf-8")
    monkeypatch.setattr(builder, "LESSONS", lessons)
    assert builder.main(["--out", str(tmp_path / "book")]) == 1
    message = "lessons/00_broken.py line 9 (notebook cell 3): ValueError: width=-3 must be positive"
    assert message in capsys.readouterr().err
    text = (tmp_path / "book" / "00_broken.html").read_text(encoding="utf-8")
    assert 'class="book-error"' in text and "ValueError" in text
    assert any("before" in out for out in printed(text))
    assert not any("lesson 00 OK" in out for out in printed(text))
