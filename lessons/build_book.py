"""Build the book: every lesson run as a notebook, one static HTML page per lesson, and an index page.

    pip install -e ".[book]" && python lessons/build_book.py
    # then open book/index.html in a browser (a plain file: no server needed)

Options: --fast sets MINIGPT_FAST=1 (the quick run the tests use), --only 00,04 builds a subset, --out DIR writes
somewhere else than book/, --timeout S is the most one cell may take (default 900 s).

For each lesson (lessons/NN_topic.py, in number order):
1. jupytext reads the percent script as a notebook;
2. nbclient runs it in a fresh python3 kernel of this very interpreter (so it imports the minigpt installed here),
   from the lesson's working folder <out>/lessons/NN_topic/ with MPLBACKEND=Agg and
   MINIGPT_FIGURES=<out>/lessons/NN_topic/figures: the README's ./figures rule, seen from that folder. minigpt.viz
   shows each saved PNG under its cell, and the executed notebook is kept there too (NN_topic.ipynb);
3. nbconvert's HTMLExporter (its JupyterLab template, without input/output prompts) writes <out>/NN_topic.html:
   the prose, the code, the printed output and the figures, embedded in the page as base64 PNGs, with a navigation
   bar (previous / index / next) at the top and at the bottom.
Then <out>/index.html: README.md's lesson map, each lesson built linked to its page, the others marked. With
--only, the pages' previous / next links and the index's links join the lessons of that build only.

It prints each lesson's run time and the total. A cell that raises (or runs past --timeout) does not stop the build:
that lesson's page is still written, with the traceback and a red banner naming the file and line
("lessons/09_training_loop.py line 510 (notebook cell 31): AssertionError"), the other lessons are built, and the
script ends by naming every failed lesson that way and exits with status 1.

Maths: the lessons write TeX between $...$. The pages load nbconvert's default MathJax from its CDN, so the maths
renders when the browser is online and shows as its TeX source when it is not. Everything else (styles, code
colours, figures) is inside each page; nothing else is fetched.
"""
import argparse
import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:  # the book extra
    import jinja2
    import jupytext
    import nbformat
    import zmq
    from ipykernel.kernelspec import get_kernel_dict  # ipykernel's own spec: argv starts with sys.executable
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter
except ModuleNotFoundError as missing:
    raise SystemExit(f'build_book: {missing.name} is not installed; pip install -e ".[book]" first') from None

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"
BOOK_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style type="text/css">
  .book-nav { display: flex; justify-content: space-between; gap: 1em; padding: 0.6em 1em; margin: 0 0 1em 0;
              background: #f3f6fa; border: 1px solid #d8e0ea; border-radius: 6px; font-family: sans-serif; }
  .book-nav a { color: #2b6cb0; text-decoration: none; }
  .book-nav a:hover { text-decoration: underline; }
  .book-nav span { min-width: 25%; }
  .book-nav .next { text-align: right; }
  .book-error { padding: 0.6em 1em; margin: 0 0 1em 0; background: #fde8e8; border: 1px solid #e0a0a0;
                border-radius: 6px; font-family: sans-serif; }
  main { max-width: 1100px; margin: 0 auto; }
</style>{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}{{ resources.book_header }}{%- endblock body_header -%}
{%- block body_footer -%}{{ resources.book_footer }}{{ super() }}{%- endblock body_footer -%}
"""


class Lesson:
    """One lessons/NN_topic.py: its number, file name stem and title (the first markdown heading)."""

    def __init__(self, path):
        self.path = path
        self.number = path.name[:2]
        self.stem = path.stem
        self.page = f"{self.stem}.html"
        heading = re.search(r"^# # (.+)$", path.read_text(encoding="utf-8"), re.M)
        self.title = heading.group(1).strip() if heading else self.stem
        self.seconds = None
        self.error = None  # a sentence naming the failing cell, when the lesson did not run to its end


def find_lessons(only=None):
    """The lessons to build, in number order: all of lessons/NN_*.py, or those whose NN is in only."""
    lessons = [Lesson(p) for p in sorted(LESSONS.glob("[0-9][0-9]_*.py"))]
    if only is None:
        return lessons
    unknown = sorted(set(only) - {lesson.number for lesson in lessons})
    if unknown:
        raise SystemExit(f"build_book: no lesson file for {', '.join(unknown)} in {LESSONS}")
    return [lesson for lesson in lessons if lesson.number in only]


def lesson_map():
    """[(NN, topic, what you build...)] from the lesson table of README.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^\| (\d\d) \| ([^|]+?) \| (.+?) \|\s*$", readme, re.M)


def kernel_manager(folder):
    """A kernel manager for a python3 kernel of this interpreter (sys.executable), whatever kernels the user has
    installed elsewhere; its kernel spec is written into folder."""
    spec = Path(folder) / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps(get_kernel_dict()))
    options = {}
    if "transport_encryption" in AsyncKernelManager.class_trait_names() and zmq.has("curve"):
        options["transport_encryption"] = "auto"  # encrypted sockets where the kernel supports it: no warning
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(folder)]),
                              **options)


def failing_cell(nb):
    """Index of the cell that stopped the run: the first with an error output, or else the first code cell that
    never finished (a timeout or a dead kernel); None when every cell ran."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():  # nbclient skips empty cells
            continue
        if any(out.output_type == "error" for out in cell.outputs) or cell.execution_count is None:
            return index
    return None


def describe_failure(lesson, nb, exc, timeout):
    """'lessons/09_x.py line 510 (notebook cell 31): AssertionError: ...': where the run stopped, at the line the
    traceback points at (else the cell's first line)."""
    index = failing_cell(nb)
    errors = [out for out in nb.cells[index].outputs if out.output_type == "error"] if index is not None else []
    if isinstance(exc, TimeoutError):
        reason = f"ran past the {timeout} s --timeout"
    elif errors:
        reason = ": ".join([errors[0].ename, *errors[0].evalue.splitlines()[:1]])
    else:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if index is None:
        return f"lessons/{lesson.path.name}: {reason}"
    text, source = lesson.path.read_text(encoding="utf-8"), nb.cells[index].source
    start = text.find(source) if source else -1
    line = text.count("\n", 0, start) + (cell_line(errors[0]) if errors else 1)
    return f"lessons/{lesson.path.name} {f'line {line} ' if start >= 0 else ''}(notebook cell {index + 1}): {reason}"


def cell_line(error):
    """The line of the failing cell that an error output points at (IPython's 'Cell In[5], line 3'), else 1."""
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.traceback))  # without the ANSI colours
    lines = re.findall(r"Cell In\[\d+\], line (\d+)", traceback)
    return int(lines[0]) if lines else 1


def run_lesson(lesson, out, env, timeout, kernels):
    """Execute the lesson as a notebook in its working folder; return the executed notebook (also saved there).
    Sets lesson.seconds, and lesson.error when a cell failed."""
    workdir = out / "lessons" / lesson.stem
    shutil.rmtree(workdir, ignore_errors=True)  # no figures left from an earlier build
    (workdir / "figures").mkdir(parents=True)
    env = dict(env, MINIGPT_FIGURES=str(workdir / "figures"))
    nb = jupytext.read(lesson.path)
    nb.metadata["title"] = lesson.title
    client = NotebookClient(nb, km=kernel_manager(kernels), timeout=timeout)
    start = time.perf_counter()
    try:
        client.execute(cleanup_kc=True, cwd=str(workdir), env=env)
    except Exception as exc:  # a cell raised, ran too long, or the kernel died: keep what ran, name the cell
        lesson.error = describe_failure(lesson, nb, exc, timeout)
    lesson.seconds = time.perf_counter() - start
    nbformat.write(nb, workdir / f"{lesson.stem}.ipynb")
    return nb


def link(lesson, rel, text):
    """An <a rel=...> to the lesson's page."""
    return f'<a rel="{rel}" href="{html.escape(lesson.page)}">{text}</a>'


def nav_bar(lessons, i):
    """Previous / index / next links for lessons[i], the neighbours being the lessons of this build."""
    prev = link(lessons[i - 1], "prev", f"&larr; {html.escape(lessons[i - 1].title)}") if i > 0 else ""
    nxt = link(lessons[i + 1], "next", f"{html.escape(lessons[i + 1].title)} &rarr;") if i + 1 < len(lessons) else ""
    notebook = f'<a href="lessons/{lessons[i].stem}/{lessons[i].stem}.ipynb">notebook</a>'
    return (f'<nav class="book-nav"><span class="prev">{prev}</span>'
            f'<span class="up"><a rel="index" href="index.html">Index</a> &middot; {notebook}</span>'
            f'<span class="next">{nxt}</span></nav>')


def write_page(nb, lessons, i, out):
    """<out>/NN_topic.html: the executed notebook through nbconvert, between two navigation bars."""
    lesson = lessons[i]
    exporter = HTMLExporter(template_name="lab", template_file="book.html.j2", embed_images=True,
                            exclude_input_prompt=True, exclude_output_prompt=True,
                            extra_loaders=[jinja2.DictLoader({"book.html.j2": BOOK_TEMPLATE})])
    banner = (f'<div class="book-error"><b>This lesson stopped with an error</b>: {html.escape(lesson.error)}</div>'
              if lesson.error else "")
    nav = nav_bar(lessons, i)
    body, _ = exporter.from_notebook_node(nb, resources={"book_header": nav + banner, "book_footer": nav})
    (out / lesson.page).write_text(body, encoding="utf-8")


def inline_markdown(text):
    """The README table's cell text as HTML: escaped, with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def write_index(lessons, out, fast):
    """<out>/index.html: the lesson map, each lesson of this build linked to its page."""
    built = {lesson.number: lesson for lesson in lessons}
    written = {p.name[:2] for p in LESSONS.glob("[0-9][0-9]_*.py")}
    rows = []
    for number, topic, what in lesson_map():
        lesson = built.get(number)
        if lesson is None:
            state = "not in this build" if number in written else "not written yet"
            name = html.escape(topic)
        else:
            state = f"error: {html.escape(lesson.error)}" if lesson.error else f"built in {lesson.seconds:.1f} s"
            name = f'<a href="{html.escape(lesson.page)}">{html.escape(lesson.title)}</a>'
        rows.append(f'<tr class="{"built" if lesson else "absent"}"><td>{number}</td><td>{name}</td>'
                    f"<td>{inline_markdown(what)}</td><td>{state}</td></tr>")
    mode = "fast mode (MINIGPT_FAST=1)" if fast else "full mode"
    (out / "index.html").write_text(INDEX.format(rows="\n".join(rows), mode=mode), encoding="utf-8")


INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8" />
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>minigpt — the book</title>
<style type="text/css">
  body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222;
          line-height: 1.45; }}
  table {{ border-collapse: collapse; width: 100%; }}
  th, td {{ text-align: left; vertical-align: top; padding: 0.35em 0.6em; border-bottom: 1px solid #e2e6ea; }}
  th {{ background: #f3f6fa; }}
  tr.absent {{ color: #888; }}
  td:last-child {{ white-space: nowrap; font-size: 0.9em; color: #666; }}
  a {{ color: #2b6cb0; }}
  code {{ background: #f3f3f3; padding: 0 0.2em; border-radius: 3px; }}
</style>
</head>
<body>
<h1>minigpt — the book</h1>
<p>Decoder-only language models built from scratch in NumPy, every backward pass by hand. Each page is one lesson
run as a notebook: its prose, its code, what the code printed and the figures it drew, ending with the Check cell
that prints <code>lesson NN OK</code>. This build ran in {mode}; rebuild with
<code>python lessons/build_book.py</code>.</p>
<table>
<tr><th>NN</th><th>lesson</th><th>what you build, see and check</th><th>page</th></tr>
{rows}
</table>
</body>
</html>
"""


def kernel_env(fast):
    """The lessons' environment: this one, with matplotlib's file backend, and MINIGPT_FAST=1 for --fast."""
    env = dict(os.environ, MPLBACKEND="Agg")
    if fast:
        env["MINIGPT_FAST"] = "1"
    # transformers (imported by lessons 05, 26, 27) imports tqdm.auto, which warns in a kernel without ipywidgets
    # ("IProgress not found"): a note about this build's kernel, not about the lesson, so it stays off the pages.
    env["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:IProgress not found"]))
    return env


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Run every lesson as a notebook and write a static HTML book.")
    parser.add_argument("--fast", action="store_true", help="set MINIGPT_FAST=1: smaller runs, as in the tests")
    parser.add_argument("--only", help="comma-separated lesson numbers to build, e.g. 00,04 (default: all)")
    parser.add_argument("--out", default=str(ROOT / "book"), help="output folder (default: book/ in the repository)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one cell may run (default: 900)")
    args = parser.parse_args(argv)
    if args.only is not None:
        args.only = [f"{int(n):02d}" if n.strip().isdigit() else n.strip() for n in args.only.split(",") if n.strip()]
    return args


def main(argv=None):
    """Build the pages one lesson at a time, then the index; 0 when every lesson ran to its end, else 1."""
    args = parse_args(argv)
    lessons = find_lessons(args.only)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = kernel_env(args.fast)
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minigpt-book-kernels-") as kernels:
        for i, lesson in enumerate(lessons):
            print(f"{lesson.stem:<36}", end=" ", flush=True)
            write_page(run_lesson(lesson, out, env, args.timeout, kernels), lessons, i, out)
            print(f"{lesson.seconds:6.1f} s  {'ERROR ' + lesson.error if lesson.error else 'ok'}", flush=True)
    write_index(lessons, out, env.get("MINIGPT_FAST") == "1")
    failed = [lesson for lesson in lessons if lesson.error]
    print(f"{len(lessons)} lesson{'s' * (len(lessons) != 1)} in {time.perf_counter() - total:.1f} s; "
          f"open {out / 'index.html'}")
    if failed:
        print(f"{len(failed)} lesson(s) failed:", *(f"  {lesson.error}" for lesson in failed),
              sep="\n", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
