"""The `minigpt` command line (also `python -m minigpt`)."""
import argparse

import minigpt


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minigpt",
        description="Decoder-only language models (GPT-1/2/3, LLaMA, GLM, ChatGLM) from scratch in NumPy.",
    )
    parser.add_argument("--version", action="version", version=f"minigpt {minigpt.__version__}")
    return parser


def main(argv=None):
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
