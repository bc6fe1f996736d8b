# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 15 — RoPE: rotary position embedding
#
# **You will learn**
# - rotary position embedding (旋转位置编码, RoPE, Su et al. 2021), the positions of LLaMA, ChatGLM2 and GLM-4:
#   turn each pair of channels of a query or key by an angle proportional to its position;
# - why the attention score $q_m \cdot k_n$ then depends only on the distance $m - n$, checked numerically;
# - the backward pass of a rotation (rotate back);
# - the two pairings in real checkpoints, rotate-half and interleaved, and why they are the same rotation
#   on permuted channels;
# - partial rotary: ChatGLM2 and GLM-4 rotate only half of each head.
#
# Lesson 02 *added* a position vector to each token embedding, so a score mixes content and absolute positions.
# RoPE adds nothing. It multiplies the query and key of each head by a rotation that depends on the position,
# right before the dot product, and leaves the values alone.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minigpt.config import ModelConfig
from minigpt.gradcheck import check_gradients, rel_error
from minigpt.layers.positions import sinusoidal_encoding
from minigpt.layers.rope import rope_backward, rope_cos_sin, rope_forward
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## Rotations in 2D pairs
#
# Split the $R$ rotated channels of a head into $P = R/2$ pairs $(a_i, b_i)$. The token at position $m$ turns
# pair $i$ by the angle $m\,\theta_i$:
#
# $$ \begin{pmatrix} a_i' \\ b_i' \end{pmatrix} = \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
#    \begin{pmatrix} a_i \\ b_i \end{pmatrix}, \qquad \theta_i = \text{base}^{-2i/R},\; i = 0, \dots, P - 1, $$
#
# with base 10000 (LLaMA-1/2; LLaMA-3 uses 500000, GLM-4-9B-Chat 5000000). Pair 0 turns one radian per token,
# the last pair almost not at all: the same geometric ladder of frequencies as the sinusoidal encoding of lesson 02. For the
# whole head, $x' = \mathcal{R}_m x$ with $\mathcal{R}_m$ block-diagonal, one $2\times2$ rotation per pair.
#
# **The relative-position property.** Rotations compose by adding angles, $\mathcal{R}_m^\top \mathcal{R}_n = \mathcal{R}_{n-m}$, so
#
# $$ (\mathcal{R}_m q)\cdot(\mathcal{R}_n k) = q^\top \mathcal{R}_m^\top \mathcal{R}_n k = q^\top \mathcal{R}_{n-m}\, k . $$
#
# The score of query position $m$ against key position $n$ depends on the contents $q, k$ and on $m - n$ only.
# In complex numbers (pair $i$ is $z_i = a_i + \mathrm{i}\,b_i$, and a rotation is a multiplication by $e^{\mathrm{i}m\theta_i}$)
# the same line reads $\sum_i \operatorname{Re}\big(q_i \overline{k_i}\, e^{\mathrm{i}(m-n)\theta_i}\big)$.
#
# **Backward.** $x' = \mathcal{R}_m x$ is linear in $x$, so $\mathrm{d}x = \mathcal{R}_m^\top \mathrm{d}x' = \mathcal{R}_{-m}\,\mathrm{d}x'$:
# rotate the gradient back by the same angle, i.e. the forward with $\sin$ negated. Nothing needs caching but
# $\cos$ and $\sin$. RoPE has no parameters; $q$ and $k$ come from $W_q, W_k$, whose gradients the linear layer computes.

# %% [markdown]
# ## From scratch: complex numbers
#
# Meta's original LLaMA code does exactly the complex multiplication: view channels $(2i, 2i+1)$ as one complex number
# and multiply by $e^{\mathrm{i}m\theta_i}$. Five lines of NumPy, then the library's `rope_forward` with interleaved pairs.

# %%
rng = np.random.default_rng(0)
B, H, T, D = 2, 3, 7, 12
base = 10000.0
x = rng.standard_normal((B, H, T, D))                           # (B, H, T, D) queries or keys, float64

theta = base ** (-np.arange(0, D, 2) / D)                       # (P,) theta_i = base^(-2i/D)
angles = np.arange(T)[:, None] * theta                          # (T, P) m * theta_i
z = x[..., 0::2] + 1j * x[..., 1::2]                            # (B, H, T, P) pair i as a complex number
z_rot = z * np.exp(1j * angles)                                 # (B, H, T, P) rotate by m * theta_i
x_rot = np.stack([z_rot.real, z_rot.imag], axis=-1).reshape(B, H, T, D)   # (B, H, T, D) pairs back in place

cos, sin = rope_cos_sin(np.arange(T), D, theta=base, dtype="float64")    # (T, P) each
out_inter, cache_inter = rope_forward(x, cos, sin, pairing="interleaved")  # (B, H, T, D)
print("complex-number RoPE vs library (interleaved): rel_error", rel_error(x_rot, out_inter))
print("lengths kept: max | |x'| - |x| | =",
      np.abs(np.linalg.norm(out_inter, axis=-1) - np.linalg.norm(x, axis=-1)).max())

# %% [markdown]
# ## The score depends on m − n only
#
# Put one query vector $q$ at every position $m$ and one key vector $k$ at every position $n$, rotate, and
# form the $T \times T$ table of scores. If it depends only on $m - n$, every diagonal is constant, and moving
# all positions by the same offset (here 1000) changes nothing. For contrast, lesson 02's additive sinusoidal
# encoding, $(q + p_m)\cdot(k + p_n)$, has terms $q\cdot p_n$ and $p_m \cdot k$ that see absolute positions.

# %%
Ts, Dq = 16, 16
q = rng.standard_normal(Dq)                                     # (D,) one query content
k = rng.standard_normal(Dq)                                     # (D,) one key content
Q = np.broadcast_to(q, (1, 1, Ts, Dq)).copy()                   # (1, 1, T, D) q at positions 0..T-1
K = np.broadcast_to(k, (1, 1, Ts, Dq)).copy()                   # (1, 1, T, D) k at positions 0..T-1


def rope_scores(offset):
    """(T, T) scores (R_m q) . (R_n k) for m, n = offset .. offset + T - 1."""
    cos, sin = rope_cos_sin(np.arange(Ts) + offset, Dq, dtype="float64")   # (T, P)
    q_rot, _ = rope_forward(Q, cos, sin)                        # (1, 1, T, D)
    k_rot, _ = rope_forward(K, cos, sin)                        # (1, 1, T, D)
    return q_rot[0, 0] @ k_rot[0, 0].T                          # (T, T)


scores = rope_scores(0)                                         # (T, T)
scores_far = rope_scores(1000)                                  # (T, T)
pe = sinusoidal_encoding(np.arange(Ts), Dq, dtype="float64")    # (T, D)
additive = (q + pe) @ (k + pe).T                                # (T, T) (q + p_m) . (k + p_n)


def diagonal_spread(s):
    """The largest change along any diagonal of a (T, T) table: 0 when s[m, n] depends on m - n only."""
    return np.abs(s[1:, 1:] - s[:-1, :-1]).max()


print(f"RoPE:     diagonals constant to {diagonal_spread(scores):.1e}; "
      f"positions +1000 change the scores by {np.abs(scores_far - scores).max():.1e}")
print(f"additive: diagonals vary by {diagonal_spread(additive):.2f}")
print("RoPE scores at query 8, m - n = 0, 1, 2, 3:", np.round([scores[8, 8 - d] for d in range(4)], 4),
      "| at query 12:", np.round([scores[12, 12 - d] for d in range(4)], 4))

# %% [markdown]
# ## Backward, and the gradient check
#
# `rope_backward` rotates the gradient back. Two checks: rotating back undoes the forward exactly
# ($\mathcal{R}_m^\top \mathcal{R}_m = I$), and centered differences agree, for both pairings and for partial rotary.

# %%
x_back = rope_backward(out_inter, cache_inter)                  # (B, H, T, D) R_m^T R_m x
print("rotate, then rotate back: max |x - x_back| =", np.abs(x - x_back).max())

grad_errors = {}
for pairing in ("half", "interleaved"):
    for R in (D, D // 2):                                       # full and partial rotary
        cos_r, sin_r = rope_cos_sin(np.arange(T) + 3, R, theta=base, dtype="float64")   # (T, R/2)
        err = check_gradients(lambda x: rope_forward(x, cos_r, sin_r, R, pairing), rope_backward,
                              [x.copy()], names=["x"])
        grad_errors[(pairing, R)] = err["x"]
        print(f"pairing {pairing:>11}, R = {R:>2} of D = {D}: rel_error dx = {err['x']:.1e}")

# %% [markdown]
# ## Rotate-half and interleaved: the same rotation on permuted channels
#
# Which two channels form pair $i$ is a convention, and the checkpoints disagree:
#
# | pairing | pair $i$ | used by |
# |---|---|---|
# | interleaved | $(2i,\ 2i+1)$ | Meta's LLaMA code, ChatGLM2, GLM-4 |
# | rotate-half | $(i,\ i + R/2)$ | Hugging Face LLaMA (`rotate_half`), GPT-NeoX |
#
# Let $\pi$ list the even channels, then the odd ones: $\pi = (0, 2, 4, \dots, 1, 3, 5, \dots)$. Permuting a head's
# channels by $\pi$ moves channel $2i$ to slot $i$ and channel $2i+1$ to slot $i + R/2$: interleaved pairs become
# rotate-half pairs, with the same angles. So
#
# $$ \text{rope}_{\text{half}}(x_{\pi}) = \text{rope}_{\text{interleaved}}(x)_{\pi}, $$
#
# and since a dot product does not care how both vectors' channels are ordered, $(q_\pi)\cdot(k_\pi) = q\cdot k$:
# the attention scores are identical. This is why Hugging Face's LLaMA converter permutes the output columns of
# $W_q$ and $W_k$ within every head (`permute` in `convert_llama_weights_to_hf.py`) and can then use rotate-half:
# $x W_{q,\pi} = (x W_q)_\pi$. Forget the permutation and the model still runs, with every position subtly wrong.

# %%
perm = np.concatenate([np.arange(0, D, 2), np.arange(1, D, 2)])   # (D,) pi: evens, then odds
print("pi =", perm.tolist())
out_half_of_permuted, _ = rope_forward(x[..., perm], cos, sin, pairing="half")   # (B, H, T, D)
print("rope_half(x[pi]) vs rope_interleaved(x)[pi]: rel_error",
      rel_error(out_half_of_permuted, out_inter[..., perm]))

xk = rng.standard_normal((B, H, T, D))                          # (B, H, T, D) keys
k_inter, _ = rope_forward(xk, cos, sin, pairing="interleaved")   # (B, H, T, D)
k_half, _ = rope_forward(xk[..., perm], cos, sin, pairing="half")   # (B, H, T, D)
scores_inter = out_inter @ k_inter.swapaxes(-1, -2)             # (B, H, T, T)
scores_half = out_half_of_permuted @ k_half.swapaxes(-1, -2)    # (B, H, T, T)
out_half_unpermuted, _ = rope_forward(x, cos, sin, pairing="half")   # (B, H, T, D) the mistake
wrong = out_half_unpermuted @ rope_forward(xk, cos, sin, pairing="half")[0].swapaxes(-1, -2)   # (B, H, T, T)
print("scores, interleaved vs rotate-half on permuted channels: rel_error", rel_error(scores_inter, scores_half))
print("scores, interleaved vs rotate-half WITHOUT the permutation: rel_error", round(rel_error(scores_inter, wrong), 3))

# %% [markdown]
# ## Partial rotary: ChatGLM2 and GLM-4
#
# ChatGLM2-6B and GLM-4-9B rotate only the first half of each head: of $D = 128$ channels, $R = 64$ are turned
# (32 interleaved pairs, frequencies $\text{base}^{-2i/64}$) and the other 64 pass through. In our config that is
# `rotary_fraction=0.5`. The score splits into a rotated part, relative as above, and an unrotated part $q_{R:}\cdot k_{R:}$
# that ignores positions altogether: half of each head is free to match on content alone, at every distance.
# (ChatGLM-6B, the first version, used a different "2D" RoPE: both halves rotated, by two kinds of position; lesson 21.)

# %%
glm4 = ModelConfig.preset("glm4-9b")
print(f"GLM-4-9B: head dim {glm4.head_dim}, rotary_fraction {glm4.rotary_fraction} -> rotary dim {glm4.rotary_dim}, "
      f"pairing {glm4.rope_pairing!r}, base {glm4.rope_theta:g}")

R = D // 2                                                      # our small head: 6 of 12 channels rotated
cos_p, sin_p = rope_cos_sin(np.arange(T), R, theta=base, dtype="float64")   # (T, R/2)
out_partial, _ = rope_forward(x, cos_p, sin_p, R, pairing="interleaved")     # (B, H, T, D)
print("channels R.. untouched:", np.array_equal(out_partial[..., R:], x[..., R:]),
      "| channels ..R rotated:", not np.allclose(out_partial[..., :R], x[..., :R]))

Qp = np.broadcast_to(q[:D], (1, 1, Ts, D)).copy()               # (1, 1, T, D)
Kp = np.broadcast_to(k[:D], (1, 1, Ts, D)).copy()               # (1, 1, T, D)
cos_t, sin_t = rope_cos_sin(np.arange(Ts), R, dtype="float64")  # (T, R/2)
partial_scores = (rope_forward(Qp, cos_t, sin_t, R, "interleaved")[0][0, 0]
                  @ rope_forward(Kp, cos_t, sin_t, R, "interleaved")[0][0, 0].T)   # (T, T)
print(f"partial rotary: diagonals constant to {diagonal_spread(partial_scores):.1e}; "
      f"position-free part q[R:] . k[R:] = {q[R:D] @ k[R:D]:.3f}")

# %% [markdown]
# ## Frequencies, and the score against distance
#
# Left: the wavelength $2\pi/\theta_i$ of each pair for a head of $D = 128$: from $2\pi \approx 6$ tokens (pair 0) to
# about 54 000 tokens (pair 63) at base 10 000; a larger base stretches the slow end, which is how LLaMA-3 and
# GLM-4 reach long contexts. Right: the score of $q = k = \mathbf{1}$ against the distance $m - n$,
# $\sum_i 2\cos\big((m-n)\theta_i\big)$: the fast pairs dephase quickly and the score decays, with ripples. Su et al.
# call this long-term decay: distant tokens interact less, for the same contents.

# %%
D_big = 128
pairs = np.arange(D_big // 2)                                   # (64,)
distance = np.arange(2001)                                      # (N,) m - n
fig, (ax_freq, ax_dist) = plt.subplots(1, 2, figsize=(11, 4))
for b, who in ((1e4, "LLaMA-1/2"), (5e5, "LLaMA-3")):
    inv_freq = b ** (-2.0 * pairs / D_big)                      # (64,) theta_i
    ax_freq.semilogy(pairs, 2 * np.pi / inv_freq, label=f"base {b:g} ({who})")
    ones = np.ones((1, 1, 1, D_big))                            # (1, 1, 1, D) q = k = 1
    cos_d, sin_d = rope_cos_sin(distance, D_big, theta=b, dtype="float64")   # (N, 64)
    # (R_m q) . (R_n k) = q . R_{n-m} k: rotate k by the distance, dot with q
    k_far, _ = rope_forward(np.broadcast_to(ones, (1, 1, len(distance), D_big)).copy(), cos_d, sin_d)   # (1, 1, N, D)
    ax_dist.plot(distance, k_far[0, 0] @ ones[0, 0, 0], label=f"base {b:g} ({who})", lw=0.8)
ax_freq.set_xlabel("pair i")
ax_freq.set_ylabel("wavelength 2π/θ_i (tokens)")
ax_freq.set_title("RoPE frequencies, D = 128")
ax_freq.grid(alpha=0.3)
ax_freq.legend()
ax_dist.set_xlabel("distance m − n (tokens)")
ax_dist.set_ylabel("score (R_m 1)·(R_n 1)")
ax_dist.set_title("long-term decay of the score for q = k = 1")
ax_dist.grid(alpha=0.3)
ax_dist.legend()
figure = save_figure(fig, "15_rope_frequencies_and_decay")
print("saved", figure)
wavelengths = 2 * np.pi * 1e4 ** (2.0 * pairs / D_big)          # (64,)
print(f"wavelengths at base 10000: {wavelengths[0]:.2f} .. {wavelengths[-1]:.0f} tokens")

# %% [markdown]
# ## Summary
# - RoPE turns pair $i$ of the query and key at position $m$ by $m\theta_i$, $\theta_i = \text{base}^{-2i/R}$; values are not rotated.
# - $(\mathcal{R}_m q)\cdot(\mathcal{R}_n k) = q^\top\mathcal{R}_{n-m}k$: scores depend on $m - n$ only (checked: diagonals constant, shifts free).
# - Backward: rotate the gradient back ($\sin \to -\sin$); no parameters, nothing to learn.
# - Rotate-half and interleaved pairing are the same rotation on channels permuted by $\pi$ = (evens, odds); converting a
#   checkpoint between them means permuting $W_q$ and $W_k$.
# - ChatGLM2 / GLM-4 rotate half of each head (`rotary_fraction=0.5`, interleaved); the rest is position-free.
#
# ## Exercises
# 1. Write the permutation of $W_q$'s columns (shape $(C, H\cdot D)$) that turns an interleaved checkpoint into a
#    rotate-half one, head by head, and check it with `rope_forward`.
# 2. Show that RoPE cannot be written as adding a vector $p_m$ to $q$: which property of $q\mapsto\mathcal{R}_m q$ does
#    addition lack?
# 3. With base 10000 and $D = 128$, after how many tokens has pair 63 turned by one radian? What does that suggest
#    about contexts much longer than the training length?
# 4. Position interpolation (Chen et al. 2023) extends a context from $L$ to $L'$ by using positions $m L / L'$. Which
#    line of `rope_cos_sin` would you change, and is the relative property kept?

# %% [markdown]
# ## Check

# %%
assert out_inter.shape == (B, H, T, D) and out_inter.dtype == np.float64
assert rel_error(x_rot, out_inter) < 1e-14                                       # complex numbers == library
assert np.allclose(np.linalg.norm(out_inter, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)  # rotations keep lengths
assert diagonal_spread(scores) < 1e-12 and np.abs(scores_far - scores).max() < 1e-10   # relative positions only
assert diagonal_spread(additive) > 0.1                                           # the additive encoding is not relative
assert np.abs(x - x_back).max() < 1e-14                                          # backward = inverse rotation
assert max(grad_errors.values()) < 1e-6, grad_errors
assert rel_error(out_half_of_permuted, out_inter[..., perm]) < 1e-15
assert rel_error(scores_inter, scores_half) < 1e-14 and rel_error(scores_inter, wrong) > 1e-2
assert np.array_equal(out_partial[..., R:], x[..., R:]) and diagonal_spread(partial_scores) < 1e-12
assert glm4.rotary_dim == 64 and glm4.rope_pairing == "interleaved"
assert abs(wavelengths[0] - 2 * np.pi) < 1e-12 and 5e4 < wavelengths[-1] < 6e4
x32 = x.astype(np.float32)
out32, cache32 = rope_forward(x32, *rope_cos_sin(np.arange(T), D))
assert out32.dtype == np.float32 and rope_backward(out32, cache32).dtype == np.float32
assert figure.exists()
print("lesson 15 OK")
