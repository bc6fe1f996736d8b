import os
import subprocess
import sys

import minigpt

def run_minigpt(*args, cwd=None, module="minigpt"):
    """`python -m minigpt ARGS` in cwd, with the environment the install gives (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_version_via_python_m():
    result = run_minigpt("--version")
    assert result.returncode == 0
    assert minigpt.__version__ in result.stdout


def test_help_via_python_m():
    result = run_minigpt("--help")
    assert result.returncode == 0
    assert "usage: minigpt" in result.stdout


def test_python_m_from_an_unrelated_folder(tmp_path):
    result = run_minigpt("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"minigpt {minigpt.__version__}"


def test_install_has_minigpt_kernels_and_no_top_level_kernels(tmp_path):
    """DESIGN.md: kernels/ is installed as minigpt.kernels, never as a top-level package named kernels."""
    code = ("import importlib.util, minigpt.kernels; "
            "print(importlib.util.find_spec('kernels') is None, minigpt.kernels.__name__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "minigpt.kernels"]


def test_python_m_beside_a_folder_named_minigpt(tmp_path):
    """The parent folder of a clone named minigpt: ./minigpt has no __init__.py (it holds setup.py, minigpt/,
    ...). With an editable install Python's path search takes it for the package before the install's import
    hook runs (pypa/setuptools#3557); __main__ forgets it, as the `minigpt` command does."""
    (tmp_path / "minigpt" / "minigpt").mkdir(parents=True)
    (tmp_path / "minigpt" / "setup.py").write_text("")
    result = run_minigpt("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"minigpt {minigpt.__version__}"
    result = run_minigpt("--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: minigpt" in result.stdout, result.stderr
