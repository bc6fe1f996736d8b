"""Pictures for the lessons: masks, attention maps, positional encodings, loss curves.

Everything draws with matplotlib's Agg backend (no display needed) and saves a PNG into
the figure folder: $MINIGPT_FIGURES, else ./figures.
"""
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def figure_dir():
    """The folder PNGs are saved in ($MINIGPT_FIGURES, else ./figures), created if needed."""
    folder = Path(os.environ.get("MINIGPT_FIGURES", "figures"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, name):
    """Save fig as <figure_dir>/<name>.png, close it, and return the path."""
    path = figure_dir() / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
