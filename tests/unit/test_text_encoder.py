"""encoder.py of the `minilm` Triton model, run in-process in the app venv (numpy 2).

Triton's backend venv runs the same file with numpy 1.26; this checks the other environment
that uses it (in-process callers, benchmarks). Tests needing the built model skip until
`make models` has exported it.
"""

from __future__ import annotations

import threading
from types import ModuleType

import numpy as np
import pytest

from infra.local.text_encoder import MINILM_VERSION_DIR
from infra.local.text_encoder import encoder_module as load_module

VERSION_DIR = MINILM_VERSION_DIR
BUILT = all((VERSION_DIR / name).is_file() for name in ("model.onnx", "tokenizer.json"))
needs_model = pytest.mark.skipif(
    not BUILT, reason=f"minilm is not built in {VERSION_DIR}: run `make models`"
)
REFERENCE_TOLERANCE = 1e-4
CONSISTENCY_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def encoder_module() -> ModuleType:
    return load_module(VERSION_DIR)


@pytest.fixture(scope="module")
def encoder(encoder_module):
    if not BUILT:
        pytest.skip(f"minilm is not built in {VERSION_DIR}: run `make models`")
    return encoder_module.TextEncoder(VERSION_DIR)


def test_effective_max_tokens(encoder_module):
    limit = encoder_module.effective_max_tokens
    assert encoder_module.MODEL_MAX_TOKENS == 256
    assert limit(None) == 256
    assert limit(512) == 256
    assert limit(256) == 256
    assert limit(8) == 8
    assert limit(2) == 2
    assert limit(np.int64(8)) == 8
    for bad in (1, 0, -5):
        with pytest.raises(ValueError, match="at least 2"):
            limit(bad)
    for bad in (True, 8.0, "8"):
        with pytest.raises(ValueError, match="must be an integer"):
            limit(bad)


def test_missing_files_name_the_build_command(encoder_module, tmp_path):
    with pytest.raises(FileNotFoundError, match="make models") as excinfo:
        encoder_module.TextEncoder(tmp_path)
    assert "model.onnx" in str(excinfo.value)
    assert "tokenizer.json" in str(excinfo.value)


@needs_model
def test_matches_the_sentence_transformers_reference(encoder):
    with np.load(VERSION_DIR / "reference.npz") as reference:
        texts = [str(text) for text in reference["texts"]]
        expected = reference["embeddings"]

    vectors, truncated = encoder.encode(texts)

    assert vectors.shape == (len(texts), 384)
    assert vectors.dtype == np.float32
    assert truncated.shape == (len(texts),)
    assert truncated.dtype == np.bool_
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=REFERENCE_TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=0, atol=1e-5)
    assert 0 < truncated.sum() < len(texts)


@needs_model
def test_truncated_exactly_beyond_the_limit(encoder):
    # "dog" is one word piece: n words = n + 2 tokens with [CLS] and [SEP].
    fits = " ".join(["dog"] * 254)
    cut = " ".join(["dog"] * 255)

    ids, mask, truncated = encoder.tokenize([fits, cut, "dog"])

    assert ids.shape == mask.shape == (3, 256)
    assert ids.dtype == mask.dtype == np.int64
    assert truncated.tolist() == [False, True, False]
    assert mask.sum(axis=1).tolist() == [256, 256, 3]  # padded to the longest, mask says where

    _, truncated_at_8 = encoder.encode([fits, "dog " * 7, "dog " * 6], max_tokens=8)
    assert truncated_at_8.tolist() == [True, True, False]


@needs_model
def test_max_tokens_equals_encoding_the_prefix(encoder):
    text = "the quality is great and the price is good but the color is bad"
    prefix = "the quality is great and the"  # six word pieces, + [CLS] [SEP] = 8

    (cut, full_prefix), truncated = encoder.encode([text, prefix], max_tokens=8)

    assert truncated.tolist() == [True, False]
    np.testing.assert_allclose(cut, full_prefix, rtol=0, atol=CONSISTENCY_TOLERANCE)


@needs_model
def test_order_and_values_do_not_depend_on_batching(encoder_module, encoder):
    rng = np.random.default_rng(3)
    vocabulary = "dog food great love bad phone broke cheap soft warm fits small"
    words = vocabulary.split()
    texts = [" ".join(rng.choice(words, int(rng.integers(1, 60)))) for _ in range(40)]

    singles = np.concatenate([encoder.encode([text])[0] for text in texts])
    small_runs = encoder_module.TextEncoder(VERSION_DIR, 1, run_size=3)

    np.testing.assert_allclose(encoder.encode(texts)[0], singles, atol=CONSISTENCY_TOLERANCE)
    np.testing.assert_allclose(small_runs.encode(texts)[0], singles, atol=CONSISTENCY_TOLERANCE)


@needs_model
def test_empty_batch_and_empty_text(encoder):
    vectors, truncated = encoder.encode([])
    assert vectors.shape == (0, 384)
    assert truncated.shape == (0,)

    vectors, truncated = encoder.encode([""])
    assert np.isfinite(vectors).all()
    assert abs(float(np.linalg.norm(vectors[0])) - 1.0) < 1e-5


@needs_model
def test_rejects_non_string_texts(encoder):
    with pytest.raises(TypeError, match="str"):
        encoder.encode([b"bytes are not text"])


@needs_model
def test_concurrent_calls_with_different_limits(encoder):
    texts = ["the quality is great and the price is good but the color is bad"] * 4
    expected = {limit: encoder.encode(texts, limit)[0] for limit in (4, 8, None)}
    failures: list[str] = []

    def worker(limit: int | None) -> None:
        for _ in range(10):
            got, _ = encoder.encode(texts, limit)
            if not np.allclose(got, expected[limit], atol=CONSISTENCY_TOLERANCE):
                failures.append(f"limit {limit}")

    threads = [threading.Thread(target=worker, args=(limit,)) for limit in (4, 8, None) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert not np.allclose(expected[4], expected[8], atol=1e-3)
