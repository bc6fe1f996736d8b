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
from matplotlib.lines import Line2D  # noqa: E402
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
    ipython = sys.modules.get("IPython")                                    # imported by any notebook kernel
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is None:                              # plain Python, or IPython in a terminal
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


def plot_mask(mask, title, name, row_labels=None, col_labels=None, boundary=None, boundary_label=None):
    """A boolean attention mask (T, S) as a grid: dark = may attend. Returns the PNG path.
    boundary: an index b (0 < b < S) where two parts of the sequence meet (GLM's sep: Part A | Part B); a red line
    is drawn between keys b-1 and b and, when b < T, between queries b-1 and b. boundary_label names it in the legend."""
    mask = to_numpy(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"plot_mask: expected a boolean (T, S) mask, got {mask.dtype} {mask.shape}; "
                         f"index one sample of a batched mask (mask[b])")
    T, S = mask.shape
    if boundary is not None and not 0 < boundary < S:
        raise ValueError(f"plot_mask: boundary={boundary} is not between two keys, expected 0 < boundary < S = {S}")
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
    handles = [Patch(color="#2b6cb0", label="may attend"), Patch(facecolor="#f4f4f4", edgecolor="grey", label="masked")]
    if boundary is not None:
        ax.axvline(boundary - 0.5, color="crimson", linewidth=2.5)
        if boundary < T:
            ax.axhline(boundary - 0.5, color="crimson", linewidth=2.5)
        handles.append(Line2D([], [], color="crimson", linewidth=2.5, label=boundary_label or f"boundary at {boundary}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return save_figure(fig, name)


def plot_gqa_groups(n_head, n_kv_head, name, rows=1):
    """Which kv head each query head reads: query heads on top, kv heads below, one colour per group.
    rows: with rows > 1 each group's query heads are stacked in that many rows inside a box above its kv head,
    which keeps many heads (32 query heads, 2 kv heads) at a readable size instead of one very wide strip."""
    if n_kv_head < 1 or n_head % n_kv_head:
        raise ValueError(f"plot_gqa_groups: n_head={n_head} is not a multiple of n_kv_head={n_kv_head}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"plot_gqa_groups: rows={rows!r}, expected an integer >= 1")
    g = n_head // n_kv_head
    kind = "MHA" if g == 1 else "MQA" if n_kv_head == 1 else "GQA"
    colours = plt.get_cmap("tab10")
    if rows > 1:
        return _plot_gqa_groups_stacked(n_head, n_kv_head, g, kind, colours, min(rows, g), name)
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
    return _finish_gqa_plot(fig, ax, 2, n_head, n_kv_head, g, kind, name)


def _plot_gqa_groups_stacked(n_head, n_kv_head, g, kind, colours, rows, name):
    """plot_gqa_groups with each group's g query heads in `rows` rows, boxed, one line from the box to its kv head."""
    cols = -(-g // rows)                                                    # heads per row in a group
    width = cols + 1.0                                                      # a group's box and the gap after it
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * width * n_kv_head + 2.5), 0.7 * (rows + 2.5) + 0.8))
    top = 1.6 + rows                                                        # y of the top row of query heads
    for n in range(n_kv_head):
        left = n * width
        colour = colours(n % 10)
        ax.add_patch(Rectangle((left - 0.5, 1.45), cols, rows + 0.1, facecolor=colour, alpha=0.12,
                               edgecolor=colour, linewidth=1.2))
        for k in range(g):
            h = n * g + k
            x, y = left + k % cols, top - 0.5 - k // cols
            ax.add_patch(Rectangle((x - 0.4, y - 0.38), 0.8, 0.76, color=colour, alpha=0.6))
            ax.text(x, y, f"q{h}", ha="center", va="center", fontsize=8)
        x_kv = left + (cols - 1) / 2                                        # centred under its group
        ax.plot([x_kv, x_kv], [1.45, 0.4], color=colour, linewidth=2)
        ax.add_patch(Rectangle((x_kv - 0.45, -0.4), 0.9, 0.8, color=colour))
        ax.text(x_kv, 0, f"kv{n}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xlim(-0.8, n_kv_head * width - 1.2)
    ax.set_ylim(-0.7, top + 0.2)
    ax.set_aspect("equal")
    return _finish_gqa_plot(fig, ax, 1.55 + rows / 2, n_head, n_kv_head, g, kind, name)


def _finish_gqa_plot(fig, ax, query_y, n_head, n_kv_head, g, kind, name):
    """The labels, title and frame both GQA drawings share; saves the figure."""
    ax.set_yticks([0, query_y])
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


def plot_positional_encoding(pe, name, title="positional encoding", channels=None, colorbar_label=None, wspace=None):
    """A position x channel table (T, C) as a heatmap, beside a few channels as curves.
    channels: which columns to draw as curves; default four spread from the fastest (0) to the slowest.
    colorbar_label: what the colour bar measures (default "value"); wspace: the gap between the two panels, as a
    fraction of their width (default matplotlib's), widen it when the colour bar's label meets the curves' axis."""
    pe = to_numpy(pe)
    if pe.ndim != 2:
        raise ValueError(f"plot_positional_encoding: expected (T, C), got {pe.shape}")
    T, C = pe.shape
    if channels is None:
        channels = sorted(set(np.linspace(0, C - 1, num=min(C, 4)).astype(int).tolist()))
    bad = [c for c in channels if not 0 <= c < C]
    if bad:
        raise ValueError(f"plot_positional_encoding: channels {bad} out of range, expected 0 <= channel < C = {C}")
    grid = {"width_ratios": [3, 2]} if wspace is None else {"width_ratios": [3, 2], "wspace": wspace}
    fig, (ax_map, ax_lines) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw=grid)
    limit = float(np.abs(pe).max()) or 1.0
    image = ax_map.imshow(pe, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax_map.set_xlabel("channel")
    ax_map.set_ylabel("position")
    ax_map.set_title(title)
    fig.colorbar(image, ax=ax_map, label="value" if colorbar_label is None else colorbar_label)
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
