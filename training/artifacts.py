"""A model version's artifact in a Triton model repository, in the layout the registry deploys.

    <repository>/<triton_model_name>/
        config.pbtxt        CPU: the Python backend runs 1/model.py, which runs 1/model.onnx
                            with onnxruntime (the tritonserver here has no onnxruntime backend)
        configs/gpu.pbtxt   GPU: Triton's onnxruntime backend runs 1/model.onnx itself; select
                            it with `tritonserver --model-config-name=gpu`
        1/model.onnx
        1/model.py          the generic runner, infra/triton/models/ranker/1/model.py
        warmup/<input>      one raw row-major sample per input, which both configs'
                            `model_warmup` sends at load so the first real request is not slow

Both configs declare the same tensors: the version's signature, batched on the first
dimension. `write_version` is what a trainer calls after CreateModelVersion has returned the
version's `triton_model_name`; it needs only numpy and onnx.
"""

from __future__ import annotations

import shutil
import struct
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from recstack.registry.v1 import model_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNER = REPO_ROOT / "infra" / "triton" / "models" / "ranker" / "1" / "model.py"
TRITON_MODEL_VERSION = "1"
GPU_CONFIG_NAME = "gpu"
WARMUP_DIR = "warmup"
CPU_RUNTIME = (
    "# CPU: the Python backend runs 1/model.py, which runs 1/model.onnx with onnxruntime.\n"
    'backend: "python"'
)
GPU_RUNTIME = (
    "# GPU: Triton's onnxruntime backend runs 1/model.onnx (1/model.py is ignored).\n"
    'backend: "onnxruntime"'
)

# Triton type → numpy dtype (TYPE_STRING: bytes objects) and ONNX element type.
NUMPY_TYPES: dict[str, np.dtype] = {
    "TYPE_BOOL": np.dtype(np.bool_),
    "TYPE_UINT8": np.dtype(np.uint8),
    "TYPE_UINT16": np.dtype(np.uint16),
    "TYPE_UINT32": np.dtype(np.uint32),
    "TYPE_UINT64": np.dtype(np.uint64),
    "TYPE_INT8": np.dtype(np.int8),
    "TYPE_INT16": np.dtype(np.int16),
    "TYPE_INT32": np.dtype(np.int32),
    "TYPE_INT64": np.dtype(np.int64),
    "TYPE_FP16": np.dtype(np.float16),
    "TYPE_FP32": np.dtype(np.float32),
    "TYPE_FP64": np.dtype(np.float64),
    "TYPE_STRING": np.dtype(np.object_),
}
ONNX_TYPES = {
    "TYPE_BOOL": onnx.TensorProto.BOOL,
    "TYPE_UINT8": onnx.TensorProto.UINT8,
    "TYPE_UINT16": onnx.TensorProto.UINT16,
    "TYPE_UINT32": onnx.TensorProto.UINT32,
    "TYPE_UINT64": onnx.TensorProto.UINT64,
    "TYPE_INT8": onnx.TensorProto.INT8,
    "TYPE_INT16": onnx.TensorProto.INT16,
    "TYPE_INT32": onnx.TensorProto.INT32,
    "TYPE_INT64": onnx.TensorProto.INT64,
    "TYPE_FP16": onnx.TensorProto.FLOAT16,
    "TYPE_FP32": onnx.TensorProto.FLOAT,
    "TYPE_FP64": onnx.TensorProto.DOUBLE,
    "TYPE_STRING": onnx.TensorProto.STRING,
    "TYPE_BF16": onnx.TensorProto.BFLOAT16,
}

Signature = model_pb2.ModelSignature
TensorSpec = model_pb2.TensorSpec


class ArtifactError(ValueError):
    """The ONNX model, the signature or the warmup sample do not fit together."""


def write_version(
    repository: Path,
    triton_model_name: str,
    onnx_model: bytes,
    signature: Signature,
    *,
    warmup: Mapping[str, np.ndarray] | None = None,
    warmup_batch_size: int = 1,
    max_batch_size: int = 1024,
    instance_count: int = 1,
) -> Path:
    """Write the version's directory under `repository` and return it.

    `warmup` maps each input to one sample of its shape without the batch dim (default:
    zeros, with variable dims as 1); Triton repeats it `warmup_batch_size` times. The
    directory appears complete or not at all, and is never overwritten: a version's number
    is never reused, so an existing directory is an error (FileExistsError).
    """
    check_onnx(onnx_model, signature)
    samples = _warmup_samples(signature, warmup)
    target = repository / triton_model_name
    if target.exists():
        raise FileExistsError(f"{target} already exists; model versions are immutable")
    staging = repository / f".{triton_model_name}.{uuid.uuid4().hex}.partial"
    try:
        (staging / TRITON_MODEL_VERSION).mkdir(parents=True)
        (staging / TRITON_MODEL_VERSION / "model.onnx").write_bytes(onnx_model)
        shutil.copyfile(RUNNER, staging / TRITON_MODEL_VERSION / "model.py")
        (staging / WARMUP_DIR).mkdir()
        for name, sample in samples.items():
            (staging / WARMUP_DIR / name).write_bytes(_raw(sample))
        options = {"max_batch_size": max_batch_size, "instance_count": instance_count}
        warmup_block = model_warmup(signature, warmup_batch_size, samples)
        (staging / "config.pbtxt").write_text(
            config_pbtxt(triton_model_name, signature, gpu=False, **options) + warmup_block
        )
        (staging / "configs").mkdir()
        (staging / "configs" / f"{GPU_CONFIG_NAME}.pbtxt").write_text(
            config_pbtxt(triton_model_name, signature, gpu=True, **options) + warmup_block
        )
        # One rename: a loader never sees a half-written version directory.
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def config_pbtxt(
    name: str, signature: Signature, *, gpu: bool, max_batch_size: int, instance_count: int
) -> str:
    return (
        f'name: "{name}"\n{GPU_RUNTIME if gpu else CPU_RUNTIME}\n'
        f"max_batch_size: {max_batch_size}\n\n"
        f"input [\n{_tensors(signature.inputs)}\n]\n\n"
        f"output [\n{_tensors(signature.outputs)}\n]\n\n"
        "# Queued requests reach the model together and run as one batch.\n"
        "dynamic_batching { }\n\n"
        f"instance_group [\n  {{\n    count: {instance_count}\n"
        f"    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]\n"
    )


def model_warmup(signature: Signature, batch_size: int, samples: Mapping[str, np.ndarray]) -> str:
    inputs = "\n".join(
        f'    inputs {{\n      key: "{tensor.name}"\n      value: {{\n'
        f"        data_type: {tensor.data_type}\n"
        f"        dims: [ {', '.join(str(d) for d in samples[tensor.name].shape)} ]\n"
        f'        input_data_file: "{tensor.name}"\n      }}\n    }}'
        for tensor in signature.inputs
    )
    return (
        f'\nmodel_warmup [\n  {{\n    name: "sample"\n    batch_size: {batch_size}\n'
        f"{inputs}\n  }}\n]\n"
    )


def check_onnx(onnx_model: bytes, signature: Signature) -> None:
    """The graph's inputs and outputs must be the signature's, batched on the first dim."""
    try:
        graph = onnx.load_model_from_string(onnx_model).graph
    except Exception as exc:  # onnx raises DecodeError and others for bytes that are no model
        raise ArtifactError(f"not an ONNX model: {exc}") from exc
    initializers = {tensor.name for tensor in graph.initializer}
    graph_inputs = [value for value in graph.input if value.name not in initializers]
    for side, declared, values in (
        ("input", signature.inputs, graph_inputs),
        ("output", signature.outputs, graph.output),
    ):
        _check_tensors(side, declared, values)


def _check_tensors(
    side: str, declared: Iterable[TensorSpec], values: Iterable[onnx.ValueInfoProto]
) -> None:
    by_name = {value.name: value.type.tensor_type for value in values}
    want = {tensor.name: tensor for tensor in declared}
    if set(want) != set(by_name):
        raise ArtifactError(
            f"the ONNX graph's {side}s {sorted(by_name)} are not the signature's {sorted(want)}"
        )
    for name, tensor in want.items():
        found = by_name[name]
        if found.elem_type != ONNX_TYPES[tensor.data_type]:
            found_type = onnx.TensorProto.DataType.Name(found.elem_type)
            raise ArtifactError(
                f"{side} '{name}' is {found_type} in the ONNX graph, not {tensor.data_type}"
            )
        rank = len(found.shape.dim)
        if rank != len(tensor.dims) + 1:
            raise ArtifactError(
                f"{side} '{name}' has rank {rank} in the ONNX graph; the signature's dims "
                f"{list(tensor.dims)} plus the batch dim make {len(tensor.dims) + 1}"
            )


def _warmup_samples(
    signature: Signature, warmup: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    given = dict(warmup or {})
    unknown = sorted(set(given) - {tensor.name for tensor in signature.inputs})
    if unknown:
        raise ArtifactError(f"warmup names {unknown}, which are not inputs of the signature")
    samples = {}
    for tensor in signature.inputs:
        if tensor.data_type not in NUMPY_TYPES:
            raise ArtifactError(f"input '{tensor.name}': {tensor.data_type} has no numpy type")
        dtype = NUMPY_TYPES[tensor.data_type]
        shape = tuple(1 if dim == -1 else int(dim) for dim in tensor.dims)
        if tensor.name not in given:
            samples[tensor.name] = np.full(shape, b"" if dtype.kind == "O" else 0, dtype=dtype)
            continue
        sample = np.asarray(given[tensor.name], dtype=dtype)
        fits = sample.ndim == len(tensor.dims) and all(
            want in (-1, got) for got, want in zip(sample.shape, tensor.dims, strict=True)
        )
        if not fits:
            raise ArtifactError(
                f"warmup '{tensor.name}' has shape {list(sample.shape)}; one sample of "
                f"{list(tensor.dims)} (no batch dim) is expected"
            )
        samples[tensor.name] = sample
    return samples


def _raw(sample: np.ndarray) -> bytes:
    """Triton's raw tensor encoding: row-major little-endian values; strings length-prefixed."""
    if sample.dtype.kind == "O":
        items = [item if isinstance(item, bytes) else str(item).encode() for item in sample.flat]
        return b"".join(struct.pack("<I", len(item)) + item for item in items)
    return np.ascontiguousarray(sample, dtype=sample.dtype.newbyteorder("<")).tobytes()


def _tensors(tensors: Iterable[TensorSpec]) -> str:
    return ",\n".join(
        f'  {{\n    name: "{tensor.name}"\n    data_type: {tensor.data_type}\n'
        f"    dims: [ {', '.join(str(d) for d in tensor.dims)} ]\n  }}"
        for tensor in tensors
    )
