"""The quickstart: the PAI-Rec example trained by `recstack train` (gbdt) on the platform's
features, end to end through the CLI and the services."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import yaml
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.recommend.v1 import recommend_service_pb2_grpc, scene_pb2
from recstack.registry.v1 import model_pb2, registry_service_pb2_grpc
from recstack.registry.v1 import registry_service_pb2 as rpb
from sklearn.metrics import roc_auc_score

from examples.quickstart.data import make_data
from shared.values import generated_array
from tests.cli import run_cli
from tests.scenes import params

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("quickstart") / "quickstart"
    shutil.copytree(QUICKSTART, copy, ignore=shutil.ignore_patterns("*.csv", "*.parquet"))
    make_data.main(copy / "data")
    return copy


@pytest.fixture(scope="module")
def project(quickstart, registry_address, materialization_address, cli_environment) -> str:
    project_id = f"quickstart_{uuid.uuid4().hex[:6]}"
    connect = ("--registry", registry_address)
    applied = run_cli("apply", str(quickstart / "feature_repo"), "--project", project_id, *connect)
    assert applied.code == 0, applied.err
    for view in ("user_features", "item_features"):
        backfill = run_cli(
            "materialize",
            "backfill",
            f"{project_id}/{view}",
            "--start",
            "2026-09-29",
            "--end",
            "2026-10-01",
            "--wait",
            "--materialization",
            materialization_address,
            *connect,
        )
        assert backfill.code == 0, backfill.out + backfill.err
    return project_id


@pytest.fixture(scope="module")
def trained(
    quickstart, project, registry_address, materialization_address, trained_model_repository
):
    return run_cli(
        "train",
        str(quickstart / "train.yaml"),
        "--project",
        project,
        "--work-dir",
        str(quickstart / "work"),
        "--model-repository",
        str(trained_model_repository),
        "--registry",
        registry_address,
        "--materialization",
        materialization_address,
    )


def test_recstack_train_fits_the_seed_gbdt_and_beats_popularity(quickstart, trained):
    result = trained
    assert result.code == 0, result.out + result.err
    row = re.search(r"^probs_ctr\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", result.out, re.MULTILINE)
    assert row is not None, result.out
    auc, logloss, popularity_auc, _ = (float(value) for value in row.groups())
    # Clicks follow a noisy logistic rule of the three features: the model must come close to
    # the rule itself, and popularity (items are drawn uniformly) must not.
    assert auc > oracle_auc(quickstart / "data") - 0.015
    assert popularity_auc < 0.6
    assert logloss < 0.6


def oracle_auc(data: Path) -> float:
    users, items = pcsv.read_csv(data / "users.csv"), pcsv.read_csv(data / "items.csv")
    test = pq.read_table(data / "test.parquet")
    user = test.column("user_id").to_numpy() - 1
    item = test.column("item_id").to_numpy() - 1
    logit = make_data.click_logit(
        users.column("category_affinity").to_numpy()[user],
        users.column("recency_score").to_numpy()[user],
        items.column("price").to_numpy()[item],
    )
    return float(roc_auc_score(test.column("clicked").to_numpy(), logit))


def test_the_trained_version_is_active_and_serves_through_triton_like_onnxruntime(
    trained, project, registry_address, recommend_address, trained_model_repository, connect
):
    assert trained.code == 0, trained.out + trained.err
    with connect(registry_address) as channel:
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        model = registry.GetModel(rpb.GetModelRequest(name=f"projects/{project}/models/click_gbdt"))
        version = registry.GetModelVersion(
            rpb.GetModelVersionRequest(
                name=f"{model.model.name}/versions/{model.model.active_version}"
            )
        ).model_version
    assert version.state == model_pb2.ModelVersion.STATE_ACTIVE
    assert version.metrics["probs_ctr_auc"] > 0.7
    assert [t.name for t in version.signature.inputs] == [
        "category_affinity",
        "price",
        "recency_score",
    ]

    with connect(recommend_address) as channel:
        recommend = recommend_service_pb2_grpc.RecommendServiceStub(channel)
        recommend.CreateScene(
            cpb.CreateSceneRequest(
                scene_id=project,
                scene=scene_pb2.Scene(
                    project=project,
                    user_entity="user",
                    item_entity="item",
                    recalls=[
                        scene_pb2.StageConfig(
                            type="popularity",
                            quota=100,
                            params=params(feature_view="item_features", feature="price"),
                        )
                    ],
                    rank=scene_pb2.RankConfig(model="click_gbdt"),
                    reranks=[scene_pb2.StageConfig(type="top_n")],
                ),
            )
        )
        scored = recommend.Score(
            cpb.ScoreRequest(
                scene=project, user_id="7", item_ids=[str(i) for i in range(1, 51)], debug_level=1
            ),
            timeout=30,
        )

    # The same generated inputs through onnxruntime in this process: Triton's scores match.
    onnx_file = trained_model_repository / version.triton_model_name / "1" / "model.onnx"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    inputs = {
        name: np.stack([generated_array(g.features[name]) for g in scored.generated_features])
        for name in ("category_affinity", "price", "recency_score")
    }
    (expected,) = session.run(["probs_ctr"], inputs)
    served = np.array([item.model_scores["probs_ctr"] for item in scored.items])
    np.testing.assert_allclose(served, expected[:, 0], rtol=1e-6)
    assert len(set(served.round(6))) > 10  # real scores, not one constant
    # The user's features are the same for every item; the items' prices differ.
    assert len({float(row[0]) for row in inputs["category_affinity"]}) == 1
    assert len({float(row[0]) for row in inputs["price"]}) > 10


def bad_train(quickstart: Path, project: str, addresses: tuple[str, str], **changes) -> object:
    config = yaml.safe_load((quickstart / "train.yaml").read_text())
    config.update(changes.pop("config", {}))
    if "fg" in changes:
        (quickstart / "bad_fg.json").write_text(json.dumps(changes.pop("fg")))
        config["fg"] = "bad_fg.json"
    path = quickstart / f"bad_{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    registry, materialization = addresses
    return run_cli(
        "train",
        str(path),
        "--project",
        project,
        "--work-dir",
        str(quickstart / "bad_work"),
        "--registry",
        registry,
        "--materialization",
        materialization,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"config": {"model_feature_set": "nope"}}, "modelFeatureSets/nope does not exist"),
        (
            {
                "fg": {
                    "features": [
                        {
                            "feature_type": "raw_feature",
                            "feature_name": "height",
                            "expression": "user:height",
                        }
                    ]
                }
            },
            "bad_fg.json: features[0].expression: input user:height is not a feature",
        ),
        (
            {"fg": {"features": [{"feature_type": "cross", "feature_name": "x"}]}},
            "features[0].feature_type: 'cross' is not one of",
        ),
        ({"config": {"trainer": "xgboost"}}, "trainer"),
    ],
)
def test_bad_training_configs_fail_clearly_and_register_nothing(
    quickstart,
    project,
    trained,
    registry_address,
    materialization_address,
    connect,
    changes,
    message,
):
    result = bad_train(quickstart, project, (registry_address, materialization_address), **changes)

    assert result.code == 1, result.out + result.err
    assert message in result.err
    with connect(registry_address) as channel:
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        model = registry.GetModel(rpb.GetModelRequest(name=f"projects/{project}/models/click_gbdt"))
    assert model.model.last_version == 1  # the one good version: nothing was registered
