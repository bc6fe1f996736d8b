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


# --- fine-tuning and chat ------------------------------------------------------------------------------
import json  # noqa: E402
import pty  # noqa: E402
import select  # noqa: E402
import time  # noqa: E402

from minigpt import checkpoint  # noqa: E402

FINETUNE = ["--batch-size", "4", "--eval-every", "2", "--no-progress"]


def test_cli_sft_and_dpo_on_the_builtin_data(trained_run, tmp_path, capsys):
    """The built-in instructions need a context of 48 tokens: the 16 of trained_run are refused, clearly."""
    assert main(["train", "--sft", "builtin", "--init", str(trained_run), "--out", str(tmp_path / "no"),
                 *FINETUNE]) == 2
    assert "longer than the model's context of 16 + 1" in capsys.readouterr().err
    pretrained, sft_out, dpo_out = tmp_path / "pre", tmp_path / "sft", tmp_path / "dpo"
    assert main(["48" if a == "16" else a for a in TINY_TRAIN] + ["--out", str(pretrained)]) == 0    # --seq-len 48
    assert main(["train", "--sft", "builtin", "--init", str(pretrained), "--steps", "3", "--out", str(sft_out),
                 *FINETUNE]) == 0
    printed = capsys.readouterr().out
    assert "done: sft, 3 steps" in printed and "held-out answer loss" in printed
    assert "before: 0% right" in printed and f"minigpt chat --run {sft_out}" in printed
    saved = checkpoint.load(sft_out)
    assert saved.state["kind"] == "sft" and saved.state["template"] == "minimal" and "<|end|>" in \
        saved.tokenizer.special_tokens
    assert main(["train", "--dpo", "builtin", "--init", str(sft_out), "--steps", "2", "--out", str(dpo_out),
                 *FINETUNE]) == 0
    printed = capsys.readouterr().out
    assert "done: dpo, 2 steps" in printed and "preference accuracy" in printed and "KL from the reference" in printed
    records = [json.loads(line) for line in (dpo_out / "log.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[0]["val_accuracy"] == 0.0 and records[0]["val_kl"] == 0.0   # start
    assert records[1]["step"] == 1 and records[1]["accuracy"] == 0.0 and "val_kl" in records[-1]
    assert main(["sample", "--run", str(dpo_out), "--prompt", "<|user|>copy ab<|end|><|assistant|>",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("<|user|>copy ab<|end|><|assistant|>")


@pytest.fixture(scope="module")
def hello_run(trained_run, tmp_path_factory):
    """A run instruction-tuned (from the tiny pretrained run) to answer "hi" with "hello"."""
    folder = tmp_path_factory.mktemp("chat")
    data = folder / "hello.jsonl"
    line = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text((json.dumps(line) + "\n") * 4)
    out = folder / "hello"
    assert main(["train", "--sft", str(data), "--init", str(trained_run), "--steps", "80", "--lr", "1e-2",
                 "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    return out


def test_cli_chat_through_standard_input(hello_run):
    """Piped: only the answers on stdout, one a line; /reset and /exit work, and nothing after /exit is read."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    result = subprocess.run([sys.executable, "-m", "minigpt", "chat", "--run", str(hello_run)], env=env,
                            input="hi\n/reset\n\nhi\n/exit\nhi\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\nhello\n"
    assert "(history cleared)" in result.stderr
    ended = subprocess.run([sys.executable, "-m", "minigpt", "chat", "--run", str(hello_run)], env=env,
                           input="hi\n", capture_output=True, text=True, timeout=60)   # end of input ends it too
    assert ended.returncode == 0 and ended.stdout == "hello\n", ended.stderr


def _read_until(fd, text, timeout=60):
    """What the pseudo-terminal shows until text appears (or the timeout, or the end)."""
    seen, end = b"", time.monotonic() + timeout
    while text.encode() not in seen and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:                                  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen.decode("utf-8", errors="replace")


def test_cli_chat_in_a_pseudo_terminal(hello_run):
    """Interactive: a banner, the "you> " prompt, the answer streamed after "model> ", /exit ends with status 0."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    child = subprocess.Popen([sys.executable, "-m", "minigpt", "chat", "--run", str(hello_run)], env=env,
                             stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    try:
        assert "/exit ends" in _read_until(leader, "you> ")
        os.write(leader, b"hi\n")
        assert "model> hello" in _read_until(leader, "hello\r\nyou> ")
        os.write(leader, b"/exit\n")
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
        os.close(leader)


@pytest.mark.parametrize("args, message", [
    (["train", "--sft", "builtin"], "--sft needs --init RUN"),
    (["train", "--sft", "builtin", "--init", "RUN"], "longer than the model's context of 16 + 1"),
    (["train", "--dpo", "/nowhere/pairs.jsonl", "--init", "RUN"], "/nowhere/pairs.jsonl: no such file"),
    (["train", "--sft", "builtin", "--init", "RUN", "--preset", "llama"], "--preset: not used with --sft"),
    (["train", "--init", "RUN"], "--init: only with --sft or --dpo"),
    (["chat", "--run", "RUN"], "not tuned for chat"),
    (["chat", "--run", "RUN", "--max-new-tokens", "0"], "--max-new-tokens 0"),
])
def test_cli_finetune_and_chat_mistakes_are_one_line(args, message, trained_run, capsys, tmp_path):
    args = [str(trained_run) if a == "RUN" else a for a in args]
    assert main(args + (["--out", str(tmp_path / "r"), "--no-progress"] if args[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_cli_chat_has_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["chat", "--help"])
    assert done.value.code == 0 and "/reset" in capsys.readouterr().out


def test_cli_train_with_a_flash_kernel(tmp_path, capsys):
    out = tmp_path / "flash"
    assert main(TINY_TRAIN + ["--attention", "flash-cpu", "--out", str(out)]) == 0
    from minigpt import checkpoint
    assert checkpoint.load(str(out)).config.attention_impl == "flash-cpu"
