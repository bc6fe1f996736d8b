"""Reading files so that every error names the file.

A missing file, one that is not UTF-8 (binary garbage, a file cut inside a character), or JSON that is
truncated or malformed gives one ValueError that starts with the file's path and says what is wrong; the
library's own error (OSError, UnicodeDecodeError, json.JSONDecodeError) is chained as its __cause__.
Tokenizer files, corpus files and Hugging Face config.json files are all read through here.
"""
import json
from pathlib import Path


def read_utf8_file(path):
    """The text of a UTF-8 file (a leading byte-order mark dropped). Missing, unreadable, or not UTF-8
    (binary garbage, a file cut inside a character) -> ValueError naming the file, the OSError or
    UnicodeDecodeError chained."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no such file") from err
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = data[err.start:err.start + 4]
        raise ValueError(f"{path}: not UTF-8 text: byte offset {err.start} (bytes {bad.hex(' ')}) cannot be decoded "
                         f"({err.reason}); a binary file, or a file cut inside a character?") from err
    return text.removeprefix("\ufeff")


def read_json_file(path):
    """The JSON value in a UTF-8 file. Empty, truncated or not JSON -> ValueError naming the file and where
    the JSON breaks off, the json.JSONDecodeError chained."""
    text = read_utf8_file(path)
    if not text.strip():
        raise ValueError(f"{path}: the file is empty; expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        truncated = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")
        hint = "; the text ends before the JSON does: is the file truncated?" if truncated else ""
        raise ValueError(f"{path}: not valid JSON: {err.msg} (line {err.lineno}, column {err.colno}){hint}") from err
    except RecursionError as err:
        raise ValueError(f"{path}: not valid JSON: nested too deeply to read") from err


def read_json_object(path):
    """The JSON object {...} in a UTF-8 file; any other JSON value is a ValueError naming the file."""
    value = read_json_file(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, found a {type(value).__name__}")
    return value
