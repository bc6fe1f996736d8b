"""The library stays readable: short functions (DESIGN: "short functions"), so a learner can hold each one in view."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 50


def test_no_function_longer_than_50_lines():
    long = []
    for path in sorted([*(ROOT / "minigpt").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() has {lines} lines")
    assert not long, "functions longer than 50 lines:\n" + "\n".join(long)
