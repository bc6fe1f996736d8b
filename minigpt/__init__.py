"""minigpt: decoder-only language models built from scratch in NumPy, every backward pass by hand."""
__version__ = "0.1.0"
