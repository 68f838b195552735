"""Triton Python-backend model `minilm`: UTF-8 texts in, all-MiniLM-L6-v2 embeddings out.

Input `text` (TYPE_STRING, [batch, 1]); outputs `embedding` (TYPE_FP32, [batch, 384], unit
length) and `truncated` (TYPE_BOOL, [batch, 1]: the text was cut to fit). The optional request
parameter `max_input_tokens` (an integer >= 2) cuts texts earlier than the model's own 256
word pieces ([CLS] and [SEP] included); larger values mean 256.

Everything between text and vector (tokenizer, onnxruntime, pooling, normalisation) is in
`encoder.py` beside this file, shared with the export check and in-process callers; this file
only turns Triton requests into `TextEncoder.encode` calls. Requests that the dynamic batcher
hands over together are grouped by their token limit and each group is encoded in one call.

Instance parameters (config.pbtxt `parameters`): `intra_op_threads` (onnxruntime threads of
this instance; "0" = one per physical core, right for a single instance of this compute-heavy
model) and `texts_per_run` (texts per onnxruntime run after sorting by length). On a KIND_GPU
instance onnxruntime runs on that GPU through CUDAExecutionProvider (the backend environment
then needs onnxruntime-gpu instead of onnxruntime).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

ENCODER_FILE = "encoder.py"
INPUT = "text"
EMBEDDING = "embedding"
TRUNCATED = "truncated"
MAX_TOKENS_PARAMETER = "max_input_tokens"


class RequestError(Exception):
    """A problem with one request: answered as that request's error, never raised to Triton."""

    def __init__(self, message: str, code: str = "INVALID_ARG") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def triton_error(message: str, code: str) -> Any:
    # TritonError accepts a status code only in newer stubs; older ones take the message alone.
    code_value = getattr(pb_utils.TritonError, code, None)
    if code_value is None:
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code_value)


def error_response(message: str, code: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=triton_error(message, code))


def load_encoder_module(path: Path) -> ModuleType:
    # By file path: the version directory is not on sys.path, and a plain `import encoder`
    # could pick up an unrelated module of that name.
    spec = importlib.util.spec_from_file_location("minilm_encoder", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _int_parameter(parameters: dict[str, Any], key: str, default: int) -> int:
    value = parameters.get(key, {}).get("string_value", "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"config.pbtxt parameter {key!r} must be an integer, got {value!r}"
        ) from None


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name: str = config["name"]
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.encoder_module = load_encoder_module(version_dir / ENCODER_FILE)
        parameters = config.get("parameters", {})
        intra_op_threads = _int_parameter(parameters, "intra_op_threads", 0)
        texts_per_run = _int_parameter(
            parameters, "texts_per_run", self.encoder_module.DEFAULT_RUN_SIZE
        )
        self.outputs = {
            spec["name"]: np.dtype(pb_utils.triton_string_to_numpy(spec["data_type"]))
            for spec in config["output"]
        }
        providers: list[Any] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            available = self.encoder_module.ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError(
                    f"{self.name}: a KIND_GPU instance needs onnxruntime with "
                    f"CUDAExecutionProvider (onnxruntime-gpu); this one has {available}"
                )
            device_id = int(args.get("model_instance_device_id", "0"))
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), *providers]
        try:
            self.encoder = self.encoder_module.TextEncoder(
                version_dir,
                intra_op_threads,
                providers=providers,
                run_size=texts_per_run,
            )
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{self.name}: {exc}; run `make models` "
                "(infra/triton/export_text_embedding.py writes them)"
            ) from exc

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        # Requests with the same token limit are encoded together.
        groups: dict[int, list[tuple[int, list[str]]]] = {}
        for index, request in enumerate(requests):
            try:
                texts = self._read_texts(request)
                limit = self._read_limit(request)
            except RequestError as exc:
                responses[index] = error_response(exc.message, exc.code)
                continue
            groups.setdefault(limit, []).append((index, texts))
        for limit, members in groups.items():
            for index, response in self._run_group(limit, members):
                responses[index] = response
        return responses

    def _read_texts(self, request: Any) -> list[str]:
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
        if tensor is None:
            raise RequestError(f"{self.name}: input '{INPUT}' is missing")
        array = tensor.as_numpy()
        if array.dtype != np.object_:
            raise RequestError(
                f"{self.name}: input '{INPUT}' has dtype {array.dtype}, expected BYTES "
                "(UTF-8 strings)"
            )
        if array.ndim != 2 or array.shape[1] != 1:
            raise RequestError(
                f"{self.name}: input '{INPUT}' has shape {list(array.shape)}, expected [-1, 1] "
                "(one text per row)"
            )
        texts = []
        for row, value in enumerate(array[:, 0]):
            if isinstance(value, str):
                texts.append(value)
                continue
            try:
                texts.append(bytes(value).decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise RequestError(
                    f"{self.name}: input '{INPUT}' row {row} is not valid UTF-8 ({exc.reason} "
                    f"at byte {exc.start})"
                ) from None
        return texts

    def _read_limit(self, request: Any) -> int:
        raw = request.parameters()
        parameters = json.loads(raw) if raw else {}
        value = parameters.get(MAX_TOKENS_PARAMETER)
        if value is None:
            return self.encoder_module.MODEL_MAX_TOKENS
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                value = None
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(
                f"{self.name}: parameter '{MAX_TOKENS_PARAMETER}' must be an integer, got "
                f"{parameters.get(MAX_TOKENS_PARAMETER)!r}"
            )
        minimum = self.encoder_module.SPECIAL_TOKENS
        if value < minimum:
            raise RequestError(
                f"{self.name}: parameter '{MAX_TOKENS_PARAMETER}' must be at least {minimum} "
                f"(room for [CLS] and [SEP]), got {value}"
            )
        return self.encoder_module.effective_max_tokens(value)

    def _run_group(self, limit: int, members: list[tuple[int, list[str]]]) -> list[tuple[int, Any]]:
        if len(members) > 1:
            texts = [text for _, request_texts in members for text in request_texts]
            try:
                embeddings, truncated = self.encoder.encode(texts, limit)
            except Exception:
                # One bad request must not fail the others batched with it: retry one by one
                # so the error is reported on the request that caused it.
                pass
            else:
                bounds = np.cumsum([len(request_texts) for _, request_texts in members])[:-1]
                return [
                    (index, self._response(emb, trunc))
                    for (index, _), emb, trunc in zip(
                        members,
                        np.split(embeddings, bounds),
                        np.split(truncated, bounds),
                        strict=True,
                    )
                ]
        return [(index, self._respond(texts, limit)) for index, texts in members]

    def _respond(self, texts: list[str], limit: int) -> Any:
        try:
            embeddings, truncated = self.encoder.encode(texts, limit)
        except Exception as exc:
            return error_response(f"{self.name}: inference failed: {exc}", "INTERNAL")
        return self._response(embeddings, truncated)

    def _response(self, embeddings: np.ndarray, truncated: np.ndarray) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(
                    EMBEDDING, np.ascontiguousarray(embeddings, dtype=self.outputs[EMBEDDING])
                ),
                pb_utils.Tensor(
                    TRUNCATED,
                    np.ascontiguousarray(truncated, dtype=self.outputs[TRUNCATED]).reshape(-1, 1),
                ),
            ]
        )

    def finalize(self) -> None:
        self.encoder = None
