"""`recstack fg check PROJECT/MODEL --scene SCENE`: offline and online features, bit for bit.

Sampled (user, item) pairs get their model inputs generated the training way (the pairs as
labelled rows at one time, ExportTrainingSet, the model's FG) and the serving way (Score with
debug level 1 on a scene ranked by the model); every tensor of every pair must be identical
(see `training.consistency`). Exit status 1 when any is not, with each mismatch listed.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from google.protobuf import json_format
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.registry.v1 import registry_service_pb2 as rpb

from cli import materialize, resources, scenes
from cli.connection import Connection, Context
from cli.errors import CliError, UsageError
from cli.materialize import whole_number
from cli.train import GrpcTrainingServices
from shared.feature_generator import FeatureGenerator, bind_inputs
from shared.values import generated_array

EPILOG = """\
examples:
  recstack fg check movielens/ranker --scene movielens_home
  recstack fg check movielens/ranker --scene movielens_home --rows 2000 --seed 7

The scene must rank with the model (rank.model); the model's ACTIVE version is checked.

environment:
  RECSTACK_RECOMMEND_ADDR  recommend service (default 127.0.0.1:50054); --recommend overrides it
  RECSTACK_REGISTRY_ADDR, RECSTACK_MATERIALIZATION_ADDR and the connection settings of
  `recstack --help`

exit status: 0 no mismatch, 1 mismatches or a failed call, 2 usage error
"""
# Mismatches printed in full; the count covers all of them.
SHOWN = 20


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "fg",
        help="feature generator tools: check offline/online consistency",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    check = subcommands.add_parser(
        "check",
        parents=[common],
        help="compare a model's generated features offline and online",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("model", metavar="PROJECT/MODEL", help="registered model, e.g. shop/ranker")
    check.add_argument("--scene", required=True, help="a scene whose rank.model is the model")
    check.add_argument("--rows", type=whole_number(1), default=1000, help="pairs (default 1000)")
    check.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    check.add_argument("--work-dir", type=Path, help="where the exports go")
    check.add_argument("--recommend", help="recommend service address")
    check.add_argument("--materialization", help="materialization service address")
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace, context: Context) -> int:
    from training import consistency
    from training.data import FeatureColumns, SnapshotLookup

    name = resources.parse_reference(resources.MODEL, args.model, None)
    project = name.split("/")[1]
    model_id = name.rsplit("/", 1)[-1]
    # Inside the project's file root of the local stack, where exports may write.
    work_dir = args.work_dir or Path(".run") / "projects" / project / "fg-check" / model_id
    work_dir.mkdir(parents=True, exist_ok=True)
    with (
        context.connect() as registry,
        materialize.connect(args, context) as materialization,
        scenes.connect(context, args.recommend) as recommend,
    ):
        scene = recommend.call("GetScene", cpb.GetSceneRequest(name=f"scenes/{args.scene}")).scene
        if scene.project != project or scene.rank.model != model_id:
            raise UsageError(
                f"scene {args.scene!r} ranks with {scene.project}/{scene.rank.model or '-'}, "
                f"not {project}/{model_id}"
            )
        model = registry.call("GetModel", rpb.GetModelRequest(name=name)).model
        if not model.active_version:
            raise CliError(f"{name} has no active version to check")
        version = registry.call(
            "GetModelVersion",
            rpb.GetModelVersionRequest(name=f"{name}/versions/{model.active_version}"),
        ).model_version
        services = GrpcTrainingServices(registry, materialization)
        generator = FeatureGenerator.from_config(json_format.MessageToDict(version.fg_config))
        feature_set = version.model_feature_set.rsplit("/", 1)[-1]
        keys = [
            services.entity_key(project, entity)
            for entity in (scene.user_entity, scene.item_entity)
        ]
        binding = bind_inputs(
            generator,
            services.available_features(project, feature_set),
            user_entity=scene.user_entity,
            item_entity=scene.item_entity,
            keys=keys,
        )
        at = datetime.now(UTC)
        snapshot_path = work_dir / "snapshot.parquet"
        services.export(project, feature_set, snapshot_path, snapshot_time=at)
        snapshot = pq.read_table(snapshot_path)
        pairs = consistency.sample_pairs(
            snapshot, keys[0].feature, keys[1].feature, args.rows, args.seed
        )
        label = registry.call(
            "GetModelFeatureSet", rpb.GetModelFeatureSetRequest(name=version.model_feature_set)
        ).model_feature_set.label
        rows_path = consistency.labelled_rows(
            pairs, keys[0].feature, keys[1].feature, label, at, work_dir / "pairs.parquet"
        )
        exported_path = work_dir / "pairs_features.parquet"
        services.export(project, feature_set, exported_path, entity_rows=rows_path)
        lookup = (
            SnapshotLookup(snapshot, keys[1].feature, binding) if generator.lookup_inputs else None
        )
        offline = consistency.offline(
            generator, FeatureColumns(generator, binding), pq.read_table(exported_path), lookup
        )
        online = consistency.online(pairs, _scorer(recommend, args.scene))
    report = consistency.compare(pairs, offline, online)
    return _print(context, name, version.version, report)


def _scorer(recommend: Connection, scene: str) -> Any:
    def score(user: str, items: list[str]) -> list[dict[str, np.ndarray]]:
        response = recommend.call(
            "Score", cpb.ScoreRequest(scene=scene, user_id=user, item_ids=items, debug_level=1)
        )
        return [
            {name: generated_array(value) for name, value in generated.features.items()}
            for generated in response.generated_features
        ]

    return score


def _print(context: Context, name: str, version: int, report: Any) -> int:
    mismatches = report.mismatches
    for mismatch in mismatches[:SHOWN]:
        context.echo(f"MISMATCH {mismatch}")
    if len(mismatches) > SHOWN:
        context.echo(f"... and {len(mismatches) - SHOWN} more")
    context.echo(
        f"{name} version {version}: {report.rows} rows x {report.tensors} tensors, "
        f"{len(mismatches)} mismatches"
    )
    return 1 if mismatches else 0
