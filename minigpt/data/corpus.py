"""Text to train on: a built-in corpus every machine already has, or your own UTF-8 files.

The built-in corpus is the English documentation that ships inside CPython itself
(`pydoc_data.topics`: the text `help("assert")` prints, ~465 KB over 79 topics), so lessons
and tests never need a download. Topics are joined in sorted order, so the text is the same
on every run of the same Python version.
"""
from pathlib import Path

from minigpt.files import read_utf8_file

BUILTIN = "builtin"


def builtin_corpus():
    """CPython's English documentation topics, sorted by name and joined by blank lines (~465 KB)."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[name].strip() for name in sorted(topics)) + "\n"


def corpus_files(folder):
    """Every file under folder (recursively), hidden ones skipped, sorted by relative path."""
    folder = Path(folder)
    files = [p for p in folder.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def load_corpus(source=BUILTIN):
    """The training text as one str.

    source: "builtin" (CPython's documentation topics), a UTF-8 text file, or a folder whose files
    (recursively, hidden ones skipped, sorted by relative path) are read and joined by newlines.
    Errors: a missing path -> FileNotFoundError; an empty source string, a file that is not UTF-8
    (naming the file and byte offset), a corpus with no text -> ValueError.
    """
    if source == BUILTIN:
        return builtin_corpus()
    if isinstance(source, str) and not source.strip():
        raise ValueError(f"corpus source {source!r} is empty: give {BUILTIN!r}, a UTF-8 text file or a folder "
                         "(an empty path would read the current folder)")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"corpus path {str(path)!r} does not exist "
                                f"(give a UTF-8 text file, a folder of them, or {BUILTIN!r})")
    if path.is_dir():
        files = corpus_files(path)
        if not files:
            raise ValueError(f"corpus folder {str(path)!r} has no files")
        text = "\n".join(read_utf8_file(f) for f in files)
    else:
        text = read_utf8_file(path)
    if not text.strip():
        raise ValueError(f"corpus {str(path)!r} is empty: no text to train on")
    return text
