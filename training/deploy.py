"""A trained model → a registered ModelVersion, its Triton directory, deployed, then ACTIVE.

Order matters for what a failure leaves behind: the version is created first (the registry
assigns its number and Triton name), its directory is then renamed into the model repository
whole (`training.artifacts`), and only then does the registry load it into Triton and, when
asked, activate it. A failure before activation leaves the active version untouched; the new
version stays REGISTERED or FAILED with its reason, and can be deployed again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from google.protobuf import struct_pb2
from recstack.registry.v1 import model_pb2

from training import artifacts
from training.pipeline import TrainedModel

Log = Callable[[str], None]
# Rows of the held-out set Triton runs at load (`model_warmup`), so no request is the first.
WARMUP_ROWS = 1


class RegistryModels(Protocol):
    def ensure_model(self, project: str, model: str, description: str) -> None: ...
    def create_version(
        self, project: str, model: str, version: model_pb2.ModelVersion
    ) -> model_pb2.ModelVersion: ...
    def deploy(self, name: str) -> model_pb2.ModelVersion: ...
    def activate(self, name: str) -> model_pb2.ModelVersion: ...


@dataclass(frozen=True)
class Deployed:
    version: model_pb2.ModelVersion
    directory: Path
    active: bool


def version_spec(trained: TrainedModel) -> model_pb2.ModelVersion:
    config = trained.config
    fg = struct_pb2.Struct()
    fg.update(config.fg_config)
    spec = model_pb2.ModelVersion(
        description=config.description or f"{config.trainer} trained by recstack train",
        fg_config=fg,
        model_feature_set=f"projects/{config.project}/modelFeatureSets/{config.model_feature_set}",
        trainer=config.trainer,
        metrics=trained.metrics,
        signature=signature(trained),
    )
    spec.training_window.start_time.FromDatetime(trained.window[0])
    spec.training_window.end_time.FromDatetime(trained.window[1])
    return spec


def signature(trained: TrainedModel) -> model_pb2.ModelSignature:
    return model_pb2.ModelSignature(
        inputs=[
            model_pb2.TensorSpec(name=spec.name, data_type=spec.dtype, dims=list(spec.dims))
            for spec in trained.signature
        ],
        outputs=[
            model_pb2.TensorSpec(name=output, data_type="TYPE_FP32", dims=[1])
            for output in trained.outputs
        ],
    )


def deploy(
    trained: TrainedModel,
    registry: RegistryModels,
    repository: Path,
    *,
    activate: bool = True,
    log: Log = print,
) -> Deployed:
    config = trained.config
    registry.ensure_model(config.project, config.model, f"{config.trainer} ranking model")
    spec = version_spec(trained)
    version = registry.create_version(config.project, config.model, spec)
    log(f"registered {version.name} (Triton model {version.triton_model_name})")
    repository.mkdir(parents=True, exist_ok=True)
    directory = artifacts.write_version(
        repository,
        version.triton_model_name,
        trained.onnx,
        spec.signature,
        warmup={name: rows[0] for name, rows in trained.sample.items()},
    )
    version = registry.deploy(version.name)
    log(f"deployed {version.name}: {model_pb2.ModelVersion.State.Name(version.state)}")
    if activate:
        version = registry.activate(version.name)
        log(f"activated {version.name}")
    return Deployed(version, directory, activate)
