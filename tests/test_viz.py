import os
from pathlib import Path

import numpy as np
import pytest

from minigpt import viz
from minigpt.masks import banded_mask, causal_mask, prefix_mask

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, name):
    path = Path(path)
    assert path == Path(os.environ["MINIGPT_FIGURES"]) / f"{name}.png"
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_figures_go_to_the_test_folder():
    assert viz.figure_dir() == Path(os.environ["MINIGPT_FIGURES"])


def test_plot_mask_writes_png():
    assert_png(viz.plot_mask(banded_mask(7, 3), "banded, window 3", "banded"), "banded")


def test_plot_mask_with_token_labels_writes_png():
    tokens = ["x1", "x2", "[M]", "[S]", "x5"]
    path = viz.plot_mask(prefix_mask(5, 3), "GLM prefix mask", "glm_mask", row_labels=tokens, col_labels=tokens)
    assert_png(path, "glm_mask")


def test_plot_mask_rejects_batched_or_non_boolean_mask():
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        viz.plot_mask(prefix_mask(4, [1, 2]), "batched", "bad")
    with pytest.raises(ValueError, match="float64"):
        viz.plot_mask(np.ones((3, 3)), "floats", "bad")


def test_plot_mask_wrong_label_count_is_error():
    with pytest.raises(ValueError, match="3 x labels for 4 cells"):
        viz.plot_mask(causal_mask(4), "causal", "bad", col_labels=["a", "b", "c"])


@pytest.mark.parametrize("n_head,n_kv_head", [(8, 8), (8, 2), (8, 1), (6, 3)])
def test_plot_gqa_groups_writes_png(n_head, n_kv_head):
    name = f"gqa_{n_head}_{n_kv_head}"
    assert_png(viz.plot_gqa_groups(n_head, n_kv_head, name), name)


def test_plot_gqa_groups_indivisible_is_error():
    with pytest.raises(ValueError, match=r"n_head=8.*n_kv_head=3"):
        viz.plot_gqa_groups(8, 3, "bad")


def test_plot_attention_writes_png():
    rng = np.random.default_rng(0)
    scores = np.where(causal_mask(5), rng.standard_normal((5, 5)), -np.inf)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert_png(viz.plot_attention(probs, list("hello"), "attn"), "attn")


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")  # no CJK font on this machine
def test_plot_attention_fewer_queries_than_keys_writes_png():
    probs = np.full((2, 5), 0.2)
    assert_png(viz.plot_attention(probs, ["今", "天", "天", "气", "很"], "attn_cache"), "attn_cache")


def test_plot_attention_token_count_mismatch_is_error():
    with pytest.raises(ValueError, match="4 tokens for S=5"):
        viz.plot_attention(np.full((5, 5), 0.2), list("abcd"), "bad")


def test_plot_positional_encoding_writes_png():
    positions = np.arange(32)[:, None] / (100.0 ** (np.arange(0, 16, 2) / 16))
    pe = np.concatenate([np.sin(positions), np.cos(positions)], axis=1)    # (32, 16)
    assert_png(viz.plot_positional_encoding(pe, "pe"), "pe")


def test_plot_positional_encoding_chosen_channels():
    pe = np.zeros((8, 6))
    assert_png(viz.plot_positional_encoding(pe, "pe_channels", channels=[1, 5]), "pe_channels")
    with pytest.raises(ValueError, match=r"channels \[6\] out of range"):
        viz.plot_positional_encoding(pe, "bad", channels=[0, 6])


def test_plot_positional_encoding_needs_2d():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        viz.plot_positional_encoding(np.zeros((2, 3, 4)), "bad")


def test_plot_curves_writes_png():
    steps = np.arange(0, 100, 10)
    curves = {"train": np.exp(-np.arange(100) / 30.0), "val": (steps, np.exp(-steps / 40.0))}
    assert_png(viz.plot_curves(curves, "loss", "step", "loss"), "loss")


def test_plot_curves_empty_is_error():
    with pytest.raises(ValueError, match="no curves"):
        viz.plot_curves({}, "bad", "step", "loss")


def test_save_figure_shows_the_png_inline_in_a_notebook(tmp_path, monkeypatch):
    """Under a running IPython kernel the saved PNG is displayed (the figure shows under the cell); in plain
    Python, or with IPython imported but no kernel (a test process that imported ipykernel), nothing is shown."""
    import sys
    import types

    import matplotlib.pyplot as plt

    from minigpt import viz
    shown, shell = [], types.SimpleNamespace(kernel=None)
    display_module = types.SimpleNamespace(Image=lambda filename: ("image", filename), display=shown.append)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    ipython = types.SimpleNamespace(display=display_module, get_ipython=lambda: shell)
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    viz.save_figure(plt.figure(), "plain", folder=tmp_path)
    assert shown == []
    shell.kernel = object()
    path = viz.save_figure(plt.figure(), "inline", folder=tmp_path)
    assert shown == [("image", str(path))] and path.exists()


def test_plot_options_draw_and_refuse_bad_values(tmp_path, monkeypatch):
    """The optional arguments lessons use: a Part A | Part B boundary line, stacked GQA groups, a labelled
    colour bar. Each draws a PNG; a boundary outside the mask is an error."""
    import numpy as np

    from minigpt import viz
    from minigpt.masks import prefix_mask
    monkeypatch.setenv("MINIGPT_FIGURES", str(tmp_path))
    paths = [viz.plot_mask(prefix_mask(6, 3), "prefix", "boundary", boundary=3, boundary_label="sep"),
             viz.plot_gqa_groups(32, 2, "groups", rows=4),
             viz.plot_positional_encoding(np.random.default_rng(0).standard_normal((8, 6)), "pe",
                                          colorbar_label="PE value", wspace=0.4)]
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError):
        viz.plot_mask(prefix_mask(6, 3), "prefix", "bad", boundary=9)
