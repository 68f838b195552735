"""The console's scene, experiment, explorer and model pages in a real browser, on real
services: items materialized into the online store, a scene ranking them with the fixed-weight
`ranker` on Triton, an A/B experiment, and a model with trained versions in the registry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf import struct_pb2
from recstack.common.v1 import value_pb2
from recstack.materialization.v1 import job_pb2, materialization_service_pb2_grpc
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.recommend.v1 import experiment_pb2, recommend_service_pb2_grpc, scene_pb2
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.registry.v1 import (
    data_source_pb2,
    entity_pb2,
    feature_view_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb

from tests.plugins.console import artifact
from tests.registered_models import RegisteredModel
from tests.scenes import params

VT = value_pb2.ValueType
FEATURES = tuple(f"f{i}" for i in range(8))  # the fixed-weight ranker's 8 inputs
DAY = datetime(2026, 3, 1, tzinfo=UTC)
ITEMS = 40

pytestmark = pytest.mark.usefixtures("unload_trained_models")


@pytest.fixture(scope="module")
def registry(registry_address, connect):
    return registry_service_pb2_grpc.RegistryServiceStub(connect(registry_address))


@pytest.fixture(scope="module")
def recommend(recommend_address, connect):
    return recommend_service_pb2_grpc.RecommendServiceStub(connect(recommend_address))


def _write_items(path: Path) -> None:
    rng = np.random.default_rng(11)
    columns = {
        "item_id": pa.array(range(1, ITEMS + 1), pa.int64()),
        "popularity": pa.array(rng.random(ITEMS)),
        **{f: pa.array(rng.random(ITEMS)) for f in FEATURES},
        "ts": pa.array([DAY + timedelta(hours=1)] * ITEMS, pa.timestamp("us", tz="UTC")),
    }
    pq.write_table(pa.table(columns), path)


@pytest.fixture(scope="module")
def scene(registry, recommend, materialization_address, connect, tmp_path_factory) -> str:
    """A project with items online, a scene over them and an experiment on it."""
    project = f"r_{uuid.uuid4().hex[:8]}"
    source = tmp_path_factory.mktemp("items") / "items.parquet"
    _write_items(source)
    field = feature_view_pb2.FeatureField
    registry.Apply(
        rpb.ApplyRequest(
            parent=f"projects/{project}",
            definitions=[
                *(
                    rpb.Definition(
                        id=entity,
                        entity=entity_pb2.Entity(
                            join_key=f"{entity}_id", key_type=VT.VALUE_TYPE_INT64
                        ),
                    )
                    for entity in ("user", "item")
                ),
                rpb.Definition(
                    id="item_source",
                    data_source=data_source_pb2.DataSource(
                        file=data_source_pb2.FileSource(
                            path=str(source), format=data_source_pb2.FileSource.FORMAT_PARQUET
                        ),
                        event_timestamp_column="ts",
                    ),
                ),
                rpb.Definition(
                    id="items",
                    feature_view=feature_view_pb2.FeatureView(
                        entity="item",
                        source="item_source",
                        type=feature_view_pb2.FeatureView.TYPE_BATCH,
                        offline_enabled=True,
                        online_enabled=True,
                        fields=[
                            field(name="item_id", value_type=VT.VALUE_TYPE_INT64),
                            field(name="popularity", value_type=VT.VALUE_TYPE_DOUBLE),
                            *(field(name=f, value_type=VT.VALUE_TYPE_DOUBLE) for f in FEATURES),
                        ],
                    ),
                ),
            ],
        )
    )
    materialization = materialization_service_pb2_grpc.MaterializationServiceStub(
        connect(materialization_address)
    )
    request = mpb.BackfillRequest(feature_view=f"projects/{project}/featureViews/items")
    request.window.start_time.FromDatetime(DAY)
    request.window.end_time.FromDatetime(DAY + timedelta(days=1))
    for job in materialization.Backfill(request).jobs:
        last = None
        for update in materialization.WatchJob(mpb.WatchJobRequest(name=job.name), timeout=60):
            last = update.job
        assert last.state == job_pb2.Job.STATE_SUCCEEDED, last.error_message

    scene_id = f"{project}_home"
    recommend.CreateScene(
        cpb.CreateSceneRequest(
            scene_id=scene_id,
            scene=scene_pb2.Scene(
                project=project,
                user_entity="user",
                item_entity="item",
                description="Popular items ranked by the fixed-weight ranker.",
                recalls=[
                    scene_pb2.StageConfig(
                        type="popularity",
                        quota=30,
                        params=params(feature_view="items", feature="popularity"),
                    )
                ],
                rank=scene_pb2.RankConfig(
                    model_name="ranker",
                    features=[f"items:{f}" for f in FEATURES],
                    score_output="probs_ctr",
                ),
                reranks=[scene_pb2.StageConfig(type="top_n")],
                top_n=10,
            ),
        )
    )
    overrides = struct_pb2.Struct()
    overrides.update({"top_n": 5})
    recommend.CreateExperiment(
        cpb.CreateExperimentRequest(
            experiment_id=f"{scene_id}_ab",
            experiment=experiment_pb2.Experiment(
                scene=scene_id,
                layer="ranking",
                bucket_count=100,
                variants=[
                    experiment_pb2.Variant(name="control", bucket_start=0, bucket_end=50),
                    experiment_pb2.Variant(
                        name="short", bucket_start=50, bucket_end=100, overrides=overrides
                    ),
                ],
            ),
        )
    )
    return scene_id


def _ask(recommend, scene: str, user: str) -> cpb.RecommendResponse:
    return recommend.Recommend(cpb.RecommendRequest(scene=scene, user_id=user, debug=True))


def test_a_scenes_pipeline_and_its_experiment_layers(console_page, scene):
    page = console_page
    page.goto("/scenes")
    page.locator(f"tr.scene[data-scene='{scene}'] a").first.click()
    page.wait_for_url(f"**/scenes/{scene}")
    kinds = [step.get_attribute("data-kind") for step in page.locator("#pipeline .step").all()]
    assert kinds == ["recall", "rank", "rerank"]
    recall = page.locator(".step[data-kind=recall] .stage[data-type=popularity]")
    assert "quota 30" in recall.inner_text()
    assert '"feature_view": "items"' in recall.locator(".params").inner_text()
    rank = page.locator(".step[data-kind=rank] .stage")
    assert '"model_name": "ranker"' in rank.inner_text()
    assert "items:f7" in rank.inner_text()

    layer = page.locator(".layer[data-layer=ranking]")
    ranges = {
        r.get_attribute("data-variant"): (
            r.get_attribute("data-start"),
            r.get_attribute("data-end"),
        )
        for r in layer.locator(".bucket-range").all()
    }
    assert ranges == {"control": ("0", "50"), "short": ("50", "100")}
    assert '"top_n": 5' in layer.locator("tr.variant[data-variant=short]").inner_text()
    page.screenshot(path=str(artifact("scene.png")), full_page=True)


def test_which_variant_gets_a_user_is_what_the_service_says(console_page, scene, recommend):
    page = console_page
    page.goto(f"/scenes/{scene}")
    served = {}
    for user in ("1", "2", "3", "4", "5", "6", "7", "8"):
        page.locator("#variant-form input[name=user]").fill(user)
        page.locator("#variant-form button").click()
        page.wait_for_selector(f"#variant-answer[data-user='{user}']")
        shown = page.locator("#variant-answer").get_attribute("data-variants")
        assert shown == ",".join(_ask(recommend, scene, user).variants)
        served[user] = shown
    # Eight users split over two halves: both variants show up.
    assert {v.rsplit("/", 1)[-1] for v in served.values()} == {"control", "short"}


def test_the_explorer_shows_what_recommend_returns(console_page, scene, recommend):
    expected = _ask(recommend, scene, "7")
    page = console_page
    page.goto(f"/explorer?scene={scene}&user=7")
    rows = page.locator("#items tr.item").all()
    assert [r.get_attribute("data-item") for r in rows] == [i.item_id for i in expected.items]
    assert {r.get_attribute("data-sources") for r in rows} == {"popularity"}
    first = page.locator("#items tr.item").first
    ctr = float(first.locator("td.output[data-output=probs_ctr]").inner_text())
    assert ctr == pytest.approx(expected.items[0].model_scores["probs_ctr"], rel=1e-5)
    stages = {
        r.get_attribute("data-stage") for r in page.locator("#stage-table tr.stage-row").all()
    }
    assert stages == set(expected.stage_millis) | set(expected.stage_counts)
    assert page.locator("#served").get_attribute("data-variants") == ",".join(expected.variants)

    first.locator("button.show-features").click()
    page.wait_for_selector("#generated")
    item = expected.items[0].item_id
    score = recommend.Score(
        cpb.ScoreRequest(scene=scene, user_id="7", item_ids=[item], debug_level=1)
    )
    page.screenshot(path=str(artifact("explorer.png")), full_page=True)
    names = [r.get_attribute("data-feature") for r in page.locator("tr.generated-feature").all()]
    assert names == sorted(score.generated_features[0].features)
    assert names, "the ranker's inputs are generated features"


def test_a_bad_explorer_request_shows_the_services_message(console_page, scene):
    page = console_page
    page.goto("/explorer?scene=no_such_scene_here&user=7")
    refused = page.locator(".api-error").inner_text()
    assert "NOT_FOUND" in refused
    assert "no_such_scene_here" in refused


def test_model_versions_activate_and_roll_back_through_the_registry(
    console_page, registry, trained_model_repository
):
    model = RegisteredModel(registry, trained_model_repository)
    model.add_version()
    model.add_version()
    page = console_page
    page.goto(f"/models/{model.project}")
    versions = page.locator(".model[data-model=ranker] tr.version")
    assert [v.get_attribute("data-state") for v in versions.all()] == ["REGISTERED", "REGISTERED"]
    assert "probs_ctr_auc 0.7000" in versions.first.inner_text()

    page.locator("tr.version[data-version='1'] button.activate").click()
    page.wait_for_selector("tr.version[data-version='1'][data-state=ACTIVE]", timeout=120_000)
    page.locator("tr.version[data-version='2'] button.activate").click()
    page.wait_for_selector("tr.version[data-version='2'][data-state=ACTIVE]", timeout=120_000)
    assert model.states()[2] == "ACTIVE"
    page.screenshot(path=str(artifact("models.png")))

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(".model[data-model=ranker] button.rollback").click()
    page.wait_for_selector("tr.version[data-version='1'][data-state=ACTIVE]", timeout=60_000)
    assert model.get().active_version == 1
