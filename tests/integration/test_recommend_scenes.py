"""Recommend over gRPC with real PostgreSQL: scene and experiment standard methods, their bad
paths, and the Recommend/Score edge on in-memory stand-ins for the other services."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from recstack.common.v1 import value_pb2
from recstack.recommend.v1 import experiment_pb2, recommend_service_pb2_grpc, scene_pb2
from recstack.recommend.v1 import recommend_service_pb2 as pb
from recstack.registry.v1 import entity_pb2, feature_view_pb2

from services.recommend.server import (
    MIGRATIONS,
    SCHEMA,
    RecommendDeps,
    RecommendSettings,
    create_server,
)
from shared.channels import open_channel
from shared.db import create_engine
from shared.errors import NotFound, Unavailable
from shared.feature_views import Feature, ViewSchema
from shared.migrations import upgrade
from shared.online_store import Scan, ViewColumns
from tests.scenes import params
from tests.scenes import scene_spec as shared_scene_spec

VT = value_pb2.ValueType
NOW = datetime(2026, 11, 23, tzinfo=UTC)
ITEM_STATS = ViewSchema(
    "shop",
    "item_stats",
    1,
    "item_id",
    VT.VALUE_TYPE_INT64,
    (Feature("popularity", VT.VALUE_TYPE_DOUBLE), Feature("price", VT.VALUE_TYPE_DOUBLE)),
)
USER_PROFILE = ViewSchema(
    "shop",
    "user_profile",
    1,
    "user_id",
    VT.VALUE_TYPE_INT64,
    (Feature("age", VT.VALUE_TYPE_DOUBLE),),
)


VIEWS = {"item_stats": ("item", ITEM_STATS), "user_profile": ("user", USER_PROFILE)}


class Definitions:
    views = VIEWS

    def feature_view(self, project, view_id, version=0):
        if view_id not in self.views:
            raise NotFound(f"projects/{project}/featureViews/{view_id} does not exist")
        return feature_view_pb2.FeatureView(name=view_id, entity=self.views[view_id][0])

    def view_schema(self, project, view_id, version=0):
        return self.feature_view(project, view_id) and self.views[view_id][1]

    def entity(self, project, entity_id):
        return entity_pb2.Entity(join_key=f"{entity_id}_id", key_type=VT.VALUE_TYPE_INT64)

    def model(self, project, model_id):
        raise NotFound(f"projects/{project}/models/{model_id} does not exist")


class OnlineStore:
    def scan_since(self, view, features, since):
        values = {"popularity": [3.0, 9.0, 5.0, 1.0], "price": [1.0, 2.0, 3.0, None]}
        if since is not None:  # nothing is ever rewritten here
            return Scan([], ViewColumns({f: [] for f in features}, []), NOW)
        return Scan([1, 2, 3, 4], ViewColumns({f: values[f] for f in features}, [NOW] * 4), NOW)

    def read(self, requests, keys):
        [(_, features)] = requests
        return [ViewColumns({f: [None] * len(keys) for f in features}, [None] * len(keys))]


class ModelServer:
    """Scores by `age * price`; `down` makes it answer like an unreachable Triton."""

    down = False

    def infer(self, model, inputs, outputs, *, version=""):
        if self.down:
            raise Unavailable("Triton at 127.0.0.1:1 is unavailable")
        features = inputs["features"]
        return {outputs[0]: (features[:, 0] * features[:, 1]).reshape(-1, 1)}

    def is_ready(self, model=None):
        return True


class UserFeatures:
    def read(self, project, refs, key, key_type):
        return {ref: 2.0 for ref in refs}


@pytest.fixture(scope="module")
def engine(database_url):
    engine = create_engine(database_url, pool_size=4)
    upgrade(engine, schema=SCHEMA, script_location=MIGRATIONS)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def model_server():
    return ModelServer()


@pytest.fixture(scope="module")
def channel(engine, database_url, model_server):
    settings = RecommendSettings(grpc_port=0, database_url=database_url)
    deps = RecommendDeps(engine, OnlineStore(), Definitions(), model_server, UserFeatures())
    running, port = create_server(settings, deps)
    with open_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    running.stop(0)


@pytest.fixture(scope="module")
def stub(channel):
    return recommend_service_pb2_grpc.RecommendServiceStub(channel)


@pytest.fixture(autouse=True)
def empty_tables(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE recommend.scenes, recommend.experiments"))


def scene_spec(**changes) -> scene_pb2.Scene:
    return shared_scene_spec(quota=3, **changes)


def create(stub, scene_id="home", **changes) -> scene_pb2.Scene:
    request = pb.CreateSceneRequest(scene_id=scene_id, scene=scene_spec(**changes))
    return stub.CreateScene(request).scene


def error_of(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


def field_violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [violation.field for violation in bad_request.field_violations]
    return fields


# --- scenes ---------------------------------------------------------------------------------


def test_create_then_get_returns_the_stored_scene_with_defaults(stub):
    created = create(stub)

    got = stub.GetScene(pb.GetSceneRequest(name="scenes/home")).scene

    assert got == created
    assert got.name == "scenes/home"
    assert got.etag
    assert got.create_time.seconds > 0
    assert got.top_n == 20
    assert [r.name for r in got.recalls] == ["popularity"]
    assert got.recalls[0].params["feature_view"] == "item_stats"


def test_create_twice_is_already_exists(stub):
    create(stub)

    error = error_of(stub.CreateScene, pb.CreateSceneRequest(scene_id="home", scene=scene_spec()))

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


def test_validate_only_stores_nothing(stub):
    request = pb.CreateSceneRequest(scene_id="home", scene=scene_spec(), validate_only=True)

    assert stub.CreateScene(request).scene.name == "scenes/home"
    assert error_of(stub.GetScene, pb.GetSceneRequest(name="scenes/home")).code() == (
        grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    ("scene_id", "scene", "field"),
    [
        ("Home", scene_spec(), "scene_id"),
        ("home", scene_spec(top_n=501), "scene.top_n"),
        ("home", scene_spec(user_entity=""), "scene.user_entity"),
    ],
)
def test_invalid_scenes_are_refused_naming_the_field(stub, scene_id, scene, field):
    error = error_of(stub.CreateScene, pb.CreateSceneRequest(scene_id=scene_id, scene=scene))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [field]


def test_unknown_stage_type_is_invalid_argument(stub):
    scene = scene_spec()
    scene.recalls[0].type = "ann"

    error = error_of(stub.CreateScene, pb.CreateSceneRequest(scene_id="home", scene=scene))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["scene.recalls[0].type"]


@pytest.mark.parametrize("name", ["scenes/nope", "scenes/Bad", "experiments/home", "home"])
def test_get_unknown_or_malformed_names(stub, name):
    error = error_of(stub.GetScene, pb.GetSceneRequest(name=name))

    expected = (
        grpc.StatusCode.NOT_FOUND if name == "scenes/nope" else grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.code() == expected


def test_update_changes_only_the_masked_fields_and_the_etag(stub):
    created = create(stub)
    change = scene_pb2.Scene(name=created.name, etag=created.etag, top_n=5, description="x")

    updated = stub.UpdateScene(
        pb.UpdateSceneRequest(scene=change, update_mask=field_mask_pb2.FieldMask(paths=["top_n"]))
    ).scene

    assert updated.top_n == 5
    assert updated.description == ""
    assert updated.recalls == created.recalls
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time
    assert stub.GetScene(pb.GetSceneRequest(name="scenes/home")).scene == updated


def test_update_nested_field_by_path(stub):
    created = create(stub)
    change = scene_pb2.Scene(name=created.name, etag=created.etag)
    change.rank.model_name = "ranker_b"

    mask = field_mask_pb2.FieldMask(paths=["rank.model_name"])
    updated = stub.UpdateScene(pb.UpdateSceneRequest(scene=change, update_mask=mask)).scene

    assert updated.rank.model_name == "ranker_b"
    assert updated.rank.score_output == "probs_ctr"


def test_update_with_a_stale_etag_is_aborted(stub):
    created = create(stub)
    mask = field_mask_pb2.FieldMask(paths=["top_n"])
    first = scene_pb2.Scene(name=created.name, etag=created.etag, top_n=5)
    stub.UpdateScene(pb.UpdateSceneRequest(scene=first, update_mask=mask))

    second = scene_pb2.Scene(name=created.name, etag=created.etag, top_n=6)
    error = error_of(stub.UpdateScene, pb.UpdateSceneRequest(scene=second, update_mask=mask))

    assert error.code() == grpc.StatusCode.ABORTED
    assert stub.GetScene(pb.GetSceneRequest(name="scenes/home")).scene.top_n == 5


def test_concurrent_updates_from_one_etag_let_exactly_one_win(stub):
    created = create(stub)
    mask = field_mask_pb2.FieldMask(paths=["top_n"])

    def update(top_n: int) -> grpc.StatusCode:
        change = scene_pb2.Scene(name=created.name, etag=created.etag, top_n=top_n)
        try:
            stub.UpdateScene(pb.UpdateSceneRequest(scene=change, update_mask=mask))
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(update, range(1, 7)))

    assert sorted(code.name for code in codes) == ["ABORTED"] * 5 + ["OK"]
    winner = codes.index(grpc.StatusCode.OK) + 1
    assert stub.GetScene(pb.GetSceneRequest(name="scenes/home")).scene.top_n == winner


@pytest.mark.parametrize(
    ("change", "paths", "field"),
    [
        (scene_pb2.Scene(name="scenes/home"), ["top_n"], "scene.etag"),
        (scene_pb2.Scene(etag="e"), ["top_n"], "scene.name"),
        (scene_pb2.Scene(name="scenes/home", etag="e"), ["nope"], "update_mask"),
        (scene_pb2.Scene(name="scenes/home", etag="e"), ["etag"], "update_mask"),
    ],
)
def test_bad_updates_name_the_field(stub, change, paths, field):
    create(stub)
    mask = field_mask_pb2.FieldMask(paths=paths)

    error = error_of(stub.UpdateScene, pb.UpdateSceneRequest(scene=change, update_mask=mask))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [field]


def test_an_update_that_makes_the_scene_invalid_is_refused_and_changes_nothing(stub):
    created = create(stub)
    change = scene_pb2.Scene(name=created.name, etag=created.etag, top_n=1000)
    mask = field_mask_pb2.FieldMask(paths=["top_n"])

    error = error_of(stub.UpdateScene, pb.UpdateSceneRequest(scene=change, update_mask=mask))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.GetScene(pb.GetSceneRequest(name="scenes/home")).scene == created


def test_list_pages_through_scenes_in_name_order(stub):
    for scene_id in ("s3", "s1", "s5", "s2", "s4"):
        create(stub, scene_id)

    names, token, pages = [], "", 0
    while True:
        page = stub.ListScenes(pb.ListScenesRequest(page_size=2, page_token=token))
        names += [scene.name for scene in page.scenes]
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert names == [f"scenes/s{i}" for i in range(1, 6)]
    assert pages == 3


def test_list_default_and_maximum_page_size(stub):
    for index in range(3):
        create(stub, f"s{index}")

    assert len(stub.ListScenes(pb.ListScenesRequest()).scenes) == 3
    assert len(stub.ListScenes(pb.ListScenesRequest(page_size=5000)).scenes) == 3


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListScenesRequest(page_token="not a token"), "page_token"),
        (pb.ListScenesRequest(page_size=-1), "page_size"),
        (pb.ListScenesRequest(filter="top_n > 3"), "filter"),
    ],
)
def test_bad_list_requests(stub, request_, field):
    error = error_of(stub.ListScenes, request_)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [field]


def test_delete_checks_the_etag_then_removes(stub):
    created = create(stub)

    stale = error_of(stub.DeleteScene, pb.DeleteSceneRequest(name=created.name, etag="stale"))
    stub.DeleteScene(pb.DeleteSceneRequest(name=created.name, etag=created.etag))

    assert stale.code() == grpc.StatusCode.ABORTED
    assert error_of(stub.GetScene, pb.GetSceneRequest(name=created.name)).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    missing = error_of(stub.DeleteScene, pb.DeleteSceneRequest(name=created.name))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


# --- experiments ----------------------------------------------------------------------------


def experiment_spec(scene="home", overrides=None) -> experiment_pb2.Experiment:
    struct = struct_pb2.Struct()
    struct.update(overrides or {})
    return experiment_pb2.Experiment(
        scene=scene,
        layer="ranking",
        variants=[
            experiment_pb2.Variant(name="control", bucket_start=0, bucket_end=50),
            experiment_pb2.Variant(name="short", bucket_start=50, bucket_end=100, overrides=struct),
        ],
    )


def create_experiment(stub, experiment_id="exp", **kwargs) -> experiment_pb2.Experiment:
    request = pb.CreateExperimentRequest(
        experiment_id=experiment_id, experiment=experiment_spec(**kwargs)
    )
    return stub.CreateExperiment(request).experiment


def test_experiment_crud(stub):
    create(stub)
    created = create_experiment(stub, overrides={"top_n": 1})

    got = stub.GetExperiment(pb.GetExperimentRequest(name="experiments/exp")).experiment
    listed = stub.ListExperiments(pb.ListExperimentsRequest()).experiments
    change = experiment_pb2.Experiment(name=created.name, etag=created.etag, description="d")
    mask = field_mask_pb2.FieldMask(paths=["description"])
    updated = stub.UpdateExperiment(
        pb.UpdateExperimentRequest(experiment=change, update_mask=mask)
    ).experiment
    stub.DeleteExperiment(pb.DeleteExperimentRequest(name=created.name, etag=updated.etag))

    assert got == created
    assert (created.bucket_count, created.salt) == (100, "ranking")
    assert list(listed) == [created]
    assert updated.description == "d"
    assert stub.ListExperiments(pb.ListExperimentsRequest()).experiments == []


def test_an_experiment_needs_an_existing_scene(stub):
    error = error_of(
        stub.CreateExperiment,
        pb.CreateExperimentRequest(experiment_id="exp", experiment=experiment_spec("nope")),
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_overrides_that_break_the_scene_are_invalid(stub):
    create(stub)

    error = error_of(
        stub.CreateExperiment,
        pb.CreateExperimentRequest(
            experiment_id="exp", experiment=experiment_spec(overrides={"top_n": 9999})
        ),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["experiment.variants[1].overrides"]


def test_a_scene_with_experiments_cannot_be_deleted(stub):
    created = create(stub)
    create_experiment(stub)

    error = error_of(stub.DeleteScene, pb.DeleteSceneRequest(name=created.name))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "experiments/exp" in error.details()


def test_a_scene_update_that_breaks_an_experiment_is_refused(stub):
    created = create(stub)
    create_experiment(stub, overrides={"recalls": {"popularity": {"quota": 5}}})
    change = scene_pb2.Scene(name=created.name, etag=created.etag)
    change.recalls.add(
        type="popularity", name="popular", quota=3, params=params(feature_view="v", feature="f")
    )
    mask = field_mask_pb2.FieldMask(paths=["recalls"])

    error = error_of(stub.UpdateScene, pb.UpdateSceneRequest(scene=change, update_mask=mask))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- Recommend and Score at the edge --------------------------------------------------------


def test_recommend_ranks_and_reports_the_request(stub):
    create(stub, top_n=2)

    response = stub.Recommend(pb.RecommendRequest(scene="home", user_id="7", debug=True))

    # Recalled by popularity: 2, 3, 1; scored age (2.0) times price.
    assert [(i.item_id, i.score) for i in response.items] == [("3", 6.0), ("2", 4.0)]
    assert list(response.items[0].recall_sources) == ["popularity"]
    assert dict(response.items[0].model_scores) == {"probs_ctr": 6.0}
    assert dict(response.stage_counts) == {
        "popularity": 3,
        "exclude_items": 3,
        "rank": 3,
        "top_n": 2,
    }
    assert response.request_id


def test_recommend_excludes_context_items_and_lists_variants(stub):
    create(stub)
    create_experiment(stub, overrides={"top_n": 1})
    exclude = value_pb2.Value(string_list_value=value_pb2.StringList(values=["3"]))

    served = {}
    for user in range(20):
        response = stub.Recommend(
            pb.RecommendRequest(
                scene="home", user_id=str(user), context={"exclude_item_ids": exclude}
            )
        )
        assert "3" not in [item.item_id for item in response.items]
        served[tuple(response.variants)] = len(response.items)

    assert served == {("exp/control",): 2, ("exp/short",): 1}


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (pb.RecommendRequest(scene="nope", user_id="7"), grpc.StatusCode.NOT_FOUND, None),
        (pb.RecommendRequest(scene="home"), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
        (
            pb.RecommendRequest(scene="home", user_id="7", size=501),
            grpc.StatusCode.INVALID_ARGUMENT,
            "size",
        ),
        (
            pb.RecommendRequest(scene="home", user_id="alice"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "user_id",
        ),
    ],
)
def test_recommend_bad_requests(stub, request_, code, field):
    create(stub)

    error = error_of(stub.Recommend, request_)

    assert error.code() == code
    if field:
        assert field_violations(error) == [field]


def test_model_server_down_degrades_recommend_and_fails_score(stub, model_server):
    create(stub)
    model_server.down = True
    try:
        response = stub.Recommend(pb.RecommendRequest(scene="home", user_id="7"))
        error = error_of(stub.Score, pb.ScoreRequest(scene="home", user_id="7", item_ids=["1"]))
    finally:
        model_server.down = False

    assert response.degraded
    assert "Triton at 127.0.0.1:1 is unavailable" in response.degraded_reason
    assert len(response.items) > 0  # in recall order: the user still gets recommendations
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    # Back up: ranking resumes by itself once the backoff has passed.
    deadline = time.monotonic() + 10
    while stub.Recommend(pb.RecommendRequest(scene="home", user_id="7")).degraded:
        assert time.monotonic() < deadline, "ranking did not resume"
        time.sleep(0.05)


def test_score_returns_request_order_and_generated_features(stub):
    create(stub)

    response = stub.Score(
        pb.ScoreRequest(scene="home", user_id="7", item_ids=["4", "2", "99"], debug_level=1)
    )

    assert [(i.item_id, i.score) for i in response.items] == [("4", 0.0), ("2", 4.0), ("99", 0.0)]
    generated = {
        g.item_id: {name: value.float_value for name, value in g.features.items()}
        for g in response.generated_features
    }
    assert generated == {
        "4": {"user_profile:age": 2.0, "item_stats:price": 0.0},
        "2": {"user_profile:age": 2.0, "item_stats:price": 2.0},
        "99": {"user_profile:age": 2.0, "item_stats:price": 0.0},
    }


def test_health_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    service = "recstack.recommend.v1.RecommendService"

    response = health.Check(health_pb2.HealthCheckRequest(service=service))

    assert response.status == health_pb2.HealthCheckResponse.SERVING
