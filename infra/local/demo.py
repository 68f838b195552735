"""The demo, through the public APIs only: the feature store, a trained ranker, embeddings.

`make demo` runs it against the stack `make up` started; the e2e tests run the same steps
against in-process services and check every intermediate result.

1. Feature store: register a project, user and item entities, two FILE sources over
   generated Parquet and two batch feature views; backfill both into the stores; read a
   user's features back.
2. MovieLens-100k: apply its feature repository, the home-feed scene and its A/B experiment
   included (`examples/movielens/feature_repo/scenes/`: vector, item-to-item,
   category-affinity and popular recalls, 500 candidates, the ranker on Triton, genre
   diversity, top 10), and materialize its views (`infra.local.movielens`); train the `dnn`
   ranker when no version is active (`make train` does it alone); print recommendations for
   a few users with their recall sources, both model outputs and the variant that served
   them.
3. Embeddings: push raw review texts to a real-time view whose embedding field the platform
   computes with the `minilm` model on Triton, and compare the stored vectors.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from recstack.common.v1 import time_window_pb2, value_pb2
from recstack.materialization.v1 import job_pb2, materialization_service_pb2_grpc
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.recommend.v1 import recommend_service_pb2_grpc
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    model_pb2,
    project_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from infra.local import movielens
from shared.channels import ClientSettings, open_channel
from shared.settings import ServiceSettings

VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
USER_FEATURES = ("age_norm", "activity", "price_affinity", "tenure")
ITEM_FEATURES = ("popularity", "price_norm", "rating", "ctr")
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 7
WINDOW = (DAY0, DAY0 + timedelta(days=DAYS))
State = model_pb2.ModelVersion.State
MOVIELENS_SCENE = movielens.HOME_SCENE
MOVIELENS_USERS = (1, 42, 500)
REVIEWS = {
    1: "This dog food is great, my puppy loves it and finishes every bowl.",
    2: "Healthy kibble that my dog really enjoys.",
    3: "The phone charger stopped working after two days.",
}


@dataclass(frozen=True)
class Stubs:
    registry: registry_service_pb2_grpc.RegistryServiceStub
    materialization: materialization_service_pb2_grpc.MaterializationServiceStub
    serving: serving_service_pb2_grpc.FeatureServingServiceStub
    recommend: recommend_service_pb2_grpc.RecommendServiceStub

    @classmethod
    def connect(
        cls,
        registry: str,
        materialization: str,
        serving: str,
        recommend: str,
        client: ClientSettings | None = None,
    ) -> Stubs:
        return cls(
            registry_service_pb2_grpc.RegistryServiceStub(open_channel(registry, client)),
            materialization_service_pb2_grpc.MaterializationServiceStub(
                open_channel(materialization, client)
            ),
            serving_service_pb2_grpc.FeatureServingServiceStub(open_channel(serving, client)),
            recommend_service_pb2_grpc.RecommendServiceStub(open_channel(recommend, client)),
        )


# --- data ------------------------------------------------------------------------------------


def write_sample_data(directory: Path, users: int = 50, items: int = 200) -> dict[str, Path]:
    """Deterministic user and item event tables, several events per key over DAYS days."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261123)
    paths = {}
    for name, key, count, features in (
        ("users", "user_id", users, USER_FEATURES),
        ("items", "item_id", items, ITEM_FEATURES),
    ):
        events = count * 3
        keys = np.concatenate([np.arange(1, count + 1), rng.integers(1, count + 1, events - count)])
        seconds = rng.integers(0, DAYS * 86400, events)
        columns: dict[str, object] = {
            key: pa.array(keys, pa.int64()),
            "event_ts": pa.array(
                [DAY0 + timedelta(seconds=int(s)) for s in seconds],
                pa.timestamp("us", tz="UTC"),
            ),
        }
        for feature in features:
            columns[feature] = pa.array(rng.random(events), pa.float64())
        paths[name] = directory / f"{name}.parquet"
        pq.write_table(pa.table(columns), paths[name])
    return paths


# --- definitions -----------------------------------------------------------------------------


def register(stubs: Stubs, project: str, data: dict[str, Path]) -> None:
    parent = f"projects/{project}"
    stubs.registry.CreateProject(
        rpb.CreateProjectRequest(
            project_id=project, project=project_pb2.Project(description="demo")
        )
    )
    for entity in ("user", "item"):
        stubs.registry.CreateEntity(
            rpb.CreateEntityRequest(
                parent=parent,
                entity_id=entity,
                entity=entity_pb2.Entity(join_key=f"{entity}_id", key_type=VT.VALUE_TYPE_INT64),
            )
        )
    for entity, source, view, features in (
        ("user", "users", "user_profile", USER_FEATURES),
        ("item", "items", "item_stats", ITEM_FEATURES),
    ):
        stubs.registry.CreateDataSource(
            rpb.CreateDataSourceRequest(
                parent=parent,
                data_source_id=source,
                data_source=data_source_pb2.DataSource(
                    file=data_source_pb2.FileSource(
                        path=str(data[source].resolve()),
                        format=data_source_pb2.FileSource.FORMAT_PARQUET,
                    ),
                    event_timestamp_column="event_ts",
                ),
            )
        )
        fields = [
            feature_view_pb2.FeatureField(name=f"{entity}_id", value_type=VT.VALUE_TYPE_INT64)
        ]
        fields += [
            feature_view_pb2.FeatureField(name=name, value_type=VT.VALUE_TYPE_DOUBLE)
            for name in features
        ]
        stubs.registry.CreateFeatureView(
            rpb.CreateFeatureViewRequest(
                parent=parent,
                feature_view_id=view,
                feature_view=FV(
                    entity=entity,
                    source=source,
                    type=FV.TYPE_BATCH,
                    fields=fields,
                    online_enabled=True,
                    offline_enabled=True,
                ),
            )
        )


def materialize(stubs: Stubs, project: str, timeout_s: float = 120) -> list[job_pb2.Job]:
    """Backfill both views over the data's window and wait for the jobs to end."""
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(WINDOW[0])
    window.end_time.FromDatetime(WINDOW[1])
    jobs = []
    for view in ("user_profile", "item_stats"):
        response = stubs.materialization.Backfill(
            mpb.BackfillRequest(
                feature_view=f"projects/{project}/featureViews/{view}", window=window
            )
        )
        jobs += response.jobs
    return [_wait(stubs, job.name, timeout_s) for job in jobs]


def _wait(stubs: Stubs, name: str, timeout_s: float) -> job_pb2.Job:
    last = None
    for update in stubs.materialization.WatchJob(mpb.WatchJobRequest(name=name), timeout=timeout_s):
        last = update.job
    assert last is not None
    return last


def read_user_features(
    stubs: Stubs, project: str, user_ids: Iterable[int]
) -> spb.GetOnlineFeaturesResponse:
    return stubs.serving.GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=project,
            features=["user_profile:*"],
            entity_keys=[value_pb2.Value(int64_value=user_id) for user_id in user_ids],
        )
    )


def active_version(stubs: Stubs, project: str, model: str) -> model_pb2.ModelVersion | None:
    """The model's ACTIVE version, None when the model or an active version is missing."""
    name = f"projects/{project}/models/{model}"
    try:
        found = stubs.registry.GetModel(rpb.GetModelRequest(name=name)).model
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None
    if not found.active_version:
        return None
    request = rpb.GetModelVersionRequest(name=f"{name}/versions/{found.active_version}")
    return stubs.registry.GetModelVersion(request).model_version


def titles(stubs: Stubs, project: str, item_ids: Sequence[str]) -> dict[str, str]:
    response = stubs.serving.GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=project,
            features=["movie_attributes:title"],
            entity_keys=[value_pb2.Value(int64_value=int(i)) for i in item_ids],
        )
    )
    values = response.columns[0].values
    return {item: value.string_value for item, value in zip(item_ids, values, strict=True)}


def recommend(stubs: Stubs, scene: str, user_id: int, size: int = 10) -> cpb.RecommendResponse:
    return stubs.recommend.Recommend(
        cpb.RecommendRequest(scene=scene, user_id=str(user_id), size=size), timeout=30
    )


def embed_reviews(stubs: Stubs, project: str) -> dict[int, np.ndarray]:
    """Push raw review texts to a REAL_TIME view; serving stores their minilm embeddings."""
    parent = f"projects/{project}"
    em = embedding_model_pb2.EmbeddingModel
    field = feature_view_pb2.FeatureField
    text = field(name="review_text", value_type=VT.VALUE_TYPE_STRING)
    key = field(name="item_id", value_type=VT.VALUE_TYPE_INT64)
    stubs.registry.Apply(
        rpb.ApplyRequest(
            parent=parent,
            definitions=[
                rpb.Definition(
                    id="minilm",
                    embedding_model=em(
                        model_type=em.MODEL_TYPE_TEXT_EMBEDDING,
                        provider=em.PROVIDER_TRITON,
                        model_name="minilm",
                        dimension=384,
                        max_input_tokens=256,
                    ),
                ),
                rpb.Definition(
                    id="reviews_push",
                    data_source=data_source_pb2.DataSource(
                        push=data_source_pb2.PushSource(schema=[key, text])
                    ),
                ),
                rpb.Definition(
                    id="item_reviews",
                    feature_view=FV(
                        entity="item",
                        source="reviews_push",
                        type=FV.TYPE_REAL_TIME,
                        online_enabled=True,
                        fields=[
                            key,
                            text,
                            field(
                                name="review_text_embedding",
                                value_type=VT.VALUE_TYPE_FLOAT_LIST,
                                production=feature_view_pb2.FeatureProduction(
                                    transform=feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING,
                                    input_field="review_text",
                                    embedding_model="minilm",
                                ),
                            ),
                        ],
                    ),
                ),
            ],
        )
    )
    rows = []
    for item_id, review in REVIEWS.items():
        row = spb.FeatureRow(
            values={
                "item_id": value_pb2.Value(int64_value=item_id),
                "review_text": value_pb2.Value(string_value=review),
            }
        )
        row.event_time.GetCurrentTime()
        rows.append(row)
    request = spb.PushFeaturesRequest(project=project, feature_view="item_reviews", rows=rows)
    stubs.serving.PushFeatures(iter([request]), timeout=60)
    response = stubs.serving.GetOnlineFeatures(
        spb.GetOnlineFeaturesRequest(
            project=project,
            features=["item_reviews:review_text_embedding"],
            entity_keys=[value_pb2.Value(int64_value=item_id) for item_id in REVIEWS],
        )
    )
    values = response.columns[0].values
    return {
        item_id: np.array(value.float_list_value.values, np.float32)
        for item_id, value in zip(REVIEWS, values, strict=True)
    }


# --- entry point -------------------------------------------------------------------------------


def show_movielens(stubs: Stubs) -> int:
    """MovieLens-100k through the platform; the ranker is trained when none is active."""
    try:
        movielens.prepare()
        version = active_version(stubs, movielens.PROJECT, movielens.MODEL)
        if version is None or not movielens.data(movielens.EMBEDDINGS_VIEW).is_file():
            # The vector recall reads the item embeddings a training run writes.
            print("no active MovieLens ranker or item embeddings yet: training (~3 min)")
            movielens.train()
            version = active_version(stubs, movielens.PROJECT, movielens.MODEL)
    except movielens.StepFailed as exc:
        print(f"error: {exc}")
        return 1
    assert version is not None
    metrics = version.metrics
    print(
        f"{version.name} ({version.trainer}, {State.Name(version.state)}): test AUC "
        f"probs_ctr {metrics['probs_ctr_auc']:.3f} (popularity "
        f"{metrics['baseline_popularity_probs_ctr_auc']:.3f}), probs_cvr "
        f"{metrics['probs_cvr_auc']:.3f} (popularity "
        f"{metrics['baseline_popularity_probs_cvr_auc']:.3f})"
    )
    # `prepare` applied the scene and its experiment with the feature repository.
    scene = stubs.recommend.GetScene(cpb.GetSceneRequest(name=f"scenes/{MOVIELENS_SCENE}")).scene
    for user in MOVIELENS_USERS:
        response = recommend(stubs, MOVIELENS_SCENE, user)
        served = ", ".join(response.variants) or "no experiment (the scene as stored)"
        print(f"\nuser {user} in {scene.name}, served by {served}, request {response.request_id}:")
        names = titles(stubs, movielens.PROJECT, [item.item_id for item in response.items])
        for rank, item in enumerate(response.items, start=1):
            scores = item.model_scores
            print(
                f"  {rank:2d}. {names[item.item_id][:40]:<40} ctr {scores['probs_ctr']:.3f}  "
                f"cvr {scores['probs_cvr']:.3f}  via {','.join(item.recall_sources)}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.demo")
    parser.add_argument("--user", type=int, default=7)
    args = parser.parse_args(argv)
    settings = ServiceSettings()
    stubs = Stubs.connect(
        settings.registry_addr,
        settings.materialization_addr,
        settings.serving_addr,
        settings.recommend_addr,
        settings.client_settings(),
    )
    project = f"demo_{int(time.time())}"
    # The project's own file root under the stack's run dir (RECSTACK_FILES__ROOT_TEMPLATE).
    data = write_sample_data(settings.run_dir.resolve() / "projects" / project)
    print(f"project {project}: sample data in {data['users'].parent}")
    register(stubs, project, data)
    print("registered entities user/item, sources users/items, views user_profile/item_stats")
    for job in materialize(stubs, project):
        state = job_pb2.Job.State.Name(job.state)
        print(
            f"job {job.name}: {state}, {job.progress.rows_read} rows read, "
            f"{job.progress.rows_written_online} online"
        )
        if job.state != job_pb2.Job.STATE_SUCCEEDED:
            print(f"  error: {job.error_message}")
            return 1
    features = read_user_features(stubs, project, [args.user])
    shown = ", ".join(
        f"{name}={column.values[0].double_value:.3f}"
        for name, column in zip(features.feature_names, features.columns, strict=True)
    )
    print(f"user {args.user} online features: {shown}")
    if show_movielens(stubs) != 0:
        return 1
    vectors = embed_reviews(stubs, project)
    print("pushed 3 raw reviews; serving embedded them with minilm on Triton:")
    first = vectors[1]
    for item_id, vector in vectors.items():
        similarity = float(first @ vector)  # unit vectors: the dot product is the cosine
        review = REVIEWS[item_id]
        print(f"  item {item_id}: {len(vector)}-d, cosine to item 1 {similarity:.3f}  {review!r}")
    view = "user_profile"
    print(f"the console: http://127.0.0.1:8080/materialization/{project}/{view} (and /registry)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
