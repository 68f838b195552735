"""Registry rules against an in-memory repository that honours the same Protocol."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
from google.protobuf.duration_pb2 import Duration
from recstack.registry.v1 import (
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    model_feature_set_pb2,
    project_pb2,
)

from services.registry.kinds import (
    EMBEDDING_MODEL,
    ENTITY,
    FEATURE_VIEW,
    MODEL_FEATURE_SET,
    PROJECT,
)
from services.registry.registry import Registry
from shared.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from shared.values import VT
from tests.fakes.registry import InMemoryRepository

FV = feature_view_pb2.FeatureView
EM = embedding_model_pb2.EmbeddingModel


@pytest.fixture
def registry():
    state = {"repo": InMemoryRepository()}

    @contextmanager
    def unit_of_work():
        # Work on a copy and publish it only on success: the rollback a real transaction gives.
        working = copy.deepcopy(state["repo"])
        yield working
        state["repo"] = working

    registry = Registry(unit_of_work)
    registry.create(PROJECT, "", "shop", project_pb2.Project(), False)
    registry.create(
        ENTITY,
        "projects/shop",
        "user",
        entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
        False,
    )
    return registry


def _view(*extra_fields):
    fields = [
        feature_view_pb2.FeatureField(name="user_id", value_type=VT.VALUE_TYPE_INT64),
        feature_view_pb2.FeatureField(name="review", value_type=VT.VALUE_TYPE_STRING),
        *extra_fields,
    ]
    return FV(entity="user", type=FV.TYPE_REAL_TIME, fields=fields)


def _create_view(registry, view=None, view_id="profile"):
    return registry.create(FEATURE_VIEW, "projects/shop", view_id, view or _view(), False)


@pytest.mark.parametrize("bad_id", ["", "Upper", "9lives", "has-dash", "x" * 64])
def test_ids_are_checked(registry, bad_id):
    with pytest.raises(InvalidArgument) as caught:
        registry.create(ENTITY, "projects/shop", bad_id, entity_pb2.Entity(), False)
    assert caught.value.field == "entity_id"


def test_validate_only_writes_nothing(registry):
    _ = registry.create(FEATURE_VIEW, "projects/shop", "profile", _view(), True)
    with pytest.raises(NotFound):
        registry.get(FEATURE_VIEW, "projects/shop/featureViews/profile")


def test_duplicate_create(registry):
    _create_view(registry)
    with pytest.raises(AlreadyExists):
        _create_view(registry)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda v: v.ClearField("fields"), "feature_view.fields"),
        (
            lambda v: v.fields.add(name="review", value_type=VT.VALUE_TYPE_STRING),
            "feature_view.fields[2].name",
        ),
        (
            lambda v: setattr(v.fields[0], "value_type", VT.VALUE_TYPE_STRING),
            "feature_view.fields.user_id",
        ),
        (lambda v: setattr(v, "type", FV.TYPE_UNSPECIFIED), "feature_view.type"),
        (lambda v: setattr(v, "type", FV.TYPE_BATCH), "feature_view.source"),
        (lambda v: setattr(v.ttl, "seconds", -1), "feature_view.ttl"),
        (lambda v: setattr(v.fields[1], "value_type", 0), "feature_view.fields[1].value_type"),
    ],
)
def test_feature_view_rules_name_the_field(registry, mutate, field):
    view = _view()
    mutate(view)
    with pytest.raises(InvalidArgument) as caught:
        _create_view(registry, view)
    assert caught.value.field == field


def test_embedding_production_must_reference_a_model_and_be_a_float_list(registry):
    produced = feature_view_pb2.FeatureField(
        name="review_embedding",
        value_type=VT.VALUE_TYPE_FLOAT_LIST,
        production=feature_view_pb2.FeatureProduction(
            transform=feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING,
            input_field="review",
            embedding_model="minilm",
        ),
    )
    with pytest.raises(NotFound):
        _create_view(registry, _view(produced))
    model = registry.create(
        EMBEDDING_MODEL,
        "projects/shop",
        "minilm",
        EM(
            model_type=EM.MODEL_TYPE_TEXT_EMBEDDING,
            provider=EM.PROVIDER_TRITON,
            model_name="m",
            dimension=384,
        ),
        False,
    )
    assert (model.batch_size, model.concurrency, model.max_input_tokens) == (10, 30, 8192)
    assert model.max_retries == 5
    assert model.initial_backoff.ToMilliseconds() == 500
    assert model.call_timeout.seconds == 30
    produced.value_type = VT.VALUE_TYPE_DOUBLE
    with pytest.raises(InvalidArgument):
        _create_view(registry, _view(produced))
    produced.value_type = VT.VALUE_TYPE_FLOAT_LIST
    assert _create_view(registry, _view(produced)).version == 1
    with pytest.raises(FailedPrecondition):
        registry.delete(EMBEDDING_MODEL, "projects/shop/embeddingModels/minilm", "")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"batch_size": 0, "dimension": 10}, None),
        ({"batch_size": 5000}, "embedding_model.batch_size"),
        ({"concurrency": 999}, "embedding_model.concurrency"),
        ({"dimension": 20000}, "embedding_model.dimension"),
        ({"model_name": ""}, "embedding_model.model_name"),
        ({"provider": EM.PROVIDER_UNSPECIFIED}, "embedding_model.provider"),
        ({"max_retries": 0}, None),
        ({"max_retries": 21}, "embedding_model.max_retries"),
        ({"initial_backoff": Duration(seconds=61)}, "embedding_model.initial_backoff"),
        ({"initial_backoff": Duration(nanos=1_000_000)}, "embedding_model.initial_backoff"),
        ({"call_timeout": Duration(nanos=50_000_000)}, "embedding_model.call_timeout"),
        ({"call_timeout": Duration(seconds=601)}, "embedding_model.call_timeout"),
    ],
)
def test_embedding_model_ranges(registry, changes, field):
    fields = {
        "model_type": EM.MODEL_TYPE_TEXT_EMBEDDING,
        "provider": EM.PROVIDER_OPENAI_COMPATIBLE,
        "model_name": "text-embedding-v4",
    }
    model = EM(**(fields | changes))
    if field is None:
        created = registry.create(EMBEDDING_MODEL, "projects/shop", "m", model, False)
        assert created.batch_size == 10
        # An explicit 0 means no retries, not the default.
        assert created.max_retries == changes.get("max_retries", 5)
        return
    with pytest.raises(InvalidArgument) as caught:
        registry.create(EMBEDDING_MODEL, "projects/shop", "m", model, False)
    assert caught.value.field == field


def test_schema_change_adds_a_version_and_metadata_does_not(registry):
    view = _create_view(registry)
    view.fields.add(name="score", value_type=VT.VALUE_TYPE_FLOAT)
    second = registry.update(FEATURE_VIEW, view, ["fields"])
    assert second.version == 2
    second.description = "profiles"
    described = registry.update(FEATURE_VIEW, second, ["description"])
    assert described.version == 2
    first = registry.get(FEATURE_VIEW, view.name, version=1)
    assert len(first.fields) == 2
    with pytest.raises(NotFound):
        registry.get(FEATURE_VIEW, view.name, version=3)


def test_stale_etag_is_aborted(registry):
    entity = registry.get(ENTITY, "projects/shop/entities/user")
    entity.description = "a"
    registry.update(ENTITY, entity, ["description"])
    with pytest.raises(Aborted):
        registry.update(ENTITY, entity, ["description"])
    with pytest.raises(Aborted):
        registry.delete(ENTITY, entity.name, entity.etag)


@pytest.mark.parametrize("path", ["name", "etag", "create_time", "nope"])
def test_update_mask_rejects_output_only_and_unknown_fields(registry, path):
    entity = registry.get(ENTITY, "projects/shop/entities/user")
    with pytest.raises(InvalidArgument) as caught:
        registry.update(ENTITY, entity, [path])
    assert caught.value.field == "update_mask"


def test_delete_with_dependants_is_refused_and_rolled_back(registry):
    _create_view(registry)
    with pytest.raises(FailedPrecondition):
        registry.delete(ENTITY, "projects/shop/entities/user", "")
    assert registry.get(ENTITY, "projects/shop/entities/user").join_key == "user_id"


def test_feature_set_resolves_star_to_pinned_versions(registry):
    _create_view(registry)
    feature_set = registry.create(
        MODEL_FEATURE_SET,
        "projects/shop",
        "ranker",
        model_feature_set_pb2.ModelFeatureSet(features=["profile:*"], label="clicked"),
        False,
    )
    resolved = [(r.feature_view, r.version, r.feature) for r in feature_set.resolved_features]
    assert resolved == [("profile", 1, "user_id"), ("profile", 1, "review")]
    with pytest.raises(InvalidArgument):
        registry.create(
            MODEL_FEATURE_SET,
            "projects/shop",
            "bad",
            model_feature_set_pb2.ModelFeatureSet(features=["profile:nope"]),
            False,
        )


def test_list_pages_and_rejects_bad_tokens(registry):
    for index in range(5):
        _create_view(registry, view_id=f"v{index}")
    first = registry.list(FEATURE_VIEW, "projects/shop", 2, "", "")
    second = registry.list(FEATURE_VIEW, "projects/shop", 2, first.next_page_token, "")
    third = registry.list(FEATURE_VIEW, "projects/shop", 2, second.next_page_token, "")
    names = [view.name.rsplit("/", 1)[1] for page in (first, second, third) for view in page.items]
    assert names == ["v0", "v1", "v2", "v3", "v4"] and third.next_page_token == ""
    with pytest.raises(InvalidArgument):
        registry.list(FEATURE_VIEW, "projects/shop", -1, "", "")
    with pytest.raises(InvalidArgument):
        registry.list(FEATURE_VIEW, "projects/shop", 2, "!!", "")


def test_bad_parent_and_unknown_project(registry):
    with pytest.raises(InvalidArgument) as caught:
        registry.create(ENTITY, "shop", "item", entity_pb2.Entity(), False)
    assert caught.value.field == "parent"
    with pytest.raises(NotFound):
        registry.create(
            ENTITY,
            "projects/none",
            "item",
            entity_pb2.Entity(join_key="item_id", key_type=VT.VALUE_TYPE_INT64),
            False,
        )
