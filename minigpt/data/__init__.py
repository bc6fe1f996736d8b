"""Data: the built-in corpus and text files, CLM batches, synthetic tasks, GLM's blank-infilling collator."""
from .batches import (BatchSampler, encode_tokens, load_tokens, prepare_tokens, save_tokens,
                      sequential_batches, split_tokens, token_dtype)
from .corpus import BUILTIN, builtin_corpus, load_corpus
from .glm import (IGNORE_INDEX, GLMBatch, GLMCollator, GLMSample, GLMSpecialIds, glm_collate, glm_sample,
                  poisson_length_pmf, sample_generation_span, sample_sentence_spans, sample_spans)
from .synthetic import Example, addition, copy_task, examples_to_batch, few_shot, reverse_task

__all__ = [
    "BUILTIN", "builtin_corpus", "load_corpus",
    "BatchSampler", "encode_tokens", "load_tokens", "prepare_tokens", "save_tokens", "sequential_batches",
    "split_tokens", "token_dtype",
    "IGNORE_INDEX", "GLMBatch", "GLMCollator", "GLMSample", "GLMSpecialIds", "glm_collate", "glm_sample",
    "poisson_length_pmf", "sample_generation_span", "sample_sentence_spans", "sample_spans",
    "Example", "addition", "copy_task", "examples_to_batch", "few_shot", "reverse_task",
]
