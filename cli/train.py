"""`recstack train CONFIG`: train a ranking model on the platform's features and deploy it.

The pipeline (`training.pipeline`) exports the labelled rows' features through the
materialization service, runs the model's FG, trains, evaluates on the held-out rows next
to a popularity-only baseline and exports ONNX; this command then registers the result as a
new ModelVersion, writes its Triton model directory and deploys and activates it (unless told
not to).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import grpc
from pydantic_settings import BaseSettings, SettingsConfigDict
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.registry.v1 import model_pb2
from recstack.registry.v1 import registry_service_pb2 as rpb

from cli import materialize
from cli.connection import Connection, Context
from cli.errors import CliError, RpcFailed
from cli.output import table
from shared.feature_generator import AvailableFeature, FeatureConfigError

State = model_pb2.ModelVersion.State
# Where `make up`'s Triton finds trained versions (its second model repository).
DEFAULT_REPOSITORY = Path(".run") / "model-repository"
EPILOG = """\
examples:
  recstack train examples/movielens/train.yaml
  recstack train examples/quickstart/train.yaml --no-activate

environment:
  RECSTACK_MODEL_REPOSITORY  the Triton model repository new versions are written to
                             (default .run/model-repository); --model-repository overrides it
  RECSTACK_REGISTRY_ADDR, RECSTACK_MATERIALIZATION_ADDR and the connection settings of
  `recstack --help`

exit status: 0 success, 1 a bad config, a failed call or a failed training, 2 usage error
"""


class GrpcTrainingServices:
    """`training.pipeline.TrainingServices` and `training.deploy.RegistryModels` over the
    registry and materialization APIs."""

    def __init__(self, registry: Connection, materialization: Connection) -> None:
        self._registry = registry
        self._materialization = materialization

    def available_features(self, project: str, feature_set: str) -> list[AvailableFeature]:
        name = f"projects/{project}/modelFeatureSets/{feature_set}"
        found = self._registry.call("GetModelFeatureSet", rpb.GetModelFeatureSetRequest(name=name))
        views: dict[tuple[str, int], tuple[str, dict[str, int]]] = {}
        available = []
        for ref in found.model_feature_set.resolved_features:
            key = (ref.feature_view, ref.version)
            if key not in views:
                view = self._registry.call(
                    "GetFeatureView",
                    rpb.GetFeatureViewRequest(
                        name=f"projects/{project}/featureViews/{ref.feature_view}",
                        version=ref.version,
                    ),
                ).feature_view
                views[key] = (view.entity, {f.name: f.value_type for f in view.fields})
            entity, types = views[key]
            available.append(
                AvailableFeature(ref.feature_view, ref.feature, entity, types[ref.feature])
            )
        return available

    def export(
        self,
        project: str,
        feature_set: str,
        output_path: Path,
        *,
        entity_rows: Path | None = None,
        snapshot_time: datetime | None = None,
    ) -> int:
        request = mpb.ExportTrainingSetRequest(
            model_feature_set=f"projects/{project}/modelFeatureSets/{feature_set}",
            output_path=str(output_path.resolve()),
        )
        if entity_rows is not None:
            request.entity_parquet_path = str(entity_rows.resolve())
        if snapshot_time is not None:
            request.snapshot_time.FromDatetime(snapshot_time)
        return int(self._materialization.call("ExportTrainingSet", request, long=True).row_count)

    def ensure_model(self, project: str, model: str, description: str) -> None:
        name = f"projects/{project}/models/{model}"
        try:
            self._registry.call("GetModel", rpb.GetModelRequest(name=name))
        except RpcFailed as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            self._registry.call(
                "CreateModel",
                rpb.CreateModelRequest(
                    parent=f"projects/{project}",
                    model_id=model,
                    model=model_pb2.Model(description=description),
                ),
            )

    def create_version(
        self, project: str, model: str, version: model_pb2.ModelVersion
    ) -> model_pb2.ModelVersion:
        request = rpb.CreateModelVersionRequest(
            parent=f"projects/{project}/models/{model}", model_version=version
        )
        return self._registry.call("CreateModelVersion", request).model_version

    def deploy(self, name: str) -> model_pb2.ModelVersion:
        request = rpb.DeployModelVersionRequest(name=name)
        return self._registry.call("DeployModelVersion", request, long=True).model_version

    def activate(self, name: str) -> model_pb2.ModelVersion:
        request = rpb.ActivateModelVersionRequest(name=name)
        return self._registry.call("ActivateModelVersion", request, long=True).model_version

    def entity_key(self, project: str, entity: str) -> AvailableFeature:
        name = f"projects/{project}/entities/{entity}"
        found = self._registry.call("GetEntity", rpb.GetEntityRequest(name=name)).entity
        return AvailableFeature.key(found.join_key, entity, found.key_type)


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "train",
        parents=[common],
        help="train a ranking model and deploy it as a new version",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, help="training config (YAML)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where exports and samples go, inside the project's file roots "
        "(default .run/projects/PROJECT/training/MODEL, the local stack's root)",
    )
    parser.add_argument("--project", help="train in this project instead of the config's")
    parser.add_argument(
        "--model-repository",
        type=Path,
        help="Triton model repository for the new version (default: RECSTACK_MODEL_REPOSITORY)",
    )
    parser.add_argument(
        "--no-deploy", action="store_true", help="train and evaluate only; register nothing"
    )
    parser.add_argument(
        "--no-activate", action="store_true", help="deploy the new version but keep the active one"
    )
    parser.add_argument("--materialization", help="materialization service address")
    parser.set_defaults(handler=_train)


class TrainSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSTACK_", extra="ignore")

    model_repository: Path = DEFAULT_REPOSITORY


def _train(args: argparse.Namespace, context: Context) -> int:
    # torch and LightGBM load only when a model is trained, not for every CLI command.
    from training import config as training_config
    from training import deploy, pipeline

    try:
        config = training_config.load(args.config)
    except training_config.ConfigError as exc:
        raise CliError(str(exc)) from None
    if args.project:
        config = config.model_copy(update={"project": args.project})
    # The exports land here: inside the project's file roots, which the local stack puts at
    # .run/projects/<project>.
    default = Path(".run") / "projects" / config.project / "training" / config.model
    work_dir = args.work_dir or default
    with context.connect() as registry, materialize.connect(args, context) as materialization:
        services = GrpcTrainingServices(registry, materialization)
        try:
            trained = pipeline.train(config, services, work_dir, log=context.echo)
        except FeatureConfigError as exc:
            raise CliError(f"{config.fg}: {exc}") from None
        context.echo(_metrics_table(trained.metrics, trained.outputs))
        if args.no_deploy:
            return 0
        repository = args.model_repository or TrainSettings().model_repository
        deployed = deploy.deploy(
            trained, services, repository, activate=not args.no_activate, log=context.echo
        )
    context.echo(f"{deployed.version.name}: {State.Name(deployed.version.state)}")
    return 0


def _metrics_table(metrics: dict[str, float], outputs: Sequence[str]) -> str:
    rows = [
        [
            output,
            f"{metrics[f'{output}_auc']:.4f}",
            f"{metrics[f'{output}_logloss']:.4f}",
            f"{metrics[f'baseline_popularity_{output}_auc']:.4f}",
            f"{metrics[f'baseline_popularity_{output}_logloss']:.4f}",
        ]
        for output in outputs
    ]
    return table(["OUTPUT", "AUC", "LOGLOSS", "POPULARITY AUC", "POPULARITY LOGLOSS"], rows)
