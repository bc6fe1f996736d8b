"""minigpt.layers as a package: what it exports, the README's layer example, and what the caches hold."""
import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

import minigpt.layers as layers

README = Path(__file__).resolve().parents[1] / "README.md"
README_ANCHOR = "A layer is a pair of plain functions:"
MODULES = [importlib.import_module(f"minigpt.layers.{m.name}") for m in pkgutil.iter_modules(layers.__path__)]
FORWARDS = sorted(name for name in layers.__all__ if name.endswith("_forward"))


def readme_layer_example():
    """The fenced python block that follows README_ANCHOR in README.md."""
    text = README.read_text(encoding="utf-8")
    assert README_ANCHOR in text, f"README.md no longer says {README_ANCHOR!r}"
    match = re.match(r"\s*```python\n(.*?)\n```", text.split(README_ANCHOR, 1)[1], re.S)
    assert match, f"README.md: no ```python block right after {README_ANCHOR!r}"
    return match.group(1)


def test_readme_layer_example_runs():
    namespace = {}
    exec(compile(readme_layer_example(), f"{README} (layer example)", "exec"), namespace)
    for grad, arg in [("dx", "x"), ("dw", "w"), ("db", "b")]:
        assert namespace[grad].shape == namespace[arg].shape, (grad, arg)
    assert namespace["out"].shape == namespace["x"].shape


def test_layers_all_names_exist_once():
    assert len(set(layers.__all__)) == len(layers.__all__), "a name is listed twice in __all__"
    missing = [name for name in layers.__all__ if not hasattr(layers, name)]
    assert not missing, f"in minigpt.layers.__all__ but not importable from minigpt.layers: {missing}"


def test_layers_every_forward_is_exported_with_its_backward():
    found = []
    for module in MODULES:
        for name, obj in vars(module).items():
            if name.endswith("_forward") and callable(obj) and obj.__module__ == module.__name__:
                found.append(name)
                backward = name[:-len("_forward")] + "_backward"
                assert hasattr(module, backward), f"{module.__name__}.{name} has no {backward}"
                for pair_name in (name, backward):
                    assert pair_name in layers.__all__, f"{module.__name__}.{pair_name} is not in minigpt.layers.__all__"
                    assert getattr(layers, pair_name) is getattr(module, pair_name)
    assert sorted(found) == FORWARDS


def tiny_inputs(name):
    """Small float64 inputs for each forward of minigpt.layers, by name."""
    rng = np.random.default_rng(0)
    r = lambda *shape: rng.standard_normal(shape)                            # noqa: E731
    x, ids = r(2, 3, 4), np.array([[0, 1, 2], [2, 1, 0]])                    # (B, T, C), (B, T)
    q, k, v = r(2, 4, 3, 6), r(2, 2, 3, 6), r(2, 2, 3, 6)                    # (B, H, T, D), (B, Hkv, S, D) x2
    cos, sin = layers.rope_cos_sin(np.arange(3), 6, dtype="float64")
    return {
        "linear_forward": (x, r(4, 5), r(5)),
        "embedding_forward": (ids, r(3, 4)),
        "learned_position_forward": (np.arange(3), r(3, 4)),
        "glm_position_forward": (ids, ids[:, ::-1].copy(), r(3, 4), r(3, 4)),
        "layernorm_forward": (x, r(4), r(4)),
        "rmsnorm_forward": (x, r(4)),
        "qk_norm_forward": (q, k, r(6), r(6)),
        "relu_forward": (x,), "gelu_forward": (x,), "gelu_tanh_forward": (x,), "silu_forward": (x,),
        "mlp_forward": (x, r(4, 8), r(8), r(8, 4), r(4)),
        "gated_mlp_forward": (x, r(4, 8), r(4, 8), r(8, 4)),
        "glu_forward": (x, r(2, 3, 4), "silu"),
        "softmax_forward": (x,),
        "attention_forward": (q, k, v, np.tril(np.ones((3, 3), dtype=bool))),
        "rope_forward": (q, cos, sin),
        "rope2d_forward": (r(2, 4, 3, 8), ids, ids % 2),
        "dropout_forward": (x, 0.5, np.random.default_rng(1)),
    }[name]


def cache_leaves(value, path):
    """(path, value) for every leaf of a cache, walking nested caches; every tuple on the way must be named."""
    if isinstance(value, tuple):
        assert hasattr(value, "_fields"), f"{path} is a plain tuple: expected a NamedTuple with named fields"
        for field, item in zip(value._fields, value):
            yield from cache_leaves(item, f"{path}.{field}")
    elif isinstance(value, (list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            yield from cache_leaves(item, f"{path}[{key!r}]")
    else:
        yield path, value


@pytest.mark.parametrize("name", FORWARDS)
def test_layer_cache_is_named_and_holds_no_callable(name):
    *_, cache = getattr(layers, name)(*tiny_inputs(name))                   # qk_norm returns q_out, k_out, cache
    callables = [path for path, leaf in cache_leaves(cache, name) if callable(leaf)]
    assert not callables, f"{name}: the cache holds functions at {callables}; store a name and look it up"

