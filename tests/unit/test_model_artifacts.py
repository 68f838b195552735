"""training.artifacts: the version directory a trainer writes for Triton, and its checks."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tests.models import V1_INPUTS, V2_INPUTS, constant_onnx, ranker_onnx, signature
from training.artifacts import RUNNER, ArtifactError, write_version

SIGNATURE = signature(V1_INPUTS)


def test_writes_both_configs_the_runner_and_warmup_samples(tmp_path):
    onnx_model = ranker_onnx(SIGNATURE)
    warmup = {"genres": np.array([3, 1, 4]), "age": np.array([31.5])}
    path = write_version(tmp_path, "shop__ranker__v1", onnx_model, SIGNATURE, warmup=warmup)
    assert path == tmp_path / "shop__ranker__v1"
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "1/model.onnx",
        "1/model.py",
        "config.pbtxt",
        "configs/gpu.pbtxt",
        "warmup/age",
        "warmup/genres",
        "warmup/user_id",
    ]
    assert (path / "1" / "model.onnx").read_bytes() == onnx_model
    assert (path / "1" / "model.py").read_bytes() == RUNNER.read_bytes()
    assert np.frombuffer((path / "warmup" / "genres").read_bytes(), "<i8").tolist() == [3, 1, 4]
    assert np.frombuffer((path / "warmup" / "age").read_bytes(), "<f4").tolist() == [31.5]
    assert np.frombuffer((path / "warmup" / "user_id").read_bytes(), "<i8").tolist() == [0]
    cpu = (path / "config.pbtxt").read_text()
    gpu = (path / "configs" / "gpu.pbtxt").read_text()
    assert 'name: "shop__ranker__v1"' in cpu
    assert 'backend: "python"' in cpu and "KIND_CPU" in cpu
    assert 'backend: "onnxruntime"' in gpu and "KIND_GPU" in gpu
    for config in (cpu, gpu):
        assert "max_batch_size: 1024" in config
        assert 'name: "genres"\n    data_type: TYPE_INT64\n    dims: [ 3 ]' in config
        assert 'input_data_file: "genres"' in config
    # Same tensors: the two files differ only in how the model runs.
    strip = {"python", "onnxruntime", "KIND_CPU", "KIND_GPU"}
    assert [line for line in cpu.splitlines() if not any(w in line for w in strip)][1:] == [
        line for line in gpu.splitlines() if not any(w in line for w in strip)
    ][1:]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_string_warmup_samples_are_length_prefixed(tmp_path):
    spec = signature([("query", "TYPE_STRING", (2,))])
    path = write_version(
        tmp_path, "m", constant_onnx(spec), spec, warmup={"query": np.array(["ab", "c"])}
    )
    assert (path / "warmup" / "query").read_bytes() == (
        struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    )


def test_a_version_directory_is_never_overwritten(tmp_path):
    write_version(tmp_path, "m", ranker_onnx(SIGNATURE), SIGNATURE)
    with pytest.raises(FileExistsError):
        write_version(tmp_path, "m", ranker_onnx(SIGNATURE), SIGNATURE)


@pytest.mark.parametrize(
    ("onnx_signature", "declared", "message"),
    [
        (signature(V2_INPUTS), SIGNATURE, "inputs .* are not the signature's"),
        (signature(V1_INPUTS, ["probs_ctr"]), SIGNATURE, "outputs .* are not the signature's"),
        (
            signature([("user_id", "TYPE_INT32", (1,)), *V1_INPUTS[1:]]),
            SIGNATURE,
            "input 'user_id' is INT32 in the ONNX graph, not TYPE_INT64",
        ),
        (
            SIGNATURE,
            signature([("user_id", "TYPE_INT64", (1, 1)), *V1_INPUTS[1:]]),
            "input 'user_id' has rank 2",
        ),
    ],
)
def test_an_onnx_graph_that_does_not_match_the_signature_is_refused(
    tmp_path, onnx_signature, declared, message
):
    with pytest.raises(ArtifactError, match=message):
        write_version(tmp_path, "m", ranker_onnx(onnx_signature), declared)
    assert list(tmp_path.iterdir()) == []


def test_bad_bytes_and_bad_warmup_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="not an ONNX model"):
        write_version(tmp_path, "m", b"\x00not onnx", SIGNATURE)
    with pytest.raises(ArtifactError, match="one sample of \\[3\\]"):
        write_version(
            tmp_path, "m", ranker_onnx(SIGNATURE), SIGNATURE, warmup={"genres": np.zeros((2, 3))}
        )
    with pytest.raises(ArtifactError, match="not inputs of the signature"):
        write_version(tmp_path, "m", ranker_onnx(SIGNATURE), SIGNATURE, warmup={"hour": [1.0]})
