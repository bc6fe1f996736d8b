import os
import subprocess
import sys

import pytest

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


# --- the commands, run in-process through main() ------------------------------------------------------
from minigpt.cli import main  # noqa: E402

TINY_TRAIN = ["train", "--steps", "6", "--batch-size", "4", "--seq-len", "16", "--eval-every", "3",
              "--set", "n_layer=1", "--set", "d_model=32", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(TINY_TRAIN + ["--out", str(out)]) == 0
    return out


def test_cli_train_prints_loss_and_samples(trained_run, capsys, tmp_path):
    assert main(TINY_TRAIN + ["--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "done: step 6, validation loss" in printed and "--- sample 1 ---" in printed
    assert (trained_run / "log.jsonl").exists() and (trained_run / "loss.png").exists()


def test_cli_sample_from_a_run(trained_run, capsys):
    assert main(["sample", "--run", str(trained_run), "--prompt", "The ", "--max-new-tokens", "30",
                 "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("The ") and len(first) > 20
    main(["sample", "--run", str(trained_run), "--prompt", "The ", "--max-new-tokens", "30", "--seed", "3"])
    assert capsys.readouterr().out == first                               # a seed fixes the sample


def test_cli_sample_from_a_hugging_face_folder(tmp_path, capsys):
    from minigpt import Model, ModelConfig, hf
    from minigpt.tokenizers import CharTokenizer
    tok = CharTokenizer.from_text("abcdefgh ")
    path = hf.save(Model(ModelConfig.preset("llama", vocab_size=tok.vocab_size, n_layer=1)), str(tmp_path / "ck"))
    tok.save(path)
    assert main(["sample", "--hf", path, "--prompt", "abc", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("abc")


def test_cli_params_counts_without_weights(capsys):
    assert main(["params", "--preset", "gpt2-small"]) == 0
    assert "124,439,808" in capsys.readouterr().out


def test_cli_plots(trained_run, tmp_path, capsys):
    for args in (["masks", "--preset", "gpt3"], ["positions", "--preset", "llama"], ["loss", "--run", str(trained_run)],
                 ["attention", "--run", str(trained_run), "--text", "The cat sat."]):
        assert main(["plot", *args, "--out", str(tmp_path)]) == 0, args
    saved = [line.split()[-1] for line in capsys.readouterr().out.splitlines()]
    assert "attention_layer0_head3.png" in " ".join(saved) and all(os.path.exists(p) for p in saved)


def test_cli_gradcheck(capsys):
    assert main(["gradcheck", "--layer", "attention"]) == 0
    assert main(["gradcheck", "--preset", "mistral"]) == 0
    assert capsys.readouterr().out.count(": OK (float64") == 2


@pytest.mark.parametrize("args, message", [
    (["params", "--preset", "gpt5"], "unknown preset 'gpt5'"),
    (["train", "--data", "/nowhere/at/all.txt", "--no-progress"], "does not exist"),
    (["train", "--steps", "0", "--no-progress"], "steps=0"),
    (["train", "--set", "n_layers=2", "--no-progress"], "n_layers"),
    (["sample", "--run", "/nowhere"], "no such folder"),
    (["gradcheck", "--layer", "conv"], "--layer 'conv'"),
])
def test_cli_user_mistakes_are_one_line(args, message, capsys, tmp_path):
    assert main(args + (["--out", str(tmp_path / "r")] if args[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_cli_every_command_has_help(capsys):
    for command in ("train", "sample", "params", "plot", "gradcheck"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert f"usage: minigpt {command}" in capsys.readouterr().out
