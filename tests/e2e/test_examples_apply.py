"""`recstack apply examples/feature_repo` with the installed CLI against a real registry."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from recstack.common.v1 import time_window_pb2, value_pb2
from recstack.materialization.v1 import job_pb2, materialization_service_pb2_grpc
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "feature_repo"
DECLARED = {
    ("Entity", "user"),
    ("Entity", "item"),
    ("DataSource", "user_events"),
    ("DataSource", "item_events"),
    ("DataSource", "item_reviews_push"),
    ("DataSource", "product_reviews"),
    ("EmbeddingModel", "minilm"),
    ("FeatureView", "user_profile"),
    ("FeatureView", "item_stats"),
    ("FeatureView", "item_reviews"),
    ("FeatureView", "item_review_text"),
    ("ModelFeatureSet", "ranker_features"),
}


@pytest.fixture(scope="module")
def recstack(registry_address, stack_security):
    script = Path(sys.executable).with_name("recstack")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    env = {**os.environ, "RECSTACK_REGISTRY_ADDR": registry_address, **stack_security.cli_env()}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )

    return run


@pytest.fixture(scope="module")
def project(recstack):
    # Its own project id: other tests of the session use `shop` in the same database.
    project_id = f"shop_{uuid.uuid4().hex[:8]}"
    first = recstack("apply", "examples/feature_repo", "--project", project_id)
    assert first.returncode == 0, first.stderr
    created = {tuple(line.split()[1:3]) for line in first.stdout.splitlines() if " create " in line}
    assert created == DECLARED | {("Project", project_id)}
    assert first.stdout.rstrip().endswith("Applied: 13 created.")
    return project_id


def test_second_apply_is_all_unchanged(recstack, project):
    again = recstack("apply", "examples/feature_repo", "--project", project, "-o", "json")
    assert again.returncode == 0, again.stderr
    steps = json.loads(again.stdout)["steps"]
    assert len(steps) == len(DECLARED)
    assert {step["action"] for step in steps} == {"ACTION_UNCHANGED"}
    planned = recstack("plan", "examples/feature_repo", "--project", project, "--prune")
    assert planned.stdout.rstrip().endswith(
        "No changes: the registry already matches the definitions."
    )


def test_real_time_view_embeds_review_text_with_minilm(recstack, project):
    shown = recstack("get", "feature-view", f"{project}/item_reviews", "-o", "json")
    view = json.loads(shown.stdout)
    assert view["type"] == "TYPE_REAL_TIME"
    assert view["source"] == "item_reviews_push"
    embedding = view["fields"][-1]
    assert embedding["name"] == "review_text_embedding"
    assert embedding["value_type"] == "VALUE_TYPE_FLOAT_LIST"
    assert embedding["production"] == {
        "transform": "TRANSFORM_LLM_EMBEDDING",
        "input_field": "review_text",
        "multimodal_type": "MULTIMODAL_TYPE_TEXT",
        "embedding_model": "minilm",
    }
    model = json.loads(recstack("get", "embedding-model", f"{project}/minilm", "-o", "json").stdout)
    assert (model["dimension"], model["max_input_tokens"]) == (384, 256)
    assert (model["batch_size"], model["concurrency"]) == (32, 4)


def test_sources_point_at_the_committed_parquet_files(recstack, project):
    for source, table in (("user_events", "users"), ("item_events", "items")):
        shown = recstack("get", "data-source", f"{project}/{source}", "-o", "json")
        path = Path(json.loads(shown.stdout)["file"]["path"])
        assert path == EXAMPLE / "data" / f"{table}.parquet"
        assert pq.read_metadata(path).num_rows == 300


def test_feature_set_resolves_both_views(recstack, project):
    shown = recstack("get", "model-feature-set", f"{project}/ranker_features", "-o", "json")
    resolved = json.loads(shown.stdout)["resolved_features"]
    assert {ref["feature_view"] for ref in resolved} == {"user_profile", "item_stats"}
    assert len(resolved) == 10


def test_committed_data_is_what_make_data_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_data", EXAMPLE / "data" / "make_data.py")
    assert spec is not None and spec.loader is not None
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    make_data.main(tmp_path)
    for name in ("users.parquet", "items.parquet"):
        assert pq.read_table(tmp_path / name).equals(pq.read_table(EXAMPLE / "data" / name))
        assert (EXAMPLE / "data" / name).stat().st_size < 50_000


def test_review_text_view_embeds_real_reviews_through_triton(
    project, materialization_address, serving_address, connect
):
    """Six hours of the product reviews (197 of them): materialized, embedded, served."""
    reviews = pq.read_table(EXAMPLE / "data" / "reviews.parquet")
    start = datetime(2026, 10, 1, tzinfo=UTC)
    end = start + timedelta(hours=6)
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(end)
    view = f"projects/{project}/featureViews/item_review_text"
    m, s = connect(materialization_address), connect(serving_address)
    materialization = materialization_service_pb2_grpc.MaterializationServiceStub(m)
    [job] = materialization.Backfill(mpb.BackfillRequest(feature_view=view, window=window)).jobs
    for update in materialization.WatchJob(mpb.WatchJobRequest(name=job.name), timeout=300):
        job = update.job
    assert job.state == job_pb2.Job.STATE_SUCCEEDED, job.error_message
    in_window = reviews.filter(
        (pc.field("event_ts") >= start) & (pc.field("event_ts") < end)
    ).to_pylist()
    assert job.progress.rows_read == len(in_window) == 197
    with_text = {row["Review Text"] for row in in_window if row["Review Text"]}
    assert job.progress.texts_embedded == len(with_text)
    latest = {row["Clothing ID"]: row for row in in_window}
    item, row = next((k, r) for k, r in latest.items() if r["Review Text"])
    response = serving_service_pb2_grpc.FeatureServingServiceStub(s).GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=project,
            features=["item_review_text:review_text", "item_review_text:review_text_embedding"],
            entity_keys=[value_pb2.Value(int64_value=item)],
        )
    )
    text, vector = (column.values[0] for column in response.columns)
    assert text.string_value == row["Review Text"]
    assert len(vector.float_list_value.values) == 384
