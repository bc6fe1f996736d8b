"""Pictures for the lessons: masks, attention maps, positional encodings, loss curves.

Everything draws with matplotlib's Agg backend (no display needed) and saves a PNG into
the figure folder: $MINIGPT_FIGURES, else ./figures (relative to where you run: a notebook opened
in lessons/ writes lessons/figures). In a notebook the saved PNG is also shown under the cell.
"""
import os
import sys
from pathlib import Path

import matplotlib
import matplotlib.font_manager

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from minigpt.backend import to_numpy  # noqa: E402

# Token labels are often Chinese (今天天气很好): use a CJK font when one is installed, DejaVu Sans
# (the default, which has no CJK glyphs: they come out as boxes) for everything it can draw.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC")
_installed = {font.name for font in matplotlib.font_manager.fontManager.ttflist}
matplotlib.rcParams["font.sans-serif"] = list(dict.fromkeys(
    ["DejaVu Sans"] + [f for f in CJK_FONTS if f in _installed] + list(matplotlib.rcParams["font.sans-serif"])))


def figure_dir():
    """The folder PNGs are saved in ($MINIGPT_FIGURES, else ./figures), created if needed."""
    folder = Path(os.environ.get("MINIGPT_FIGURES", "figures"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, name, folder=None):
    """Save fig as <folder or figure_dir()>/<name>.png, close it, and return the path."""
    path = (figure_dir() if folder is None else Path(folder)) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    _show_inline(path)
    return path


def _show_inline(path):
    """In a notebook (an IPython kernel runs this code), show the saved PNG under the cell; elsewhere nothing."""
    if "ipykernel" not in sys.modules:
        return
    from IPython.display import Image, display
    display(Image(filename=str(path)))


def _labels(ax, axis, labels, n):
    """Put one tick label per cell along an axis ("x" or "y") when labels are given."""
    if labels is None:
        return
    labels = [str(label) for label in labels]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} {axis} labels for {n} cells")
    getattr(ax, f"set_{axis}ticks")(range(n))
    getattr(ax, f"set_{axis}ticklabels")(labels, rotation=90 if axis == "x" else 0)


def plot_mask(mask, title, name, row_labels=None, col_labels=None):
    """A boolean attention mask (T, S) as a grid: dark = may attend. Returns the PNG path."""
    mask = to_numpy(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"plot_mask: expected a boolean (T, S) mask, got {mask.dtype} {mask.shape}; "
                         f"index one sample of a batched mask (mask[b])")
    T, S = mask.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * S, 1.0 + 0.35 * T))
    ax.imshow(mask, cmap=ListedColormap(["#f4f4f4", "#2b6cb0"]), vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(np.arange(-0.5, S), minor=True)
    ax.set_yticks(np.arange(-0.5, T), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    _labels(ax, "x", col_labels, S)
    _labels(ax, "y", row_labels, T)
    ax.set_xlabel("key position j (attended to)")
    ax.set_ylabel("query position i")
    ax.set_title(title)
    ax.legend(handles=[Patch(color="#2b6cb0", label="may attend"), Patch(facecolor="#f4f4f4", edgecolor="grey", label="masked")],
              loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return save_figure(fig, name)


def plot_gqa_groups(n_head, n_kv_head, name):
    """Which kv head each query head reads: query heads on top, kv heads below, one colour per group."""
    if n_kv_head < 1 or n_head % n_kv_head:
        raise ValueError(f"plot_gqa_groups: n_head={n_head} is not a multiple of n_kv_head={n_kv_head}")
    g = n_head // n_kv_head
    kind = "MHA" if g == 1 else "MQA" if n_kv_head == 1 else "GQA"
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * n_head + 1.5), 2.8))
    for n in range(n_kv_head):
        x_kv = n * g + (g - 1) / 2                                          # centred under its group
        ax.add_patch(Rectangle((x_kv - 0.35, -0.35), 0.7, 0.7, color=colours(n % 10)))
        ax.text(x_kv, 0, f"kv{n}", ha="center", va="center", color="white", fontsize=8)
        for h in range(n * g, (n + 1) * g):
            ax.add_patch(Rectangle((h - 0.35, 1.65), 0.7, 0.7, color=colours(n % 10), alpha=0.6))
            ax.text(h, 2, f"q{h}", ha="center", va="center", fontsize=8)
            ax.plot([h, x_kv], [1.65, 0.35], color=colours(n % 10), linewidth=1)
    ax.set_xlim(-0.8, n_head - 0.2)
    ax.set_ylim(-0.7, 2.7)
    ax.set_yticks([0, 2])
    ax.set_yticklabels(["key/value heads", "query heads"])
    ax.set_xticks([])
    ax.set_xlabel(f"head h reads kv head h // {g}")
    ax.set_title(f"{kind}: {n_head} query heads, {n_kv_head} kv heads (groups of {g})")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return save_figure(fig, name)


def plot_attention(probs, tokens, name, title="attention weights"):
    """An attention map (T, S) with the tokens on both axes (queries are the last T tokens)."""
    probs = to_numpy(probs)
    if probs.ndim != 2:
        raise ValueError(f"plot_attention: expected probs of shape (T, S), got {probs.shape}; "
                         f"pick one sample and head, probs[b, h]")
    T, S = probs.shape
    tokens = [str(t) for t in tokens]
    if len(tokens) != S:
        raise ValueError(f"plot_attention: {len(tokens)} tokens for S={S} keys")
    fig, ax = plt.subplots(figsize=(2.0 + 0.4 * S, 1.2 + 0.4 * T))
    image = ax.imshow(probs, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    _labels(ax, "x", tokens, S)
    _labels(ax, "y", tokens[S - T:], T)
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="attention probability")
    return save_figure(fig, name)


def plot_positional_encoding(pe, name, title="positional encoding", channels=None):
    """A position x channel table (T, C) as a heatmap, beside a few channels as curves.
    channels: which columns to draw as curves; default four spread from the fastest (0) to the slowest."""
    pe = to_numpy(pe)
    if pe.ndim != 2:
        raise ValueError(f"plot_positional_encoding: expected (T, C), got {pe.shape}")
    T, C = pe.shape
    if channels is None:
        channels = sorted(set(np.linspace(0, C - 1, num=min(C, 4)).astype(int).tolist()))
    bad = [c for c in channels if not 0 <= c < C]
    if bad:
        raise ValueError(f"plot_positional_encoding: channels {bad} out of range, expected 0 <= channel < C = {C}")
    fig, (ax_map, ax_lines) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    limit = float(np.abs(pe).max()) or 1.0
    image = ax_map.imshow(pe, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax_map.set_xlabel("channel")
    ax_map.set_ylabel("position")
    ax_map.set_title(title)
    fig.colorbar(image, ax=ax_map, label="value")
    for c in channels:
        ax_lines.plot(np.arange(T), pe[:, c], label=f"channel {c}")
    ax_lines.set_xlabel("position")
    ax_lines.set_ylabel("value")
    ax_lines.set_title("some channels along the positions")
    ax_lines.legend(fontsize="small", framealpha=0.9)
    return save_figure(fig, name)


def plot_curves(curves, name, xlabel="step", ylabel="loss", title=None, folder=None):
    """Line plot of {label: values} (x = 0, 1, ...) or {label: (xs, values)}, one line per label,
    saved in folder (default: figure_dir())."""
    if not curves:
        raise ValueError("plot_curves: no curves to plot")
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        if isinstance(values, tuple) and len(values) == 2:
            xs, ys = to_numpy(values[0]), to_numpy(values[1])
        else:
            ys = to_numpy(values)
            xs = np.arange(len(ys))
        ax.plot(xs, ys, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title if title is not None else f"{ylabel} against {xlabel}")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, name, folder)
