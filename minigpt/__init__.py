"""minigpt: decoder-only language models built from scratch in NumPy, every backward pass by hand.

    import minigpt
    cfg = minigpt.ModelConfig.preset("llama", n_layer=2, d_model=64)
    model = minigpt.Model(cfg, seed=0)
    logits = model.forward(ids)                          # ids int (B, T) -> (B, T, V)
    loss, dlogits = minigpt.cross_entropy(logits, targets)
    model.zero_grad(); model.backward(dlogits)           # model.grads[k] matches model.params[k]
    out = minigpt.generate(model, prompt_ids, max_new_tokens=64, temperature=0.8, top_k=50, top_p=0.95, seed=0)
"""
__version__ = "0.1.0"

from minigpt import threads  # noqa: E402

threads.start()  # how many threads BLAS and Numba use: the free cores (MINIGPT_THREADS, minigpt/threads.py)

from minigpt.config import ModelConfig  # noqa: E402
from minigpt.layers.loss import cross_entropy  # noqa: E402
from minigpt.model import Model  # noqa: E402
from minigpt import hf  # noqa: E402  (minigpt.hf.load / save / to_hf_state_dict)
from minigpt.generate import generate, generate_stream  # noqa: E402

__all__ = ["ModelConfig", "Model", "cross_entropy", "generate", "generate_stream", "hf", "__version__"]
