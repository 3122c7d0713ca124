"""MiniLM on onnxruntime: the same vectors as sentence-transformers, unit length, batched and cached."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

SENTENCES = ["I love the color blue", "Make the lamp blue", "What time is it?", "hello",
             "Tell me about the volume of the Pacific Ocean, the largest and deepest of the oceans on earth.",
             "为什么天空是蓝色的？"]


def test_vectors_are_unit_length_and_independent_of_batching(minilm):
    batch = minilm.embed(SENTENCES)
    assert batch.shape == (len(SENTENCES), 384) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    fresh = type(minilm)(cache_size=0, batch_size=2)  # other batches, other padding, no cache
    assert np.allclose(fresh.embed(SENTENCES), batch, atol=1e-5)
    assert np.allclose(fresh.embed_one(SENTENCES[2]), batch[2], atol=1e-5)
    sims = batch @ batch.T
    assert sims[0, 1] > sims[0, 2]  # two sentences about blue are closer than blue and the time


def test_repeated_texts_come_from_the_cache(minilm):
    first = minilm.embed(["a sentence to remember"])
    assert "a sentence to remember" in minilm._cache
    assert np.array_equal(minilm.embed(["a sentence to remember"]), first)
    assert minilm.embed([]).shape == (0, 384)


async def test_embed_async(minilm):
    assert np.allclose((await minilm.embed_async(["hello"]))[0], minilm.embed_one("hello"))


def test_bad_budget_is_a_clear_error(minilm):
    with pytest.raises(ValueError, match="threads"):
        type(minilm)(threads=0)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None
                    or importlib.util.find_spec("torch") is None,
                    reason="parity needs sentence-transformers and torch (not runtime dependencies)")
def test_parity_with_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    from shared.minilm_export import model_dir

    reference = SentenceTransformer(str(model_dir()), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    cosines = (minilm.embed(SENTENCES) * reference).sum(axis=1)
    assert cosines.min() > 0.999, cosines
