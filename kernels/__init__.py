"""Fused causal-attention kernels written with Numba, installed as `minigpt.kernels`."""
