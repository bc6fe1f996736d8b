"""minigpt: decoder-only language models from scratch in NumPy, with hand-written backward passes."""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = "0.1.0"

setup(
    name="minigpt",
    version=VERSION,
    description="GPT-1, GPT-2, GPT-3, LLaMA, GLM and ChatGLM built from scratch in NumPy, every backward pass by hand",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The top-level kernels/ folder is installed as minigpt.kernels, never as a top-level
    # package named `kernels` (an unrelated popular package owns that name).
    packages=["minigpt", "minigpt.layers", "minigpt.tokenizers", "minigpt.data", "minigpt.kernels"],
    package_dir={"minigpt.kernels": "kernels"},
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",  # exact erf for GELU
        "numba>=0.59",
        "numba-cuda",
        "matplotlib>=3.7",
        "safetensors>=0.4",
        "regex>=2023.0",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",  # the BLAS thread count, minigpt/threads.py
    ],
    extras_require={
        "gpu": ["cupy-cuda12x"],
        "test": ["pytest>=7", "hypothesis>=6", "jupytext>=1.14"],  # jupytext: lessons parse as notebooks
        "parity": ["torch", "transformers>=5", "tokenizers"],
        # python lessons/build_book.py: run the lessons as notebooks, write them as HTML pages
        "book": ["jupytext>=1.14", "nbformat>=5.9", "nbclient>=0.10", "nbconvert>=7.16", "ipykernel>=6.29"],
    },
    entry_points={"console_scripts": ["minigpt=minigpt.cli:main"]},
)
