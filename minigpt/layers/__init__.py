"""Layers: plain forward/backward function pairs. `*_forward(...) -> (out, cache)`,
`*_backward(dout, cache) -> gradients in the order of the forward's inputs`."""
