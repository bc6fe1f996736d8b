import subprocess
import sys

import minigpt


def test_version_via_python_m():
    result = subprocess.run([sys.executable, "-m", "minigpt", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert minigpt.__version__ in result.stdout


def test_help_via_python_m():
    result = subprocess.run([sys.executable, "-m", "minigpt", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "usage: minigpt" in result.stdout
