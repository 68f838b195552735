"""The real tritonserver serving `minilm` (all-MiniLM-L6-v2, 384-d) through tritonclient gRPC.

Expected vectors come from `reference.npz`, written by `make models` from sentence-transformers
itself (torch) when it exported the model, so these tests compare Triton with the original
model, not with our own encoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import text_format
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from infra.local.tritonserver import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, TritonServer

MODEL = "minilm"
VERSION_DIR = DEFAULT_MODEL_REPOSITORY / MODEL / "1"
GPU_CONFIG = REPO_ROOT / "infra" / "triton" / "gpu" / "minilm.config.pbtxt"
DIM = 384
MODEL_MAX_TOKENS = 256
REFERENCE_TOLERANCE = 1e-4
CONSISTENCY_TOLERANCE = 1e-5
TIMEOUT_S = 60.0

DOG_REVIEW = "This dog food is great, my puppy loves it"
# Words that are one word piece each, so a prefix of N words is exactly N word pieces.
_WORDS = (
    "dog food great puppy loves phone broke the a my it is was and very good bad quality "
    "price fast shipping love fits small large color soft warm cheap return"
)
SINGLE_PIECE_WORDS = _WORDS.split()


@pytest.fixture(scope="module")
def client(triton_server: TritonServer) -> Iterator[triton_grpc.InferenceServerClient]:
    if MODEL not in triton_server.models:
        pytest.fail(
            f"{MODEL} is not built ({VERSION_DIR / 'model.onnx'} is missing): run `make models`",
            pytrace=False,
        )
    with triton_grpc.InferenceServerClient(triton_server.grpc_address) as grpc_client:
        yield grpc_client


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(VERSION_DIR / "reference.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The served tokenizer without limits: for building exact word-piece prefixes."""
    tok = Tokenizer.from_file(str(VERSION_DIR / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def text_input(texts: list[str]) -> triton_grpc.InferInput:
    array = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
    tensor = triton_grpc.InferInput("text", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def embed(
    client: triton_grpc.InferenceServerClient,
    texts: list[str],
    max_input_tokens: int | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    parameters = {} if max_input_tokens is None else {"max_input_tokens": max_input_tokens}
    result = client.infer(
        MODEL,
        [text_input(texts)],
        outputs=[
            triton_grpc.InferRequestedOutput("embedding"),
            triton_grpc.InferRequestedOutput("truncated"),
        ],
        parameters=parameters or None,
        client_timeout=TIMEOUT_S,
    )
    embedding = result.as_numpy("embedding")
    truncated = result.as_numpy("truncated")
    assert embedding.shape == (len(texts), DIM)
    assert embedding.dtype == np.float32
    assert truncated.shape == (len(texts), 1)
    assert truncated.dtype == np.bool_
    return embedding, truncated[:, 0]


def word_text(words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(SINGLE_PIECE_WORDS, words))


def word_piece_prefix(tokenizer: Tokenizer, text: str, pieces: int) -> str:
    """The text up to the end of its `pieces`-th word piece (special tokens not counted)."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    assert len(encoding.ids) > pieces
    prefix = text[: encoding.offsets[pieces - 1][1]]
    # The prefix must tokenize to exactly those pieces, or the comparison would be meaningless.
    assert tokenizer.encode(prefix, add_special_tokens=False).ids == encoding.ids[:pieces]
    return prefix


def review_texts(count: int) -> list[str]:
    rng = np.random.default_rng(7)
    return [
        " ".join(rng.choice(SINGLE_PIECE_WORDS, int(rng.integers(3, 90)))).capitalize() + "."
        for _ in range(count)
    ]


def test_vectors_match_sentence_transformers(client, reference):
    texts = [str(text) for text in reference["texts"]]
    assert len(texts) >= 16

    vectors, truncated = embed(client, texts)

    np.testing.assert_allclose(vectors, reference["embeddings"], rtol=0, atol=REFERENCE_TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=0, atol=1e-5)
    assert np.isfinite(vectors).all()
    # The sample has a text longer than the model's 256 word pieces, and only such texts are cut.
    assert truncated.any()
    assert truncated.sum() < len(texts)


def test_each_reference_text_alone_matches_too(client, reference):
    for text, expected in zip(reference["texts"], reference["embeddings"], strict=True):
        vector, _ = embed(client, [str(text)])
        np.testing.assert_allclose(vector[0], expected, rtol=0, atol=REFERENCE_TOLERANCE)


def test_similar_reviews_are_closer_than_unrelated_ones(client):
    vectors, truncated = embed(
        client, [DOG_REVIEW, "great food for my dog", "the phone charger broke"]
    )

    assert not truncated.any()
    related = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert related > 0.7
    assert unrelated < 0.3
    assert related - unrelated > 0.5


def test_empty_text_gets_a_unit_vector(client):
    vectors, truncated = embed(client, ["", "   "])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not truncated.any()


def test_a_10000_word_text_is_cut_at_256_word_pieces(client, tokenizer):
    long_text = word_text(10_000, seed=1)
    # [CLS] + 254 word pieces + [SEP] = the model's 256.
    prefix = word_piece_prefix(tokenizer, long_text, MODEL_MAX_TOKENS - 2)

    vectors, truncated = embed(client, [long_text, prefix])

    assert truncated.tolist() == [True, False]
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=0, atol=CONSISTENCY_TOLERANCE)
    # One more word piece is already cut.
    longer = word_piece_prefix(tokenizer, long_text, MODEL_MAX_TOKENS - 1)
    _, longer_truncated = embed(client, [longer])
    assert longer_truncated.tolist() == [True]


def test_max_input_tokens_cuts_earlier(client, tokenizer):
    text = word_text(40, seed=2)
    prefix = word_piece_prefix(tokenizer, text, 6)  # + [CLS] and [SEP] = 8

    cut, cut_truncated = embed(client, [text, prefix, "great food"], max_input_tokens=8)
    full, full_truncated = embed(client, [text, prefix, "great food"])

    assert cut_truncated.tolist() == [True, False, False]
    assert full_truncated.tolist() == [False, False, False]
    np.testing.assert_allclose(cut[0], full[1], rtol=0, atol=CONSISTENCY_TOLERANCE)
    np.testing.assert_allclose(cut[1:], full[1:], rtol=0, atol=CONSISTENCY_TOLERANCE)
    # The cut text's vector really is a different one.
    assert float(cut[0] @ full[0]) < 0.99


def test_max_input_tokens_above_the_model_limit_means_256(client, tokenizer):
    long_text = word_text(1_000, seed=3)
    default, default_truncated = embed(client, [long_text])
    above, above_truncated = embed(client, [long_text], max_input_tokens=512)
    assert default_truncated.tolist() == above_truncated.tolist() == [True]
    np.testing.assert_allclose(above, default, rtol=0, atol=CONSISTENCY_TOLERANCE)


def test_a_batch_and_concurrent_requests_match_single_requests(client):
    texts = review_texts(96)
    singles = np.concatenate([embed(client, [text])[0] for text in texts])
    singles_cut = np.concatenate([embed(client, [text], max_input_tokens=8)[0] for text in texts])

    batch, _ = embed(client, texts)
    np.testing.assert_allclose(batch, singles, rtol=0, atol=CONSISTENCY_TOLERANCE)

    # Different sizes and limits at once: the dynamic batcher hands several of these to
    # model.py together, which must give each request its own rows.
    jobs = [(start, start + size, limit) for start, size, limit in _jobs(len(texts))]

    def call(job: tuple[int, int, int | None]) -> np.ndarray:
        start, stop, limit = job
        return embed(client, texts[start:stop], max_input_tokens=limit)[0]

    before = _counts(client)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, jobs * 3))
    requests, executions = (
        after - start for after, start in zip(_counts(client), before, strict=True)
    )

    for (start, stop, limit), vectors in zip(jobs * 3, answers, strict=True):
        expected = singles_cut[start:stop] if limit == 8 else singles[start:stop]
        np.testing.assert_allclose(vectors, expected, rtol=0, atol=CONSISTENCY_TOLERANCE)
    # Requests really were merged: fewer model executions than requests. The server is the
    # session's, so other tests' requests (a job still embedding) may be counted too.
    assert requests >= len(jobs) * 3
    assert executions < requests


def _counts(client: triton_grpc.InferenceServerClient) -> tuple[int, int]:
    """(successful requests, model executions) so far."""
    (stats,) = client.get_inference_statistics(MODEL, client_timeout=TIMEOUT_S).model_stats
    return stats.inference_stats.success.count, stats.execution_count


def _jobs(total: int) -> Iterator[tuple[int, int, int | None]]:
    sizes = [1, 5, 32, 17, 2, 40, 9, 24]
    for i, size in enumerate(sizes):
        start = (i * 11) % (total - size)
        yield start, size, (8 if i % 3 == 0 else None)


def test_a_bad_request_fails_alone(client):
    texts = review_texts(8)
    expected = embed(client, texts)[0]

    def good(_: int) -> np.ndarray:
        return embed(client, texts)[0]

    def bad(_: int) -> str:
        with pytest.raises(InferenceServerException) as excinfo:
            embed(client, texts, max_input_tokens=1)
        return excinfo.value.status()

    with ThreadPoolExecutor(max_workers=8) as pool:
        goods = [pool.submit(good, i) for i in range(8)]
        bads = [pool.submit(bad, i) for i in range(8)]
        for future in goods:
            np.testing.assert_allclose(future.result(), expected, atol=CONSISTENCY_TOLERANCE)
        assert {future.result() for future in bads} == {"StatusCode.INVALID_ARGUMENT"}


def test_wrong_input_dtype_is_invalid_argument(client):
    tensor = triton_grpc.InferInput("text", [2, 1], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 1), dtype=np.float32))

    with pytest.raises(InferenceServerException) as excinfo:
        client.infer(MODEL, [tensor], client_timeout=TIMEOUT_S)

    assert excinfo.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'text'" in excinfo.value.message()
    assert "BYTES" in excinfo.value.message()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1, "at least 2"),
        (0, "at least 2"),
        ("eight", "must be an integer"),
        (True, "must be an integer"),
    ],
)
def test_bad_max_input_tokens_is_invalid_argument(client, value, message):
    with pytest.raises(InferenceServerException) as excinfo:
        embed(client, ["great food"], max_input_tokens=value)
    assert excinfo.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "max_input_tokens" in excinfo.value.message()
    assert message in excinfo.value.message()


def test_max_input_tokens_as_a_numeric_string_is_accepted(client):
    as_string, _ = embed(client, [DOG_REVIEW], max_input_tokens="8")
    as_int, _ = embed(client, [DOG_REVIEW], max_input_tokens=8)
    np.testing.assert_allclose(as_string, as_int, atol=CONSISTENCY_TOLERANCE)


def test_invalid_utf8_is_invalid_argument(client):
    array = np.array([[b"fine"], [b"\xff\xfe broken"]], dtype=np.object_)
    tensor = triton_grpc.InferInput("text", [2, 1], "BYTES")
    tensor.set_data_from_numpy(array)

    with pytest.raises(InferenceServerException) as excinfo:
        client.infer(MODEL, [tensor], client_timeout=TIMEOUT_S)

    assert excinfo.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "row 1" in excinfo.value.message()
    assert "UTF-8" in excinfo.value.message()


def test_more_texts_than_max_batch_size_is_invalid_argument(client):
    with pytest.raises(InferenceServerException) as excinfo:
        embed(client, ["great food"] * 257)
    assert excinfo.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "256" in excinfo.value.message()


def _config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_served_config_and_gpu_config_agree(client):
    served = client.get_model_config(MODEL, client_timeout=TIMEOUT_S).config
    cpu = _config(DEFAULT_MODEL_REPOSITORY / MODEL / "config.pbtxt")
    gpu = _config(GPU_CONFIG)

    assert served.max_batch_size == cpu.max_batch_size == gpu.max_batch_size == 256
    assert [(i.name, i.data_type, list(i.dims)) for i in served.input] == [
        ("text", model_config_pb2.TYPE_STRING, [1])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in served.output] == [
        ("embedding", model_config_pb2.TYPE_FP32, [DIM]),
        ("truncated", model_config_pb2.TYPE_BOOL, [1]),
    ]
    assert served.HasField("dynamic_batching")
    # The GPU config changes where onnxruntime runs, nothing a client sees.
    assert gpu.name == cpu.name == MODEL
    assert gpu.backend == cpu.backend == "python"
    assert gpu.input == cpu.input
    assert gpu.output == cpu.output
    assert gpu.HasField("dynamic_batching")
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert cpu.parameters["intra_op_threads"].string_value == "0"
