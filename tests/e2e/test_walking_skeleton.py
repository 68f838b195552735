"""The walking skeleton through the gRPC APIs of all four services, real PostgreSQL and Triton."""

from __future__ import annotations

import grpc
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from recstack.materialization.v1 import job_pb2
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.serving.v1 import serving_service_pb2 as spb

from infra.local import demo

PROJECT = "skeleton"


@pytest.fixture(scope="module")
def stubs(
    registry_address, materialization_address, serving_address, recommend_address, client_settings
):
    return demo.Stubs.connect(
        registry_address,
        materialization_address,
        serving_address,
        recommend_address,
        client_settings,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return demo.write_sample_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def materialized(stubs, data):
    demo.register(stubs, PROJECT, data)
    return demo.materialize(stubs, PROJECT)


def _latest(path, key, key_value, feature):
    table = pq.read_table(path)
    rows = table.filter(pc.equal(table[key], key_value)).sort_by([("event_ts", "descending")])
    return rows[feature][0].as_py()


def test_jobs_succeed_and_count_rows(materialized, data):
    assert [job.state for job in materialized] == [job_pb2.Job.STATE_SUCCEEDED] * 2
    for job, source in zip(materialized, ("users", "items"), strict=True):
        assert job.progress.rows_read == pq.read_metadata(data[source]).num_rows
        assert job.progress.rows_written_offline == job.progress.rows_read


def test_online_features_are_each_users_latest_event(stubs, materialized, data):
    response = demo.read_user_features(stubs, PROJECT, [7, 50, 999])
    columns = dict(zip(response.feature_names, response.columns, strict=True))
    age = columns["user_profile:age_norm"]
    assert list(age.statuses) == [spb.FEATURE_STATUS_PRESENT] * 2 + [spb.FEATURE_STATUS_NOT_FOUND]
    assert age.values[0].double_value == _latest(data["users"], "user_id", 7, "age_norm")
    assert age.values[1].double_value == _latest(data["users"], "user_id", 50, "age_norm")


def test_recommend_unknown_scene_is_not_found(stubs, materialized):
    with pytest.raises(grpc.RpcError) as caught:
        stubs.recommend.Recommend(cpb.RecommendRequest(scene="nope", user_id="7"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_recommend_without_user_is_invalid_argument(stubs, materialized):
    with pytest.raises(grpc.RpcError) as caught:
        stubs.recommend.Recommend(cpb.RecommendRequest(scene="home_feed"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in caught.value.details()


def test_export_training_set_is_point_in_time_correct(stubs, materialized, data, tmp_path):
    from datetime import timedelta

    import pyarrow as pa
    from recstack.materialization.v1 import materialization_service_pb2 as mpb
    from recstack.registry.v1 import model_feature_set_pb2
    from recstack.registry.v1 import registry_service_pb2 as rpb

    stubs.registry.CreateModelFeatureSet(
        rpb.CreateModelFeatureSetRequest(
            parent=f"projects/{PROJECT}",
            model_feature_set_id="ranker_features",
            model_feature_set=model_feature_set_pb2.ModelFeatureSet(
                features=["user_profile:age_norm"], label="clicked", entities=["user"]
            ),
        )
    )
    users = pq.read_table(data["users"])
    first_seen = users.filter(pc.equal(users["user_id"], 7)).sort_by("event_ts")
    when = first_seen["event_ts"][0].as_py()
    rows = pa.table(
        {
            "user_id": pa.array([7, 7, 999], pa.int64()),
            "event_ts": pa.array(
                [when - timedelta(seconds=1), when, when], pa.timestamp("us", tz="UTC")
            ),
            "clicked": pa.array([0, 1, 0]),
        }
    )
    pq.write_table(rows, tmp_path / "labels.parquet")
    response = stubs.materialization.ExportTrainingSet(
        mpb.ExportTrainingSetRequest(
            model_feature_set=f"projects/{PROJECT}/modelFeatureSets/ranker_features",
            entity_parquet_path=str(tmp_path / "labels.parquet"),
            output_path=str(tmp_path / "train.parquet"),
        )
    )
    assert response.row_count == 3
    exported = pq.read_table(response.output_path).to_pylist()
    assert exported[0]["user_profile__age_norm"] is None
    assert exported[1]["user_profile__age_norm"] == first_seen["age_norm"][0].as_py()
    assert exported[2]["user_profile__age_norm"] is None


def test_pushed_reviews_are_embedded_and_similar_texts_are_close(stubs, materialized):
    vectors = demo.embed_reviews(stubs, PROJECT)
    assert {item: vector.shape for item, vector in vectors.items()} == {
        1: (384,),
        2: (384,),
        3: (384,),
    }
    dog_food, kibble, charger = vectors[1], vectors[2], vectors[3]
    assert float(dog_food @ kibble) > float(dog_food @ charger) + 0.2
