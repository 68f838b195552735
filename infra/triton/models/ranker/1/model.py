"""Triton Python-backend model: runs `model.onnx` from this version directory with onnxruntime.

Tensor names, dtypes and dims come from `config.pbtxt`, so any single-file ONNX model whose
config names match its graph can reuse this file unchanged. On a GPU the same repository is
served by Triton's onnxruntime backend instead (infra/triton/gpu/), and this file is ignored.

The backend environment is the venv from infra/triton/requirements.txt (numpy<2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

MODEL_FILE = "model.onnx"


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


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name: str = config["name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
            spec["name"]: (
                np.dtype(pb_utils.triton_string_to_numpy(spec["data_type"])),
                tuple(int(d) for d in spec["dims"]),
            )
            for spec in config["input"]
        }
        self.outputs: dict[str, np.dtype] = {
            spec["name"]: np.dtype(pb_utils.triton_string_to_numpy(spec["data_type"]))
            for spec in config["output"]
        }
        self.session = self._load_session(Path(__file__).resolve().parent / MODEL_FILE)

    def _load_session(self, path: Path) -> ort.InferenceSession:
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.name}: {path} is missing; build it with "
                "`python infra/triton/build_models.py infra/triton/models` (make models)"
            )
        options = ort.SessionOptions()
        # Triton schedules concurrency through instance_group; onnxruntime's own thread pool
        # per instance would oversubscribe the cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        graph_inputs = {i.name for i in session.get_inputs()}
        graph_outputs = {o.name for o in session.get_outputs()}
        missing = (set(self.inputs) - graph_inputs) | (set(self.outputs) - graph_outputs)
        if missing:
            raise ValueError(
                f"{self.name}: config.pbtxt names tensors {sorted(missing)} that {path} lacks; "
                f"the graph has inputs {sorted(graph_inputs)} and outputs {sorted(graph_outputs)}"
            )
        return session

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        # Requests whose non-batch dims agree are concatenated into one onnxruntime call.
        groups: dict[tuple[Any, ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                arrays = self._read_inputs(request)
            except RequestError as exc:
                responses[index] = error_response(exc.message, exc.code)
                continue
            key: tuple[Any, ...] = tuple(arrays[name].shape[1:] for name in self.inputs)
            if not self.batched:
                key = (index,)
            groups.setdefault(key, []).append((index, arrays))
        for members in groups.values():
            for index, response in self._run_group(members):
                responses[index] = response
        return responses

    def _read_inputs(self, request: Any) -> dict[str, np.ndarray]:
        arrays = {}
        for name, (dtype, dims) in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"{self.name}: input '{name}' is missing")
            array = tensor.as_numpy()
            if array.dtype != dtype:
                raise RequestError(
                    f"{self.name}: input '{name}' has dtype {array.dtype}, expected {dtype}"
                )
            expected = ((-1,) if self.batched else ()) + dims
            if not _shape_matches(array.shape, expected):
                raise RequestError(
                    f"{self.name}: input '{name}' has shape {list(array.shape)}, "
                    f"expected {list(expected)} (-1 = any)"
                )
            arrays[name] = array
        return arrays

    def _run_group(self, members: list[tuple[int, dict[str, np.ndarray]]]) -> list[tuple[int, Any]]:
        if len(members) == 1:
            index, arrays = members[0]
            return [(index, self._respond(arrays))]
        feeds = {
            name: np.concatenate([arrays[name] for _, arrays in members]) for name in self.inputs
        }
        try:
            outputs = self._run(feeds)
        except Exception:
            # One bad request must not fail the others batched with it: retry one by one so
            # the error is reported on the request that caused it.
            return [(index, self._respond(arrays)) for index, arrays in members]
        sizes = [len(next(iter(arrays.values()))) for _, arrays in members]
        bounds = np.cumsum(sizes)[:-1]
        split = {name: np.split(value, bounds) for name, value in outputs.items()}
        return [
            (index, self._response({name: parts[i] for name, parts in split.items()}))
            for i, (index, _) in enumerate(members)
        ]

    def _respond(self, arrays: dict[str, np.ndarray]) -> Any:
        try:
            return self._response(self._run(arrays))
        except Exception as exc:
            return error_response(f"{self.name}: inference failed: {exc}", "INTERNAL")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self.outputs)
        values = self.session.run(names, feeds)
        return dict(zip(names, values, strict=True))

    def _response(self, outputs: dict[str, np.ndarray]) -> Any:
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=self.outputs[name]))
            for name, value in outputs.items()
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self.session = None


def _shape_matches(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    if len(shape) != len(expected):
        return False
    return all(want == -1 or got == want for got, want in zip(shape, expected, strict=True))
