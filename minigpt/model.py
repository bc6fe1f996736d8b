"""The decoder-only language model: GPT-1, GPT-2, GPT-3, LLaMA, GLM and ChatGLM from one recipe.

Dimensions: B batch, T time, C channels (d_model), V vocab, L layers, H query heads, Hkv key/value heads,
D head dim, F MLP hidden size.

    ids (B, T)
      -> x = wte[ids] (+ position vectors: learned, sinusoidal, or GLM's two tables)   (B, T, C)
      -> L blocks, each an attention sublayer and an MLP sublayer, wired by norm_placement:
             "pre"       x = x + attn(LN1(x));        x = x + mlp(LN2(x))          GPT-2/3, LLaMA, GLM, ChatGLM2, GLM-4
             "post"      x = LN1(x + attn(x));        x = LN2(x + mlp(x))          GPT-1
             "deepnorm"  h = LN1(x); x = a*h + attn(h); h = LN2(x); x = a*h + mlp(h), a = sqrt(2L)   ChatGLM-6B
                         (DeepNet's x = LN(a*x + f(x)) with the LN moved to the next block's input)
      -> final norm (all but GPT-1)
      -> logits = x @ wte.T (tied) or x @ lm_head                                      (B, T, V)

The attention sublayer: q, k, v projections (B, T, C) -> (B, H|Hkv, T, D), RoPE on q and k for
positions "rope" / "rope2d", masked softmax attention (kv heads shared by groups of query heads),
merged heads, output projection. The mask is causal; GLM's prefix mask when prefix_len is given;
GPT-3's odd layers are also locally banded; an explicit attn_mask replaces all of them.

Every step keeps its layer's cache; backward walks them in reverse and ACCUMULATES into model.grads
(a tied wte gets both its embedding and its output-head gradient).
"""
import numpy as np

from minigpt.backend import is_integer_array, resolve_device, resolve_dtype, to_device, to_numpy, xp_for
from minigpt.config import ModelConfig, param_shapes
from minigpt.layers.attention import attention_backward, attention_forward, merge_heads, split_heads
from minigpt.layers.dropout import dropout_backward, dropout_forward
from minigpt.layers.embedding import embedding_backward, embedding_forward
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.layers.mlp import gated_mlp_backward, gated_mlp_forward, mlp_backward, mlp_forward
from minigpt.layers.norms import layernorm_backward, layernorm_forward, rmsnorm_backward, rmsnorm_forward
from minigpt.layers.positions import (glm_position_backward, glm_position_forward, learned_position_backward,
                                      learned_position_forward, sinusoidal_encoding)
from minigpt.layers.rope import rope2d_backward, rope2d_forward, rope_backward, rope_cos_sin, rope_forward
from minigpt.masks import banded_mask, causal_mask, explicit_mask, prefix_mask

GATE_ACTIVATION = {"swiglu": "silu", "geglu": "gelu"}  # the activation on the gate of a gated MLP


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
        """N(0, init_std) weights (residual projections std/sqrt(2L) with scaled_residual_init),
        zero biases, unit norm scales. Drawn on the CPU in float64, so a seed gives the same model
        on every device and dtype."""
        cfg = self.config
        rng = np.random.default_rng(seed)
        params = {}
        for key, shape in param_shapes(cfg).items():
            leaf = key.rsplit(".", 1)[-1]
            if "norm" in key:
                value = np.ones(shape) if leaf == "w" else np.zeros(shape)
            elif leaf in ("bq", "bk", "bv", "bo", "b_up", "b_down"):
                value = np.zeros(shape)
            else:
                std = cfg.init_std
                if cfg.scaled_residual_init and leaf in ("wo", "w_down"):
                    std = cfg.init_std / np.sqrt(2 * cfg.n_layer)
                value = rng.standard_normal(shape) * std
            params[key] = self.xp.asarray(value.astype(self.dtype))
        return params

    def _take_params(self, params):
        expected = param_shapes(self.config)
        missing = sorted(set(expected) - set(params))
        unexpected = sorted(set(params) - set(expected))
        wrong = sorted(f"{k}: {tuple(params[k].shape)} != {expected[k]}"
                       for k in set(expected) & set(params) if tuple(params[k].shape) != expected[k])
        problems = [f"{what} {keys}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)) if keys]
        if problems:
            raise ValueError("params do not fit the config: " + "; ".join(problems))
        return {k: to_device(params[k], self.device, self.dtype) for k in expected}

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
    def forward(self, ids, position_ids=None, block_position_ids=None, prefix_len=None, attn_mask=None):
        """ids int (B, T) -> logits (B, T, V); keeps what backward needs.

        position_ids int (T,) or (B, T): default 0..T-1.
        block_position_ids (GLM's second position, positions "glm2d" / "rope2d"): default all 0.
        prefix_len int or int (B,) in [0, T] (attention "prefix" models): the first prefix_len tokens
            attend to each other bidirectionally; None = causal everywhere.
        attn_mask bool (T, T) or (B, T, T), True = may attend: replaces the mask of every layer.
        """
        cfg, p = self.config, self.params
        ids = self._check_ids(ids)
        B, T = ids.shape
        pos, block_pos = self._positions(B, T, position_ids, block_position_ids)
        masks = self._masks(B, T, prefix_len, attn_mask)
        rope = None
        if cfg.positions == "rope":
            rope = rope_cos_sin(pos, cfg.rotary_dim, cfg.rope_theta, self.dtype)  # (B, 1, T, rd/2) each

        x, emb_cache = embedding_forward(ids, p["wte"])                          # (B, T, C)
        pos_cache = None
        if cfg.positions == "learned":
            pe, pos_cache = learned_position_forward(pos, p["wpe"])              # (B, T, C)
            x = x + pe
        elif cfg.positions == "glm2d":
            pe, pos_cache = glm_position_forward(pos, block_pos, p["wpe"], p["wbpe"])  # (B, T, C)
            x = x + pe
        elif cfg.positions == "sinusoidal":
            x = x + sinusoidal_encoding(pos, cfg.d_model, self.dtype)            # (B, T, C), no parameters
        x, drop_cache = self._dropout(x)

        context = dict(pos=pos, block_pos=block_pos, rope=rope)
        block_caches = []
        for i in range(cfg.n_layer):
            x, cache = self.block_forward(x, i, masks[i], context)              # (B, T, C)
            block_caches.append(cache)

        norm_cache = None
        if cfg.final_norm:
            x, norm_cache = self._norm_forward(x, "norm_f")                      # (B, T, C)
        head = p["wte"].T if cfg.tie_embeddings else p["lm_head"]                # (C, V)
        logits, head_cache = linear_forward(x, head)                             # (B, T, V)

        self._cache = (logits.shape, emb_cache, pos_cache, drop_cache, block_caches, norm_cache, head_cache)
        return logits

    def block_forward(self, x, i, mask, context):
        """One transformer block, wired by config.norm_placement. x (B, T, C) -> (B, T, C), cache.
        mask: bool (T, T) or (B, T, T), True = may attend (forward builds one per layer).
        context: what every block shares, made once per forward: dict(pos=(B, T) position ids,
            block_pos=(B, T) block position ids or None, rope=(cos, sin) for positions "rope" or None).
        """
        cfg, name = self.config, f"blocks.{i}"
        if cfg.norm_placement == "pre":                                          # x + f(LN(x))
            h, n1 = self._norm_forward(x, f"{name}.norm1")
            a, att = self._attention_forward(h, i, mask, context)
            a, d1 = self._dropout(a)
            x = x + a
            h, n2 = self._norm_forward(x, f"{name}.norm2")
            m, mlp = self._mlp_forward(h, i)
            m, d2 = self._dropout(m)
            out = x + m
        elif cfg.norm_placement == "post":                                       # LN(x + f(x))
            a, att = self._attention_forward(x, i, mask, context)
            a, d1 = self._dropout(a)
            x, n1 = self._norm_forward(x + a, f"{name}.norm1")
            m, mlp = self._mlp_forward(x, i)
            m, d2 = self._dropout(m)
            out, n2 = self._norm_forward(x + m, f"{name}.norm2")
        else:                                                                    # deepnorm: a*LN(x) + f(LN(x))
            alpha = cfg.deepnorm_alpha
            h, n1 = self._norm_forward(x, f"{name}.norm1")
            a, att = self._attention_forward(h, i, mask, context)
            a, d1 = self._dropout(a)
            x = alpha * h + a
            h, n2 = self._norm_forward(x, f"{name}.norm2")
            m, mlp = self._mlp_forward(h, i)
            m, d2 = self._dropout(m)
            out = alpha * h + m
        return out, (n1, att, d1, n2, mlp, d2)

    def _attention_forward(self, h, i, mask, context):
        """h (B, T, C) -> (B, T, C): project, split heads, rotate, attend, merge, project."""
        cfg, p, name = self.config, self.params, f"blocks.{i}.attn"
        q, q_cache = linear_forward(h, p[f"{name}.wq"], p.get(f"{name}.bq"))     # (B, T, H*D)
        k, k_cache = linear_forward(h, p[f"{name}.wk"], p.get(f"{name}.bk"))     # (B, T, Hkv*D)
        v, v_cache = linear_forward(h, p[f"{name}.wv"], p.get(f"{name}.bv"))     # (B, T, Hkv*D)
        q = split_heads(q, cfg.n_head)                                           # (B, H, T, D)
        k = split_heads(k, cfg.n_kv_head)                                        # (B, Hkv, T, D)
        v = split_heads(v, cfg.n_kv_head)                                        # (B, Hkv, T, D)
        rot_q = rot_k = None
        if cfg.positions == "rope":
            cos, sin = context["rope"]
            q, rot_q = rope_forward(q, cos, sin, cfg.rotary_dim, cfg.rope_pairing)   # (B, H, T, D)
            k, rot_k = rope_forward(k, cos, sin, cfg.rotary_dim, cfg.rope_pairing)   # (B, Hkv, T, D)
        elif cfg.positions == "rope2d":
            pos, block_pos = context["pos"], context["block_pos"]
            q, rot_q = rope2d_forward(q, pos, block_pos, cfg.rope_theta)         # (B, H, T, D)
            k, rot_k = rope2d_forward(k, pos, block_pos, cfg.rope_theta)         # (B, Hkv, T, D)
        o, att_cache = attention_forward(q, k, v, mask)                          # (B, H, T, D)
        o = merge_heads(o)                                                       # (B, T, H*D)
        out, o_cache = linear_forward(o, p[f"{name}.wo"], p.get(f"{name}.bo"))   # (B, T, C)
        return out, (q_cache, k_cache, v_cache, rot_q, rot_k, att_cache, o_cache)

    def _mlp_forward(self, h, i):
        """h (B, T, C) -> (B, T, C): the plain 2-layer MLP or the gated one (SwiGLU / GeGLU)."""
        cfg, p, name = self.config, self.params, f"blocks.{i}.mlp"
        if cfg.gated:
            return gated_mlp_forward(h, p[f"{name}.w_gate"], p[f"{name}.w_up"], p[f"{name}.w_down"],
                                     GATE_ACTIVATION[cfg.activation])            # (B, T, C)
        return mlp_forward(h, p[f"{name}.w_up"], p.get(f"{name}.b_up"), p[f"{name}.w_down"],
                           p.get(f"{name}.b_down"), cfg.activation)              # (B, T, C)

    def _norm_forward(self, x, name):
        if self.config.norm == "layernorm":
            return layernorm_forward(x, self.params[f"{name}.w"], self.params[f"{name}.b"], self.config.norm_eps)
        return rmsnorm_forward(x, self.params[f"{name}.w"], self.config.norm_eps)

    def _dropout(self, x):
        if self.config.dropout == 0 or not self.training:
            return x, None
        return dropout_forward(x, self.config.dropout, self.dropout_rng, train=True)

    # --- backward ------------------------------------------------------------------------------
    def backward(self, dlogits):
        """dlogits (B, T, V), the loss gradient of the last forward's logits: adds every parameter's
        gradient into model.grads (call zero_grad first for a fresh step)."""
        if self._cache is None:
            raise ValueError("backward: no forward to go back through (call forward first; "
                             "each forward supports one backward)")
        logits_shape, emb_cache, pos_cache, drop_cache, block_caches, norm_cache, head_cache = self._cache
        dlogits = self.xp.asarray(dlogits)                                       # onto the model's device
        if dlogits.shape != logits_shape:
            raise ValueError(f"backward: dlogits has shape {dlogits.shape}, expected the logits' {logits_shape}")
        if dlogits.dtype != self.dtype:
            raise ValueError(f"backward: dlogits has dtype {dlogits.dtype}, expected the model's "
                             f"{np.dtype(self.dtype)} (nothing is cast silently)")
        self._cache = None
        cfg, g = self.config, self.grads

        dx, dhead, _ = linear_backward(dlogits, head_cache)                      # undoes logits = x @ head
        if cfg.tie_embeddings:
            g["wte"] += dhead.T                                                  # head = wte.T: (C, V) -> (V, C)
        else:
            g["lm_head"] += dhead
        if cfg.final_norm:
            dx = self._norm_backward(dx, norm_cache, "norm_f")
        for i in reversed(range(cfg.n_layer)):
            dx = self.block_backward(dx, i, block_caches[i])
        dx = self._dropout_backward(dx, drop_cache)
        if cfg.positions == "learned":
            g["wpe"] += learned_position_backward(dx, pos_cache)                  # undoes x + wpe[pos]
        elif cfg.positions == "glm2d":
            dwpe, dwbpe = glm_position_backward(dx, pos_cache)                    # undoes x + wpe[pos] + wbpe[block]
            g["wpe"] += dwpe
            g["wbpe"] += dwbpe
        g["wte"] += embedding_backward(dx, emb_cache)                             # undoes x = wte[ids]

    def block_backward(self, dout, i, cache):
        """dout (B, T, C) -> dx (B, T, C), the block's parameter gradients added into model.grads."""
        cfg, name = self.config, f"blocks.{i}"
        n1, att, d1, n2, mlp, d2 = cache
        if cfg.norm_placement == "pre":
            # out = x + m(LN2(x)): the residual passes dout straight through, the MLP path adds to it
            dh = self._mlp_backward(self._dropout_backward(dout, d2), mlp, i)
            dx = dout + self._norm_backward(dh, n2, f"{name}.norm2")
            # x = x_in + a(LN1(x_in))
            dh = self._attention_backward(self._dropout_backward(dx, d1), att, i)
            return dx + self._norm_backward(dh, n1, f"{name}.norm1")
        if cfg.norm_placement == "post":
            dy = self._norm_backward(dout, n2, f"{name}.norm2")                  # undoes out = LN2(y), y = x + m(x)
            dx = dy + self._mlp_backward(self._dropout_backward(dy, d2), mlp, i)
            dz = self._norm_backward(dx, n1, f"{name}.norm1")                    # undoes x = LN1(z), z = x_in + a(x_in)
            return dz + self._attention_backward(self._dropout_backward(dz, d1), att, i)
        alpha = cfg.deepnorm_alpha
        # out = alpha*h2 + m(h2), h2 = LN2(x): both terms reach h2
        dh = alpha * dout + self._mlp_backward(self._dropout_backward(dout, d2), mlp, i)
        dx = self._norm_backward(dh, n2, f"{name}.norm2")
        # x = alpha*h1 + a(h1), h1 = LN1(x_in)
        dh = alpha * dx + self._attention_backward(self._dropout_backward(dx, d1), att, i)
        return self._norm_backward(dh, n1, f"{name}.norm1")

    def _attention_backward(self, dout, cache, i):
        cfg, g, name = self.config, self.grads, f"blocks.{i}.attn"
        q_cache, k_cache, v_cache, rot_q, rot_k, att_cache, o_cache = cache
        do, dwo, dbo = linear_backward(dout, o_cache)                            # undoes the output projection
        g[f"{name}.wo"] += dwo
        if dbo is not None:
            g[f"{name}.bo"] += dbo
        do = split_heads(do, cfg.n_head)                                         # (B, H, T, D) undoes merge_heads
        dq, dk, dv = attention_backward(do, att_cache)                           # (B, H|Hkv, T, D)
        if cfg.positions == "rope":
            dq, dk = rope_backward(dq, rot_q), rope_backward(dk, rot_k)          # rotate back
        elif cfg.positions == "rope2d":
            dq, dk = rope2d_backward(dq, rot_q), rope2d_backward(dk, rot_k)
        dh = 0
        for proj, d, proj_cache in (("q", dq, q_cache), ("k", dk, k_cache), ("v", dv, v_cache)):
            dh_part, dw, db = linear_backward(merge_heads(d), proj_cache)       # (B, T, C) undoes split, project
            g[f"{name}.w{proj}"] += dw
            if db is not None:
                g[f"{name}.b{proj}"] += db
            dh = dh + dh_part                                                    # h fed all three projections
        return dh

    def _mlp_backward(self, dout, cache, i):
        g, name = self.grads, f"blocks.{i}.mlp"
        if self.config.gated:
            dh, dw_gate, dw_up, dw_down = gated_mlp_backward(dout, cache)
            g[f"{name}.w_gate"] += dw_gate
        else:
            dh, dw_up, db_up, dw_down, db_down = mlp_backward(dout, cache)
            if db_up is not None:
                g[f"{name}.b_up"] += db_up
                g[f"{name}.b_down"] += db_down
        g[f"{name}.w_up"] += dw_up
        g[f"{name}.w_down"] += dw_down
        return dh

    def _norm_backward(self, dout, cache, name):
        if self.config.norm == "layernorm":
            dx, dw, db = layernorm_backward(dout, cache)
            self.grads[f"{name}.b"] += db
        else:
            dx, dw = rmsnorm_backward(dout, cache)
        self.grads[f"{name}.w"] += dw
        return dx

    def _dropout_backward(self, dout, cache):
        return dout if cache is None else dropout_backward(dout, cache)

    # --- inputs --------------------------------------------------------------------------------
    def _check_ids(self, ids):
        ids = self.xp.asarray(ids)
        if ids.ndim != 2 or 0 in ids.shape:
            raise ValueError(f"ids: expected a non-empty integer array of shape (B, T), got shape {ids.shape}")
        if not is_integer_array(ids):
            raise ValueError(f"ids: expected integer token ids, got dtype {ids.dtype}")
        bad = to_numpy(ids[(ids < 0) | (ids >= self.config.vocab_size)])
        if bad.size:
            raise ValueError(f"ids: token id {int(bad[0])} is out of range, expected 0 <= id < "
                             f"vocab_size = {self.config.vocab_size}")
        T = ids.shape[1]
        if self.config.positions in ("learned", "glm2d") and T > self.config.max_seq_len:
            raise ValueError(f"ids: T={T} tokens, but the position table has max_seq_len="
                             f"{self.config.max_seq_len} rows")
        return ids

    def _position_array(self, name, value, B, T):
        """An int (T,) or (B, T) array -> (B, T) on the device, checked to be >= 0 (and in the table)."""
        xp, cfg = self.xp, self.config
        value = xp.asarray(value)
        if not is_integer_array(value) or value.shape not in ((T,), (B, T)):
            raise ValueError(f"{name}: expected an integer array of shape (T,) = ({T},) or (B, T) = ({B}, {T}), "
                             f"got dtype {value.dtype} shape {value.shape}")
        high = cfg.max_seq_len if cfg.positions in ("learned", "glm2d") else None
        bad = to_numpy(value[(value < 0) | (value >= high)] if high else value[value < 0])
        if bad.size:
            expected = f"0 <= id < max_seq_len = {high}" if high else "ids >= 0"
            raise ValueError(f"{name}: {int(bad[0])} is out of range, expected {expected}")
        return xp.broadcast_to(value, (B, T))

    def _positions(self, B, T, position_ids, block_position_ids):
        """(B, T) position ids (default 0..T-1), and block position ids for GLM (default 0), else None."""
        xp, cfg = self.xp, self.config
        if position_ids is None:
            pos = xp.broadcast_to(xp.arange(T), (B, T))                          # (B, T)
        else:
            pos = self._position_array("position_ids", position_ids, B, T)
        if cfg.positions not in ("glm2d", "rope2d"):
            if block_position_ids is not None:
                raise ValueError(f"block_position_ids: only GLM's 2D positions use them (positions 'glm2d' "
                                 f"or 'rope2d'); this model has positions={cfg.positions!r}")
            return pos, None
        if block_position_ids is None:
            return pos, xp.zeros((B, T), dtype=pos.dtype)                        # (B, T) everything in Part A
        return pos, self._position_array("block_position_ids", block_position_ids, B, T)

    def _masks(self, B, T, prefix_len, attn_mask):
        """One boolean mask per layer, True = may attend: (T, T) or (B, T, T)."""
        xp, cfg = self.xp, self.config
        if attn_mask is not None:
            if prefix_len is not None:
                raise ValueError("give prefix_len or attn_mask, not both (attn_mask replaces every mask)")
            mask = explicit_mask(attn_mask, T, xp=xp)
            if mask.ndim == 3 and mask.shape[0] != B:
                raise ValueError(f"attn_mask: shape {mask.shape} for a batch of B={B}")
            return [mask] * cfg.n_layer
        if prefix_len is None:
            mask = causal_mask(T, xp=xp)                                         # (T, T)
        else:
            if cfg.attention != "prefix":
                raise ValueError(f"prefix_len: this model has attention={cfg.attention!r}; only "
                                 f"attention='prefix' models (GLM, ChatGLM-6B) take a prefix")
            mask = prefix_mask(T, self._check_prefix_len(prefix_len, B, T), xp=xp)   # (B, T, T)
        if cfg.attention_pattern == "dense":
            return [mask] * cfg.n_layer
        banded = mask & banded_mask(T, cfg.attn_window, xp=xp)                    # GPT-3: odd layers local
        return [mask if i % 2 == 0 else banded for i in range(cfg.n_layer)]

    @staticmethod
    def _check_prefix_len(prefix_len, B, T):
        sep = to_numpy(prefix_len)
        if not np.issubdtype(sep.dtype, np.integer) or sep.shape not in ((), (B,)):
            raise ValueError(f"prefix_len: expected an int or an integer array of shape (B,) = ({B},), "
                             f"got {prefix_len!r}")
        bad = sep[(sep < 0) | (sep > T)]
        if bad.size:
            raise ValueError(f"prefix_len: {int(bad.reshape(-1)[0])} is out of range, expected 0 <= prefix_len "
                             f"<= T = {T}")
        return np.broadcast_to(sep, (B,))
