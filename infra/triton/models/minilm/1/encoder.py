"""all-MiniLM-L6-v2 sentence embeddings with tokenizers + onnxruntime + numpy only.

The one implementation of text → 384-d unit vector that recstack runs: Triton's `model.py`
(beside this file, in the backend venv: numpy 1.26, onnxruntime 1.22), the export check in
`infra/triton/export_text_embedding.py` (the export venv) and in-process callers in the app
venv (numpy 2, onnxruntime 1.32) all call `TextEncoder.encode`. It imports nothing from
Triton or torch, and nothing of recstack. The model repository is not a Python package, so
load it by its file path (this is all a caller needs; `TextEncoder` takes the version dir):

    import importlib.util
    from pathlib import Path

    def load_text_encoder(version_dir: Path, intra_op_threads: int = 0):
        # version_dir: e.g. infra/triton/models/minilm/1, after `make models`
        path = version_dir / "encoder.py"
        spec = importlib.util.spec_from_file_location("minilm_encoder", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.TextEncoder(version_dir, intra_op_threads)

The version directory holds the build outputs of `make models` (gitignored):
`model.onnx` (BERT encoder with mean pooling over the attention mask and L2 normalisation
inside the graph: inputs `input_ids`, `attention_mask` int64 [batch, seq]; output
`sentence_embedding` float32 [batch, 384]) and `tokenizer.json` (the model's own WordPiece
tokenizer). Texts are truncated the way sentence-transformers does it: at most
`MODEL_MAX_TOKENS` (256) word pieces including [CLS] and [SEP].
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
REFERENCE_FILE = "reference.npz"
# all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json): longer texts are cut there.
MODEL_MAX_TOKENS = 256
# [CLS] and [SEP]: a limit must leave room for them.
SPECIAL_TOKENS = 2
EMBEDDING_DIM = 384
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
# Texts per onnxruntime run. Texts are sorted by length first, so each run pads to a length
# close to its own texts' (what sentence-transformers does); the order of the results is the
# caller's. Small runs are fastest on a CPU (1,000 reviews in calls of 256 on 2 cores:
# 4-8 texts ~150/s, 16 ~145/s, 32 ~130/s, 64 ~107/s, all 256 at once ~55/s).
DEFAULT_RUN_SIZE = 8


def effective_max_tokens(max_tokens: int | None) -> int:
    """The word-piece limit a request asks for, capped at the model's own (256).

    Raises ValueError for a limit that cannot hold even [CLS] and [SEP].
    """
    if max_tokens is None:
        return MODEL_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int | np.integer):
        raise ValueError(f"max_tokens must be an integer, got {max_tokens!r}")
    if max_tokens < SPECIAL_TOKENS:
        raise ValueError(
            f"max_tokens must be at least {SPECIAL_TOKENS} (room for [CLS] and [SEP]), "
            f"got {max_tokens}"
        )
    return min(int(max_tokens), MODEL_MAX_TOKENS)


class TextEncoder:
    """Encodes texts into L2-normalised 384-d float32 vectors.

    Thread-safe: the tokenizer's truncation setting is changed and used under a lock, and
    onnxruntime's `run` may be called concurrently.
    """

    def __init__(
        self,
        model_dir: Path | str,
        intra_op_threads: int = 0,
        *,
        providers: Sequence[Any] | None = None,
        run_size: int = DEFAULT_RUN_SIZE,
    ) -> None:
        """Load `model.onnx` and `tokenizer.json` from `model_dir` (the version directory).

        `intra_op_threads` 0 lets onnxruntime use one thread per physical core (the model is
        compute bound: a single Triton instance should use every core). `providers` defaults
        to the CPU; pass e.g. `[("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider"]` for a GPU.
        """
        if intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
        if run_size < 1:
            raise ValueError(f"run_size must be >= 1, got {run_size}")
        self.model_dir = Path(model_dir)
        model_path = self.model_dir / MODEL_FILE
        tokenizer_path = self.model_dir / TOKENIZER_FILE
        missing = [str(p) for p in (model_path, tokenizer_path) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"text encoder files missing: {', '.join(missing)}; build them with `make models` "
                "(infra/triton/export_text_embedding.py)"
            )
        self.run_size = run_size

        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # tokenizer.json ships with fixed padding/truncation at 128; ours are set per call.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._tokenizer.enable_padding(
            pad_id=self._tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]"
        )
        self._truncation: int | None = None
        self._lock = threading.Lock()

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_path),
            sess_options=options,
            providers=list(providers) if providers is not None else ["CPUExecutionProvider"],
        )
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != sorted(INPUT_NAMES) or outputs != [OUTPUT_NAME]:
            raise ValueError(
                f"{model_path} has inputs {inputs} and outputs {outputs}; expected inputs "
                f"{list(INPUT_NAMES)} and output {OUTPUT_NAME!r}: rebuild it with `make models`"
            )

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def tokenize(
        self, texts: Sequence[str], max_tokens: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Word-piece ids and attention mask (int64, padded to the longest text) and whether
        each text was cut at min(max_tokens, 256) word pieces, [CLS] and [SEP] included."""
        limit = effective_max_tokens(max_tokens)
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must be str, got {type(text).__name__}")
        if not texts:
            empty = np.zeros((0, 0), dtype=np.int64)
            return empty, empty.copy(), np.zeros(0, dtype=bool)
        with self._lock:
            if self._truncation != limit:
                self._tokenizer.enable_truncation(max_length=limit)
                self._truncation = limit
            encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        truncated = np.array([len(e.overflowing) > 0 for e in encodings], dtype=bool)
        return ids, mask, truncated

    def encode(
        self, texts: Sequence[str], max_tokens: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embed `texts`: (float32 [n, 384] unit vectors, bool [n] truncated)."""
        ids, mask, truncated = self.tokenize(texts, max_tokens)
        embeddings = np.empty((len(ids), EMBEDDING_DIM), dtype=np.float32)
        if len(ids) == 0:
            return embeddings, truncated
        lengths = mask.sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), self.run_size):
            rows = order[start : start + self.run_size]
            width = int(lengths[rows].max())
            embeddings[rows] = self.embed_tokens(ids[rows, :width], mask[rows, :width])
        return embeddings, truncated

    def embed_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Run the ONNX graph (encoder, mean pooling, L2 normalisation) on tokenized texts."""
        (embeddings,) = self.session.run(
            [OUTPUT_NAME],
            {
                "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            },
        )
        return np.asarray(embeddings, dtype=np.float32)
