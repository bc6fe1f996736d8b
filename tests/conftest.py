import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _figures_in_tmp(tmp_path, monkeypatch):
    """Plots made by tests land in a temporary folder, never in the work tree."""
    monkeypatch.setenv("MINIGPT_FIGURES", str(tmp_path / "figures"))
