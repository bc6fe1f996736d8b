"""The decoder-only language model: GPT-1/2/3, LLaMA, GLM, ChatGLM, Mistral and Qwen3 from one recipe.

Dimensions: B batch, T time, C channels (d_model), V vocab, L layers, H query heads, Hkv key/value heads,
D head dim, F MLP hidden size.

    ids (B, T)
      -> x = wte[ids] (+ position vectors: learned, sinusoidal, or GLM's two tables)   (B, T, C)
      -> L blocks, each an attention sublayer and an MLP sublayer, wired by norm_placement:
             "pre"       h = LN(x); x = x   + f(h)      GPT-2/3, LLaMA, GLM, ChatGLM2, GLM-4, Mistral, Qwen3
             "deepnorm"  h = LN(x); x = a*h + f(h)      ChatGLM-6B, a = sqrt(2L): the same, but the residual
                                                        carries the normalized h, scaled (DeepNet's
                                                        x = LN(a*x + f(x)) with the LN moved to the next input)
             "post"      x = LN(x + f(x))               GPT-1
      -> final norm (all but GPT-1)
      -> logits = x @ wte.T (tied) or x @ lm_head                                      (B, T, V)

The attention sublayer: q, k, v projections (B, T, C) -> (B, H|Hkv, T, D), QK-norm for Qwen3, RoPE on
q and k for positions "rope" / "rope2d", masked softmax attention (kv heads shared by groups of query
heads), merged heads, output projection. The mask is causal; GLM's prefix mask when prefix_len is given;
narrowed on some layers by a local window (GPT-3's odd layers: banded; Mistral: a sliding window);
an explicit attn_mask replaces all of them.

Every step keeps its layer's cache, collected in the named caches below; backward walks them in reverse
and ACCUMULATES into model.grads (a tied wte gets both its embedding and its output-head gradient).

Generation uses a KVCache instead: forward(new_ids, kv_cache=cache) stores the new positions' keys and
values in it and attends over everything stored so far, so each new token costs one position, not the
whole sequence again (minigpt.generate drives it).
"""
from typing import NamedTuple

import numpy as np

from minigpt.backend import is_integer_array, resolve_device, resolve_dtype, to_device, to_numpy, xp_for
from minigpt.config import ModelConfig, check_tensor_set, param_shapes, param_specs
from minigpt.layers.attention import attention_backward, attention_forward, merge_heads, split_heads
from minigpt.layers.dropout import dropout_backward, dropout_forward
from minigpt.layers.embedding import embedding_backward, embedding_forward
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.layers.mlp import gated_mlp_backward, gated_mlp_forward, mlp_backward, mlp_forward
from minigpt.layers import norms
from minigpt.layers.norms import qk_norm_backward, qk_norm_forward
from minigpt.layers.positions import (glm_position_backward, glm_position_forward, learned_position_backward,
                                      learned_position_forward, sinusoidal_encoding)
from minigpt.layers.rope import rope2d_backward, rope2d_forward, rope_backward, rope_cos_sin, rope_forward
from minigpt.kernels import MaskSpec, flash_attention_backward, flash_attention_forward
from minigpt.masks import attention_mask, explicit_mask, per_sample_lengths

# attention_impl="auto" on a CPU: flash-cpu from this many positions. Measured forward + backward, float32, causal,
# B=8, H=4, D=16, one thread each: T=32 0.31 ms reference vs 0.33 ms flash-cpu; T=64 1.45 vs 0.86; T=256 25.8 vs 5.8.
AUTO_FLASH_CPU_MIN_T = 64


class BlockContext(NamedTuple):
    """What every block reads besides x, made once per forward (Model.block_context)."""
    pos: object          # (B, T) position ids
    block_pos: object    # (B, T) GLM block position ids ("glm2d", "rope2d"), else None
    rope: object         # (cos, sin) of the RoPE angles, each (B, 1, T, rotary_dim/2), for "rope"; else None
    kv_cache: object = None   # the KVCache of a generation step, else None


class AttentionSublayerCache(NamedTuple):
    """What the attention sublayer's backward needs, in the order of its forward."""
    qkv_proj: tuple      # the linear cache of the joined q, k, v projection
    qk_norm: tuple       # the QK-norm cache (Qwen3), else None
    q_rot: tuple         # the rotation caches of q and k (RoPE), else None
    k_rot: tuple
    attention: tuple     # the attention core's cache (the reference's, or a flash kernel's)
    impl: str            # which computed it: "reference" or a flash kernel (config.attention_impl)
    out_proj: tuple      # the output projection's linear cache
    dropout: tuple       # the dropout cache of the sublayer's output, None without dropout


class MlpSublayerCache(NamedTuple):
    mlp: tuple           # the (gated) MLP's cache
    dropout: tuple       # the dropout cache of the sublayer's output, None without dropout


class BlockCache(NamedTuple):
    norm1: tuple         # the norm before (pre, deepnorm) or after (post) the attention sublayer
    attn: AttentionSublayerCache
    norm2: tuple         # the norm before / after the MLP sublayer
    mlp: MlpSublayerCache


class ForwardCache(NamedTuple):
    logits_shape: tuple  # (B, T, V), to check dlogits against
    embedding: tuple     # token embedding cache
    positions: tuple     # position table cache ("learned", "glm2d"), else None
    dropout: tuple       # embedding dropout cache, else None
    blocks: list         # one BlockCache per layer
    final_norm: tuple    # final norm cache, else None
    head: tuple          # the output head's linear cache


class KVCache:
    """The keys and values of every position generation has seen, per layer: k[i], v[i] (B, Hkv, capacity, D),
    filled up to `length`. K is stored after QK-norm and RoPE, so a cached key is never rotated again, and only
    the Hkv kv heads are stored: that is how GQA / MQA shrink the cache. What the mask needs of a batch of
    prompts lives here too, fixed for the whole generation:
        prefix_len int (B,) or None  GLM: the prompt (Part A) attends to itself bidirectionally
        pad_len    int (B,) or None  left padding of prompts of different lengths (no real token sees it)
    """

    def __init__(self, model, batch_size, capacity, prefix_len=None, pad_len=None):
        cfg = model.config
        shape = (batch_size, cfg.n_kv_head, capacity, cfg.head_dim)              # (B, Hkv, capacity, D)
        self.k = [model.xp.zeros(shape, dtype=model.dtype) for _ in range(cfg.n_layer)]
        self.v = [model.xp.zeros(shape, dtype=model.dtype) for _ in range(cfg.n_layer)]
        self.batch_size, self.capacity, self.length = batch_size, capacity, 0
        self.prefix_len, self.pad_len = prefix_len, pad_len
        # Every layer's joined q|k|v weights (Model.joined_qkv), made once here instead of at every new token
        # (they cost 15% of a token's time): the parameters do not change while a generation runs.
        self.qkv_weights = [model.joined_qkv(i) for i in range(cfg.n_layer)]

    def store(self, layer, k, v):
        """k, v (B, Hkv, T, D) of T new positions -> every key and value so far, (B, Hkv, length + T, D) views.
        The caller (Model.forward) advances `length` once all layers have stored."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]              # (B, Hkv, S, D) each


class Model:
    """A decoder-only transformer with hand-written forward and backward passes.

    model = Model(config, seed=0, device=None, dtype="float32", params=None)
    model.params, model.grads: flat dicts with the same dotted keys and shapes ("blocks.0.attn.wq").
    params given: used as they are (checked against the config's shapes, moved to device/dtype if needed).
    """

    def __init__(self, config, seed=0, device=None, dtype="float32", params=None):
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config: expected a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.device = resolve_device(device)
        self.xp = xp_for(self.device)
        self.dtype = resolve_dtype(dtype)
        self.params = self._init_params(seed) if params is None else self._take_params(params)
        self.grads = {key: self.xp.zeros_like(value) for key, value in self.params.items()}
        self.training = True
        self.dropout_rng = np.random.default_rng([seed, 1])  # its own stream, apart from the init's
        self._cache = None

    # --- parameters ----------------------------------------------------------------------------
    def _init_params(self, seed):
        """Each parameter as config.param_specs says: N(0, init_std) weights, N(0, residual_init_std)
        residual projections, zero biases, unit norm scales. Drawn on the CPU in float64, in the table's
        order, so a seed gives the same model on every device and dtype."""
        cfg = self.config
        rng = np.random.default_rng(seed)
        params = {}
        for key, (shape, init) in param_specs(cfg).items():
            if init == "ones":
                value = np.ones(shape)
            elif init == "zeros":
                value = np.zeros(shape)
            else:
                std = cfg.residual_init_std if init == "residual" else cfg.init_std
                value = rng.standard_normal(shape) * std
            params[key] = self.xp.asarray(value.astype(self.dtype))
        return params

    def _take_params(self, params):
        expected = param_shapes(self.config)
        check_tensor_set("params do not fit the config", expected, params)
        return {k: to_device(params[k], self.device, self.dtype) for k in expected}

    def attention_maps(self):
        """The attention probabilities of the last forward, one (B, H, T, S) array per layer (for plots)."""
        if self._cache is None:
            raise ValueError("attention_maps: no forward to read (call forward first, without a kv_cache)")
        if any(block.attn.impl != "reference" for block in self._cache.blocks):
            raise ValueError("attention_maps: a flash kernel keeps no probabilities; use attention_impl='reference'")
        maps = []
        for block in self._cache.blocks:
            probs = block.attn.attention.probs                                   # (B, Hkv, g*T, S)
            B, Hkv, gT, S = probs.shape
            g = self.config.n_head // Hkv
            maps.append(probs.reshape(B, Hkv * g, gT // g, S))                   # (B, H, T, S)
        return maps

    def num_params(self):
        """How many numbers the model learns."""
        return sum(int(p.size) for p in self.params.values())

    def zero_grad(self):
        """Set every gradient to 0 (in place: whoever holds model.grads[k] sees it)."""
        for g in self.grads.values():
            g[...] = 0

    def train(self, mode=True):
        """Dropout on (when config.dropout > 0). Returns the model."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Dropout off. Returns the model."""
        return self.train(False)

    # --- forward -------------------------------------------------------------------------------
    def forward(self, ids, position_ids=None, block_position_ids=None, prefix_len=None, attn_mask=None,
                pad_len=None, kv_cache=None):
        """ids int (B, T) -> logits (B, T, V); keeps what backward needs.

        position_ids int (T,) or (B, T): default 0..T-1 (counted from the first real token, see pad_len).
        block_position_ids (GLM's second position, positions "glm2d" / "rope2d"): default all 0.
        prefix_len int or int (B,) in [0, T] (attention "prefix" models): the first prefix_len tokens
            attend to each other bidirectionally; None = causal everywhere.
        attn_mask bool (T, T) or (B, T, T), True = may attend: replaces the mask of every layer.
        pad_len int or int (B,): sample b begins with pad_len[b] padding tokens (prompts of different
            lengths, left-padded): no real token attends to them.
        kv_cache a KVCache (generation; no backward): ids are the T positions after the kv_cache.length
            already stored; their keys and values are added to it. prefix_len and pad_len are the cache's.
        """
        cfg, p = self.config, self.params
        B, T = self._check_ids_shape(ids, kv_cache)
        past = 0
        if kv_cache is not None:
            if prefix_len is not None or pad_len is not None or attn_mask is not None:
                raise ValueError("with a kv_cache, give prefix_len and pad_len to the KVCache, and no attn_mask")
            prefix_len, pad_len, past = kv_cache.prefix_len, kv_cache.pad_len, kv_cache.length
        masks = self._masks(B, T, prefix_len, attn_mask, pad_len, past)
        context = self.block_context(B, T, position_ids, block_position_ids, pad_len, past, kv_cache)

        x, emb_cache = embedding_forward(ids, p["wte"])                          # (B, T, C), checks the ids
        x, pos_cache = self._add_positions(x, context)                           # (B, T, C)
        x, drop_cache = self._dropout(x)
        block_caches = []
        for i in range(cfg.n_layer):
            x, cache = self.block_forward(x, i, masks[i], context)              # (B, T, C)
            block_caches.append(cache)
        norm_cache = None
        if cfg.final_norm:
            x, norm_cache = self._norm_forward(x, "norm_f")                      # (B, T, C)
        head = p["wte"].T if cfg.tie_embeddings else p["lm_head"]                # (C, V)
        logits, head_cache = linear_forward(x, head)                             # (B, T, V)

        if kv_cache is None:
            self._cache = ForwardCache(logits.shape, emb_cache, pos_cache, drop_cache, block_caches, norm_cache,
                                       head_cache)
        else:
            kv_cache.length += T
            self._cache = None                                                   # nothing to go back through
        return logits

    def block_context(self, B, T, position_ids=None, block_position_ids=None, pad_len=None, past=0, kv_cache=None):
        """The BlockContext of a forward over (B, T) tokens after `past` cached ones: checked (B, T) position
        ids (default past..past+T-1, less the left padding), GLM's block position ids (default 0) and RoPE's
        cos and sin, each made once."""
        cfg = self.config
        pos, block_pos = self._positions(B, T, position_ids, block_position_ids, pad_len, past)
        rope = None
        if cfg.rotary == "rope":
            rope = rope_cos_sin(pos, cfg.rotary_dim, cfg.rope_theta, self.dtype)  # (B, 1, T, rd/2) each
        return BlockContext(pos, block_pos, rope, kv_cache)

    def _add_positions(self, x, context):
        """x (B, T, C) plus the absolute position vectors: a learned table, GLM's two tables, or the
        sinusoidal encoding (no parameters). RoPE models add nothing here: they rotate q and k."""
        cfg, p = self.config, self.params
        if cfg.positions == "learned":
            pe, cache = learned_position_forward(context.pos, p["wpe"])         # (B, T, C)
        elif cfg.positions == "glm2d":
            pe, cache = glm_position_forward(context.pos, context.block_pos, p["wpe"], p["wbpe"])  # (B, T, C)
        elif cfg.positions == "sinusoidal":
            pe, cache = sinusoidal_encoding(context.pos, cfg.d_model, self.dtype), None   # (B, T, C)
        else:
            return x, None
        return x + pe, cache

    def block_forward(self, x, i, mask, context):
        """One transformer block, wired by config.norm_placement. x (B, T, C) -> (B, T, C), BlockCache.
        mask: bool (T, T) or (B, T, T), True = may attend (forward builds one per layer).
        context: the BlockContext of this forward (Model.block_context)."""
        name = f"blocks.{i}"
        if self.config.norm_placement == "post":                                # x = LN(x + f(x))
            a, att = self._attention_sublayer(x, i, mask, context)
            x, n1 = self._norm_forward(x + a, f"{name}.norm1")
            m, mlp = self._mlp_sublayer(x, i)
            out, n2 = self._norm_forward(x + m, f"{name}.norm2")
            return out, BlockCache(n1, att, n2, mlp)
        h, n1 = self._norm_forward(x, f"{name}.norm1")                           # pre:      x = x + f(LN(x))
        a, att = self._attention_sublayer(h, i, mask, context)                   # deepnorm: x = a*LN(x) + f(LN(x))
        x = self._residual(x, h) + a
        h, n2 = self._norm_forward(x, f"{name}.norm2")
        m, mlp = self._mlp_sublayer(h, i)
        out = self._residual(x, h) + m
        return out, BlockCache(n1, att, n2, mlp)

    def _residual(self, x, h):
        """What a sublayer's output f(h) is added to: x itself ("pre"), or alpha * h, h = LN(x) ("deepnorm")."""
        cfg = self.config
        return cfg.deepnorm_alpha * h if cfg.norm_placement == "deepnorm" else x

    def _attention_sublayer(self, h, i, mask, context):
        """h (B, T, C) -> (B, T, C): project, split heads, QK-norm, rotate, attend, merge, project, drop."""
        cfg, p, name = self.config, self.params, f"blocks.{i}.attn"
        # q, k, v = h @ wq, h @ wk, h @ wv as ONE matmul with the three weights side by side: one wide matmul
        # runs nearer the BLAS peak than three thin ones, and its backward gives dh in one matmul, not three.
        w, b = self.joined_qkv(i) if context.kv_cache is None else context.kv_cache.qkv_weights[i]
        qkv, qkv_cache = linear_forward(h, w, b)                                 # (B, T, (H+2Hkv)D)
        q, k, v = self.xp.split(qkv, self._qkv_splits, axis=-1)                  # (B, T, H*D), 2 x (B, T, Hkv*D)
        q = split_heads(q, cfg.n_head)                                           # (B, H, T, D)
        k = split_heads(k, cfg.n_kv_head)                                        # (B, Hkv, T, D)
        v = split_heads(v, cfg.n_kv_head)                                        # (B, Hkv, T, D)
        qk_cache = None
        if cfg.qk_norm:
            q, k, qk_cache = qk_norm_forward(q, k, p[f"{name}.q_norm.w"], p[f"{name}.k_norm.w"], cfg.norm_eps)
        q, q_rot = self._rotate(q, context)                                      # (B, H, T, D)
        k, k_rot = self._rotate(k, context)                                      # (B, Hkv, T, D)
        if context.kv_cache is not None:
            k, v = context.kv_cache.store(i, k, v)                               # (B, Hkv, S, D): all so far
        o, att_cache, impl = self._attend(q, k, v, mask)                        # (B, H, T, D)
        o = merge_heads(o)                                                       # (B, T, H*D)
        out, o_cache = linear_forward(o, p[f"{name}.wo"], p.get(f"{name}.bo"))   # (B, T, C)
        out, drop_cache = self._dropout(out)
        return out, AttentionSublayerCache(qkv_cache, qk_cache, q_rot, k_rot, att_cache, impl, o_cache, drop_cache)

    def joined_qkv(self, i):
        """Layer i's wq, wk, wv side by side, (C, (H + 2Hkv) D), and bq, bk, bv, ((H + 2Hkv) D,) or None
        without qkv biases. Fresh arrays: the three parameters stay the ones trained."""
        name = f"blocks.{i}.attn"
        w = self.xp.concatenate([self.params[f"{name}.w{proj}"] for proj in "qkv"], axis=-1)
        if f"{name}.bq" not in self.params:
            return w, None
        return w, self.xp.concatenate([self.params[f"{name}.b{proj}"] for proj in "qkv"], axis=-1)

    @property
    def _qkv_splits(self):
        """Where q ends and k ends along the last axis of the joined projection."""
        cfg = self.config
        return [cfg.n_head * cfg.head_dim, (cfg.n_head + cfg.n_kv_head) * cfg.head_dim]

    def _attend(self, q, k, v, mask):
        """The attention core: a dense boolean mask goes to the NumPy reference, a MaskSpec to the flash
        kernel of config.attention_impl (same result, O(T) memory). -> out (B, H, T, D), cache, impl."""
        if isinstance(mask, MaskSpec):
            impl = self._flash_impl()
            out, cache = flash_attention_forward(q, k, v, mask, impl=impl)
            return out, cache, impl
        out, cache = attention_forward(q, k, v, mask)
        return out, cache, "reference"

    def _flash_impl(self):
        impl = self.config.attention_impl
        return ("flash-cuda" if self.device == "cuda" else "flash-cpu") if impl == "auto" else impl

    def _uses_flash(self, T):
        """Does attention over T queries run on a flash kernel (config.attention_impl, "auto" by size)?"""
        impl = self.config.attention_impl
        if impl == "auto":
            return self.device == "cuda" or T >= AUTO_FLASH_CPU_MIN_T
        return impl != "reference"

    def _rotate(self, x, context):
        """RoPE on x (B, H|Hkv, T, D), by one position id ("rope") or GLM's two ("rope2d"); x as it is
        (and no cache) without rotary positions."""
        cfg = self.config
        if cfg.rotary == "rope":
            cos, sin = context.rope
            forward = self._rope()[0]
            return forward(x, cos, sin, cfg.rotary_dim, cfg.rope_pairing)       # (B, H|Hkv, T, D)
        if cfg.rotary == "rope2d":
            return rope2d_forward(x, context.pos, context.block_pos, cfg.rope_theta)   # (B, H|Hkv, T, D)
        return x, None

    def _mlp_sublayer(self, h, i):
        """h (B, T, C) -> (B, T, C): the plain 2-layer MLP or the gated one (SwiGLU / GeGLU), then dropout."""
        cfg, p, name = self.config, self.params, f"blocks.{i}.mlp"
        if cfg.gated:
            out, mlp_cache = gated_mlp_forward(h, p[f"{name}.w_gate"], p[f"{name}.w_up"], p[f"{name}.w_down"],
                                               self._activation())               # (B, T, C)
        else:
            out, mlp_cache = mlp_forward(h, p[f"{name}.w_up"], p.get(f"{name}.b_up"), p[f"{name}.w_down"],
                                         p.get(f"{name}.b_down"), self._activation())   # (B, T, C)
        out, drop_cache = self._dropout(out)
        return out, MlpSublayerCache(mlp_cache, drop_cache)

    def _activation(self):
        """The MLP's activation. Fused, GELU-tanh and SwiGLU's gate run in one pass over the hidden layer
        instead of eight (minigpt.kernels.elementwise_cpu; the same formulas)."""
        name = self.config.mlp_activation
        if name in ("gelu_tanh", "silu") and self._fused:
            return f"{name}_fused"
        return name

    @property
    def _fused(self):
        """Do the norms, RoPE and the MLP's activation run as Numba kernels? In float32 on a CPU, yes; float64 (a
        gradient check) and a GPU keep the NumPy reference of minigpt.layers."""
        return self.device == "cpu" and self.dtype == np.float32

    def _norms(self):
        """Where the norm functions come from: minigpt.layers.norms, or, fused, minigpt.kernels.norms_cpu (the
        same formulas and caches, one pass per row instead of seven NumPy passes over the whole array)."""
        if self._fused:
            from minigpt.kernels import norms_cpu
            return norms_cpu
        return norms

    def _rope(self):
        """RoPE's (forward, backward): minigpt.layers.rope's, or, fused, minigpt.kernels.rope_cpu's (the same
        arithmetic and cache, one pass that also leaves q and k contiguous for the flash kernel)."""
        if self._fused:
            from minigpt.kernels import rope_cpu
            return rope_cpu.rope_forward, rope_cpu.rope_backward
        return rope_forward, rope_backward

    def _norm_forward(self, x, name):
        if self.config.norm_has_bias:
            return self._norms().layernorm_forward(x, self.params[f"{name}.w"], self.params[f"{name}.b"],
                                                   self.config.norm_eps)
        return self._norms().rmsnorm_forward(x, self.params[f"{name}.w"], self.config.norm_eps)

    def _dropout(self, x):
        if self.config.dropout == 0 or not self.training:
            return x, None
        return dropout_forward(x, self.config.dropout, self.dropout_rng, train=True)

    # --- backward ------------------------------------------------------------------------------
    def backward(self, dlogits):
        """dlogits (B, T, V), the loss gradient of the last forward's logits: adds every parameter's
        gradient into model.grads (call zero_grad first for a fresh step)."""
        cache = self._cache
        if cache is None:
            raise ValueError("backward: no forward to go back through (call forward first; "
                             "each forward supports one backward)")
        dlogits = self.xp.asarray(dlogits)                                       # onto the model's device
        if dlogits.shape != cache.logits_shape:
            raise ValueError(f"backward: dlogits has shape {dlogits.shape}, expected the logits' "
                             f"{cache.logits_shape}")
        if dlogits.dtype != self.dtype:
            raise ValueError(f"backward: dlogits has dtype {dlogits.dtype}, expected the model's "
                             f"{np.dtype(self.dtype)} (nothing is cast silently)")
        self._cache = None
        cfg, g = self.config, self.grads

        dx, dhead, _ = linear_backward(dlogits, cache.head)                      # undoes logits = x @ head
        if cfg.tie_embeddings:
            g["wte"] += dhead.T                                                  # head = wte.T: (C, V) -> (V, C)
        else:
            g["lm_head"] += dhead
        if cfg.final_norm:
            dx = self._norm_backward(dx, cache.final_norm, "norm_f")
        for i in reversed(range(cfg.n_layer)):
            dx = self.block_backward(dx, i, cache.blocks[i])
        dx = self._dropout_backward(dx, cache.dropout)
        self._positions_backward(dx, cache.positions)
        g["wte"] += embedding_backward(dx, cache.embedding)                      # undoes x = wte[ids]

    def _positions_backward(self, dx, cache):
        """The position tables' gradients: undoes x + wpe[pos] (+ wbpe[block_pos] for GLM)."""
        cfg, g = self.config, self.grads
        if cfg.positions == "learned":
            g["wpe"] += learned_position_backward(dx, cache)
        elif cfg.positions == "glm2d":
            dwpe, dwbpe = glm_position_backward(dx, cache)
            g["wpe"] += dwpe
            g["wbpe"] += dwbpe

    def block_backward(self, dout, i, cache):
        """dout (B, T, C) -> dx (B, T, C), the block's parameter gradients added into model.grads."""
        name = f"blocks.{i}"
        if self.config.norm_placement == "post":
            dy = self._norm_backward(dout, cache.norm2, f"{name}.norm2")         # undoes out = LN2(y), y = x + m(x)
            dx = dy + self._mlp_sublayer_backward(dy, cache.mlp, i)
            dz = self._norm_backward(dx, cache.norm1, f"{name}.norm1")           # undoes x = LN1(z), z = x_in + a(x_in)
            return dz + self._attention_sublayer_backward(dz, cache.attn, i)
        dh = self._mlp_sublayer_backward(dout, cache.mlp, i)                     # undoes out = r(x, h2) + m(h2)
        dx = self._residual_backward(dout, dh, cache.norm2, f"{name}.norm2")     # ... and h2 = LN2(x)
        dh = self._attention_sublayer_backward(dx, cache.attn, i)                # undoes x = r(x_in, h1) + a(h1)
        return self._residual_backward(dx, dh, cache.norm1, f"{name}.norm1")     # ... and h1 = LN1(x_in)

    def _residual_backward(self, dout, dh, norm_cache, name):
        """Undoes out = r(x, h) + f(h), h = LN(x), given dh, the gradient that came through f to h.
        "pre": r = x, so dout also reaches x directly; "deepnorm": r = alpha*h, so alpha*dout joins dh."""
        cfg = self.config
        if cfg.norm_placement == "deepnorm":
            return self._norm_backward(dh + cfg.deepnorm_alpha * dout, norm_cache, name)
        return dout + self._norm_backward(dh, norm_cache, name)

    def _attention_sublayer_backward(self, dout, cache, i):
        cfg, g, name = self.config, self.grads, f"blocks.{i}.attn"
        dout = self._dropout_backward(dout, cache.dropout)
        do, dwo, dbo = linear_backward(dout, cache.out_proj)                     # undoes the output projection
        g[f"{name}.wo"] += dwo
        if dbo is not None:
            g[f"{name}.bo"] += dbo
        do = split_heads(do, cfg.n_head)                                         # (B, H, T, D) undoes merge_heads
        if cache.impl == "reference":
            dq, dk, dv = attention_backward(do, cache.attention)                 # (B, H|Hkv, T, D)
        else:
            dq, dk, dv = flash_attention_backward(do, cache.attention)           # recomputes, tile by tile
        dq = self._rotate_backward(dq, cache.q_rot)                              # rotate back
        dk = self._rotate_backward(dk, cache.k_rot)
        if cfg.qk_norm:
            dq, dk, dq_w, dk_w = qk_norm_backward(dq, dk, cache.qk_norm)         # undoes the QK-norm
            g[f"{name}.q_norm.w"] += dq_w
            g[f"{name}.k_norm.w"] += dk_w
        dqkv = self.xp.concatenate([merge_heads(d) for d in (dq, dk, dv)], axis=-1)   # (B, T, (H+2Hkv)D)
        dh, dw, db = linear_backward(dqkv, cache.qkv_proj)                       # (B, T, C) undoes the joined matmul
        for proj, dw_part in zip("qkv", self.xp.split(dw, self._qkv_splits, axis=-1)):
            g[f"{name}.w{proj}"] += dw_part                                      # undoes the joining
        if db is not None:
            for proj, db_part in zip("qkv", self.xp.split(db, self._qkv_splits)):
                g[f"{name}.b{proj}"] += db_part
        return dh

    def _rotate_backward(self, dout, cache):
        """Undoes _rotate: the inverse rotation (dout as it is without rotary positions)."""
        rotary = self.config.rotary
        if rotary == "rope":
            return self._rope()[1](dout, cache)
        if rotary == "rope2d":
            return rope2d_backward(dout, cache)
        return dout

    def _mlp_sublayer_backward(self, dout, cache, i):
        g, name = self.grads, f"blocks.{i}.mlp"
        dout = self._dropout_backward(dout, cache.dropout)
        if self.config.gated:
            dh, dw_gate, dw_up, dw_down = gated_mlp_backward(dout, cache.mlp)
            g[f"{name}.w_gate"] += dw_gate
        else:
            dh, dw_up, db_up, dw_down, db_down = mlp_backward(dout, cache.mlp)
            if db_up is not None:
                g[f"{name}.b_up"] += db_up
                g[f"{name}.b_down"] += db_down
        g[f"{name}.w_up"] += dw_up
        g[f"{name}.w_down"] += dw_down
        return dh

    def _norm_backward(self, dout, cache, name):
        if self.config.norm_has_bias:
            dx, dw, db = self._norms().layernorm_backward(dout, cache)
            self.grads[f"{name}.b"] += db
        else:
            dx, dw = self._norms().rmsnorm_backward(dout, cache)
        self.grads[f"{name}.w"] += dw
        return dx

    def _dropout_backward(self, dout, cache):
        return dout if cache is None else dropout_backward(dout, cache)

    # --- inputs --------------------------------------------------------------------------------
    # Each input is checked once. The ids' dtype and range: embedding_forward; position ids that index a
    # table: the table's lookup (positions.py); prefix_len: masks.prefix_mask. Here: what only the model knows.
    def _check_ids_shape(self, ids, kv_cache):
        """(B, T) of the token ids; T (after what the cache holds) must fit the position tables and the cache."""
        shape = getattr(ids, "shape", np.shape(ids))
        if len(shape) != 2 or 0 in shape:
            raise ValueError(f"ids: expected a non-empty integer array of shape (B, T), got shape {shape}")
        B, T = shape
        past = 0 if kv_cache is None else kv_cache.length
        if self.config.position_tables and past + T > self.config.max_seq_len:
            raise ValueError(f"ids: T={past + T} tokens, but the position table has max_seq_len="
                             f"{self.config.max_seq_len} rows")
        if kv_cache is not None and (B != kv_cache.batch_size or past + T > kv_cache.capacity):
            raise ValueError(f"ids: shape {shape} after {past} cached positions does not fit the KVCache "
                             f"(batch {kv_cache.batch_size}, capacity {kv_cache.capacity})")
        return shape

    def _position_array(self, name, value, B, T):
        """An int (T,) or (B, T) array -> (B, T) on the device. Without a table to look them up in
        (which checks the range), the ids are checked here to be >= 0."""
        value = self.xp.asarray(value)
        if not is_integer_array(value) or value.shape not in ((T,), (B, T)):
            raise ValueError(f"{name}: expected an integer array of shape (T,) = ({T},) or (B, T) = ({B}, {T}), "
                             f"got dtype {value.dtype} shape {value.shape}")
        if not self.config.position_tables:
            negative = to_numpy(value[value < 0])
            if negative.size:
                raise ValueError(f"{name}: {int(negative[0])} is out of range, expected ids >= 0")
        return self.xp.broadcast_to(value, (B, T))

    def _positions(self, B, T, position_ids, block_position_ids, pad_len, past):
        """(B, T) position ids (default past..past+T-1, counted from each sample's first real token), and
        block position ids for GLM (default 0), else None."""
        xp, cfg = self.xp, self.config
        if position_ids is None:
            pos = xp.arange(past, past + T)[None, :]                             # (1, T)
            if pad_len is not None:
                pos = xp.maximum(pos - xp.asarray(pad_len).reshape(-1, 1), 0)   # (B, T) padding: 0
            pos = xp.broadcast_to(pos, (B, T))                                   # (B, T)
        else:
            pos = self._position_array("position_ids", position_ids, B, T)
        if not cfg.block_positions:
            if block_position_ids is not None:
                raise ValueError(f"block_position_ids: only GLM's 2D positions use them (positions 'glm2d' "
                                 f"or 'rope2d'); this model has positions={cfg.positions!r}")
            return pos, None
        if block_position_ids is None:
            return pos, xp.zeros((B, T), dtype=pos.dtype)                        # (B, T) everything in Part A
        return pos, self._position_array("block_position_ids", block_position_ids, B, T)

    def _masks(self, B, T, prefix_len, attn_mask, pad_len, past):
        """One boolean mask per layer, True = may attend: (T, S) or (B, T, S) over S = past + T keys.
        Layers with local attention (config.local_attention) get their window (masks.attention_mask)."""
        cfg = self.config
        if attn_mask is not None:
            if prefix_len is not None or pad_len is not None:
                raise ValueError("give prefix_len / pad_len or attn_mask, not both (attn_mask replaces every mask)")
            return [self._batch_sized(explicit_mask(attn_mask, T, xp=self.xp), B, "attn_mask")] * cfg.n_layer
        if prefix_len is not None and cfg.attention != "prefix":
            raise ValueError(f"prefix_len: this model has attention={cfg.attention!r}; only "
                             f"attention='prefix' models (GLM, ChatGLM-6B) take a prefix")
        masks = {}                                                               # local kind -> mask, built once
        for kind in {cfg.local_attention(i) for i in range(cfg.n_layer)}:
            if self._uses_flash(T):                                              # the rule as numbers, no (T, S) array
                for name, value in (("prefix_len", prefix_len), ("pad_len", pad_len)):
                    lengths = per_sample_lengths(name, value, past + T)
                    if lengths is not None and lengths.size not in (1, B):
                        raise ValueError(f"{name}: one per sample expected, got {lengths.size} for a batch of B={B}: "
                                         f"expected shape (B,) = ({B},)")
                masks[kind] = MaskSpec.from_mask_args(T, past + T, prefix_len, pad_len, kind, cfg.attn_window)
                continue
            mask = attention_mask(T, past + T, prefix_len, pad_len, kind, cfg.attn_window, xp=self.xp)
            masks[kind] = self._batch_sized(mask, B, "prefix_len / pad_len")    # (T, S) or (B, T, S)
        return [masks[cfg.local_attention(i)] for i in range(cfg.n_layer)]

    @staticmethod
    def _batch_sized(mask, B, given):
        if mask.ndim == 3 and mask.shape[0] != B:
            raise ValueError(f"{given}: one per sample expected, got a mask of shape {mask.shape} for a batch "
                             f"of B={B}: expected shape (B,) = ({B},) for prefix_len / pad_len, (B, T, T) for "
                             f"attn_mask")
        return mask
