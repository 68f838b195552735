"""Produced text embeddings end to end: materialization and PushFeatures call the real model on
Triton (or an OpenAI-compatible API), store vectors in both stores, and never pay twice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client import REGISTRY
from recstack.common.v1 import time_window_pb2, value_pb2
from recstack.materialization.v1 import (
    data_interval_pb2,
    job_pb2,
    materialization_service_pb2_grpc,
)
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from tests.openai_api import API_KEY, Reply, vector_of

VT = value_pb2.ValueType
DI = data_interval_pb2.DataInterval
EM = embedding_model_pb2.EmbeddingModel
FV = feature_view_pb2.FeatureView
DAY = datetime(2026, 5, 1, tzinfo=UTC)
DOG_REVIEW = "This dog food is great, my puppy loves it and finishes every bowl."
PROBE_DOG = "great food for my dog"
PROBE_CHARGER = "the phone charger broke"
LONG_REVIEW = " ".join(["wonderful"] * 10_000)
TEXTS = {1: DOG_REVIEW, 2: PROBE_DOG, 3: PROBE_CHARGER, 4: LONG_REVIEW, 5: None}
EMBEDDING_FEATURE = "reviews:review_text_embedding"


@pytest.fixture(scope="module")
def registry(registry_address, connect):
    with connect(registry_address) as channel:
        yield registry_service_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def materialization(materialization_address, connect):
    with connect(materialization_address) as channel:
        yield materialization_service_pb2_grpc.MaterializationServiceStub(channel)


@pytest.fixture(scope="module")
def serving(serving_address, connect):
    with connect(serving_address) as channel:
        yield serving_service_pb2_grpc.FeatureServingServiceStub(channel)


def _window():
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(DAY)
    window.end_time.FromDatetime(DAY + timedelta(days=1))
    return window


def _write_reviews(path, texts):
    keys = list(texts)
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array(keys, pa.int64()),
                "review_text": pa.array([texts[key] for key in keys], pa.string()),
                "ts": pa.array(
                    [DAY + timedelta(minutes=key) for key in keys], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        path,
    )


def _register(registry, project, model, source=None):
    """Entity `item`, the embedding model `reviewer`, and view `reviews` (BATCH over a FILE
    source, or REAL_TIME over a PUSH source when `source` is None)."""
    field = feature_view_pb2.FeatureField
    if source is None:
        data_source = data_source_pb2.DataSource(
            push=data_source_pb2.PushSource(
                schema=[
                    field(name="item_id", value_type=VT.VALUE_TYPE_INT64),
                    field(name="review_text", value_type=VT.VALUE_TYPE_STRING),
                ]
            )
        )
    else:
        data_source = data_source_pb2.DataSource(
            file=data_source_pb2.FileSource(
                path=str(source), format=data_source_pb2.FileSource.FORMAT_PARQUET
            ),
            event_timestamp_column="ts",
        )
    production = feature_view_pb2.FeatureProduction(
        transform=feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING,
        input_field="review_text",
        embedding_model="reviewer",
    )
    registry.Apply(
        rpb.ApplyRequest(
            parent=f"projects/{project}",
            definitions=[
                rpb.Definition(
                    id="item",
                    entity=entity_pb2.Entity(join_key="item_id", key_type=VT.VALUE_TYPE_INT64),
                ),
                rpb.Definition(id="reviewer", embedding_model=model),
                rpb.Definition(id="review_rows", data_source=data_source),
                rpb.Definition(
                    id="reviews",
                    feature_view=FV(
                        entity="item",
                        source="review_rows",
                        type=FV.TYPE_BATCH if source is not None else FV.TYPE_REAL_TIME,
                        offline_enabled=True,
                        online_enabled=True,
                        fields=[
                            field(name="item_id", value_type=VT.VALUE_TYPE_INT64),
                            field(name="review_text", value_type=VT.VALUE_TYPE_STRING),
                            field(
                                name="review_text_embedding",
                                value_type=VT.VALUE_TYPE_FLOAT_LIST,
                                production=production,
                            ),
                        ],
                    ),
                ),
            ],
        )
    )
    return f"projects/{project}/featureViews/reviews"


def minilm(**overrides):
    return EM(
        model_type=EM.MODEL_TYPE_TEXT_EMBEDDING,
        provider=EM.PROVIDER_TRITON,
        model_name="minilm",
        dimension=384,
        max_input_tokens=256,
        batch_size=2,
        concurrency=2,
        **overrides,
    )


def _finished(materialization, job):
    last = job
    for update in materialization.WatchJob(mpb.WatchJobRequest(name=job.name), timeout=120):
        last = update.job
    return last


def _backfill(materialization, view, statuses=()):
    [job] = materialization.Backfill(
        mpb.BackfillRequest(feature_view=view, window=_window(), statuses=list(statuses))
    ).jobs
    return _finished(materialization, job)


def _statuses(materialization, view):
    response = materialization.ListDataIntervals(
        mpb.ListDataIntervalsRequest(feature_view=view, store=job_pb2.STORE_ONLINE)
    )
    return {DI.Status.Name(interval.status) for interval in response.data_intervals}


def _vectors(serving, project, keys):
    response = serving.GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=project,
            features=[EMBEDDING_FEATURE],
            entity_keys=[value_pb2.Value(int64_value=key) for key in keys],
        )
    )
    column = response.columns[0]
    return [
        np.array(value.float_list_value.values, np.float32)
        if status == spb.FEATURE_STATUS_PRESENT and value.HasField("float_list_value")
        else None
        for value, status in zip(column.values, column.statuses, strict=True)
    ]


def _cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _model_calls(model_name):
    return REGISTRY.get_sample_value("recstack_embedding_model_calls_total", {"model": model_name})


@pytest.fixture(scope="module")
def backfilled(registry, materialization, tmp_path_factory):
    """A BATCH view of five reviews embedded by minilm on Triton, backfilled once."""
    project = f"emb_{uuid.uuid4().hex[:8]}"
    source = tmp_path_factory.mktemp("reviews") / "reviews.parquet"
    _write_reviews(source, TEXTS)
    view = _register(registry, project, minilm(), source)
    return project, view, _backfill(materialization, view)


def test_backfill_embeds_review_text_into_both_stores(backfilled, serving, offline_store_dir):
    project, _, job = backfilled
    assert job.state == job_pb2.Job.STATE_SUCCEEDED, job.error_message
    assert (job.progress.texts_embedded, job.progress.embedding_cache_hits) == (4, 0)
    assert job.progress.embedding_calls == 2  # 4 texts, batch size 2
    vectors = _vectors(serving, project, list(TEXTS))
    for vector in vectors[:4]:
        assert vector.shape == (384,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert vectors[4] is None  # no text, no vector
    offline = pq.read_table(offline_store_dir / project / "reviews" / "v1").to_pylist()
    by_key = {row["item_id"]: row["review_text_embedding"] for row in offline}
    assert np.array(by_key[1], np.float32) == pytest.approx(vectors[0], abs=1e-6)


def test_a_review_about_dog_food_is_closest_to_a_dog_food_query(backfilled, serving):
    project, _, _ = backfilled
    review, dog, charger, _, _ = _vectors(serving, project, list(TEXTS))
    assert _cosine(review, dog) > _cosine(review, charger) + 0.2


def test_a_10000_word_review_is_truncated_and_counted(backfilled, serving):
    project, _, job = backfilled
    assert job.progress.embedding_truncations == 1
    [vector] = _vectors(serving, project, [4])
    assert vector.shape == (384,) and np.isfinite(vector).all()


def test_rerunning_and_republishing_unchanged_text_makes_no_model_calls(
    backfilled, materialization
):
    _, view, _ = backfilled
    rerun = _backfill(materialization, view, [DI.STATUS_COMPLETE])
    assert rerun.state == job_pb2.Job.STATE_SUCCEEDED, rerun.error_message
    assert (rerun.progress.embedding_calls, rerun.progress.texts_embedded) == (0, 0)
    assert rerun.progress.embedding_cache_hits == 4
    for mode in (mpb.PublishTableRequest.MODE_INCREMENTAL, mpb.PublishTableRequest.MODE_MERGE):
        job = materialization.PublishTable(
            mpb.PublishTableRequest(
                feature_view=view, partition=DAY.date().isoformat(), mode=mode, transform=True
            )
        ).job
        published = _finished(materialization, job)
        assert published.state == job_pb2.Job.STATE_SUCCEEDED, published.error_message
        assert published.progress.embedding_calls == 0


def test_pushed_raw_text_becomes_a_readable_vector_and_a_repush_is_free(
    registry, serving, backfilled
):
    project = f"push_{uuid.uuid4().hex[:8]}"
    _register(registry, project, minilm())
    model = f"projects/{project}/embeddingModels/reviewer"

    def push(item_id, text):
        row = spb.FeatureRow(
            values={
                "item_id": value_pb2.Value(int64_value=item_id),
                "review_text": value_pb2.Value(string_value=text),
            }
        )
        row.event_time.FromDatetime(datetime.now(UTC))
        return serving.PushFeatures(
            iter([spb.PushFeaturesRequest(project=project, feature_view="reviews", rows=[row])])
        )

    assert push(7, DOG_REVIEW).rows_written == 1
    calls = _model_calls(model)
    [pushed] = _vectors(serving, project, [7])
    # The same text through PushFeatures and through a backfill: the same vector.
    [backfilled_vector] = _vectors(serving, backfilled[0], [1])
    assert pushed == pytest.approx(backfilled_vector, abs=1e-5)
    assert push(8, DOG_REVIEW).rows_written == 1
    assert _model_calls(model) == calls
    [repushed] = _vectors(serving, project, [8])
    assert repushed == pytest.approx(pushed, abs=1e-6)


def test_a_provider_failure_leaves_intervals_incomplete_and_the_retry_reuses_paid_texts(
    registry, materialization, serving, tmp_path, embedding_api
):
    texts = {key: f"review number {key} of ten" for key in range(1, 11)}
    source = tmp_path / "reviews.parquet"
    _write_reviews(source, texts)
    api = embedding_api
    model = EM(
        model_type=EM.MODEL_TYPE_TEXT_EMBEDDING,
        provider=EM.PROVIDER_OPENAI_COMPATIBLE,
        model_name="text-embedding-v4",
        dimension=8,
        batch_size=2,
        concurrency=1,
        endpoint=f"{api.url}/bound",
        credential="test_api_key",
        max_retries=1,
        initial_backoff=Duration(nanos=10_000_000),
        call_timeout=Duration(seconds=5),
    )
    project = f"fail_{uuid.uuid4().hex[:8]}"
    view = _register(registry, project, model, source)
    # Two batches go through, then the provider is down for good.
    api.script = [Reply(200), Reply(200)] + [Reply(503, {"error": {"message": "down"}})] * 50
    failed = _backfill(materialization, view)
    assert failed.state == job_pb2.Job.STATE_FAILED
    assert f"projects/{project}/embeddingModels/reviewer" in failed.error_message
    assert "503" in failed.error_message
    assert API_KEY not in failed.error_message
    assert _statuses(materialization, view) == {"STATUS_INCOMPLETE"}

    api.script = []
    requests_before = len(api.requests)
    retry = materialization.RetryJob(mpb.RetryJobRequest(name=failed.name)).job
    finished = _finished(materialization, retry)
    assert finished.state == job_pb2.Job.STATE_SUCCEEDED, finished.error_message
    assert (finished.progress.embedding_cache_hits, finished.progress.texts_embedded) == (4, 6)
    sent = [text for request in api.requests[requests_before:] for text in request["body"]["input"]]
    assert sorted(sent) == sorted(texts[key] for key in range(5, 11))
    assert {request["auth"] for request in api.requests[requests_before:]} == {f"Bearer {API_KEY}"}
    assert _statuses(materialization, view) == {"STATUS_COMPLETE"}
    vectors = _vectors(serving, project, [1, 10])
    assert vectors[0] == pytest.approx(vector_of(texts[1], 8), abs=1e-6)
    assert vectors[1] == pytest.approx(vector_of(texts[10], 8), abs=1e-6)
