"""Model versions: registration rules and the deploy/activate/rollback state machine, against
the in-memory repository and a fake deployer that honours `ModelDeployer`."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from recstack.registry.v1 import (
    entity_pb2,
    feature_view_pb2,
    model_feature_set_pb2,
    model_pb2,
    project_pb2,
)

from services.registry.adapters.deployer import DeployedModel, ModelLoadFailed, Tensor
from services.registry.kinds import (
    ENTITY,
    FEATURE_VIEW,
    MODEL,
    MODEL_FEATURE_SET,
    PROJECT,
)
from services.registry.models import DeploymentSettings, ModelRegistry
from services.registry.registry import Declared, Registry
from shared.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from shared.values import VT
from tests.fakes.registry import in_memory_unit_of_work
from tests.models import V1_INPUTS, V2_INPUTS, signature

State = model_pb2.ModelVersion.State
FV = feature_view_pb2.FeatureView
MODEL_NAME = "projects/shop/models/ranker"
FEATURE_SET = "projects/shop/modelFeatureSets/ranker_features"
FG = {
    "features": [
        {
            "feature_type": "id_feature",
            "feature_name": "user_id",
            "expression": "user:user_id",
            "hash_bucket_size": 1000,
        },
        {
            "feature_type": "id_feature",
            "feature_name": "genres",
            "expression": "item:genres",
            "hash_bucket_size": 1000,
        },
        {
            "feature_type": "raw_feature",
            "feature_name": "age",
            "expression": "user:user_profile:age",
        },
    ]
}
FG_WITH_HOUR = {
    "features": [
        *FG["features"],
        {"feature_type": "raw_feature", "feature_name": "hour", "expression": "context:hour"},
    ]
}


class FakeDeployer:
    """A model server whose repository holds what `publish` put there."""

    def __init__(self) -> None:
        self.repository: dict[str, DeployedModel] = {}
        self.loaded: set[str] = set()
        self.down = False
        self.loads: list[str] = []

    def publish(self, name: str, spec: model_pb2.ModelSignature, max_batch_size: int = 64):
        def tensors(specs):
            return tuple(Tensor(t.name, t.data_type, tuple(t.dims)) for t in specs)

        self.repository[name] = DeployedModel(
            max_batch_size, tensors(spec.inputs), tensors(spec.outputs)
        )

    def _reachable(self) -> None:
        if self.down:
            raise Unavailable("Triton at fake is unreachable")

    def load(self, model: str) -> None:
        self._reachable()
        self.loads.append(model)
        if model not in self.repository:
            raise ModelLoadFailed(f"failed to load '{model}', failed to poll from model repository")
        self.loaded.add(model)

    def unload(self, model: str) -> None:
        self._reachable()
        self.loaded.discard(model)

    def is_ready(self, model: str, version: str) -> bool:
        self._reachable()
        return model in self.loaded and version == "1"

    def deployed(self, model: str) -> DeployedModel:
        self._reachable()
        if model not in self.loaded:
            raise ModelLoadFailed(f"Request for unknown model: '{model}'")
        return self.repository[model]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    registry: Registry
    models: ModelRegistry
    deployer: FakeDeployer
    clock: Clock
    state: dict

    def version(self, number: int) -> model_pb2.ModelVersion:
        return self.models.get(f"{MODEL_NAME}/versions/{number}")

    def model(self) -> model_pb2.Model:
        return self.registry.get(MODEL, MODEL_NAME)

    def states(self) -> dict[int, str]:
        page = self.models.list(MODEL_NAME, 0, "", "")
        return {v.version: State.Name(v.state).removeprefix("STATE_") for v in page.items}

    def new_version(self, inputs=V1_INPUTS, fg=FG, publish=True) -> model_pb2.ModelVersion:
        created = self.models.create(MODEL_NAME, version_spec(inputs, fg), False)
        if publish:
            self.deployer.publish(created.triton_model_name, created.signature)
        return created


def version_spec(inputs=V1_INPUTS, fg=FG) -> model_pb2.ModelVersion:
    spec = model_pb2.ModelVersion(
        model_feature_set=FEATURE_SET,
        trainer="dnn",
        signature=signature(inputs),
        metrics={"probs_ctr_auc": 0.71},
    )
    spec.fg_config.update(copy.deepcopy(fg))
    return spec


def _field(name: str, value_type: int) -> feature_view_pb2.FeatureField:
    return feature_view_pb2.FeatureField(name=name, value_type=value_type)


@pytest.fixture
def world() -> World:
    state, unit_of_work = in_memory_unit_of_work()
    registry = Registry(unit_of_work)
    registry.create(PROJECT, "", "shop", project_pb2.Project(), False)
    for entity in ("user", "item"):
        registry.create(
            ENTITY,
            "projects/shop",
            entity,
            entity_pb2.Entity(join_key=f"{entity}_id", key_type=VT.VALUE_TYPE_INT64),
            False,
        )
    views = {
        "user_profile": ("user", [_field("age", VT.VALUE_TYPE_FLOAT)]),
        "item_profile": ("item", [_field("genres", VT.VALUE_TYPE_INT64_LIST)]),
    }
    for view_id, (entity, fields) in views.items():
        view = FV(
            entity=entity,
            type=FV.TYPE_REAL_TIME,
            fields=[_field(f"{entity}_id", VT.VALUE_TYPE_INT64), *fields],
        )
        registry.create(FEATURE_VIEW, "projects/shop", view_id, view, False)
    registry.create(
        MODEL_FEATURE_SET,
        "projects/shop",
        "ranker_features",
        model_feature_set_pb2.ModelFeatureSet(
            features=["user_profile:*", "item_profile:genres"], entities=["user", "item"]
        ),
        False,
    )
    registry.create(MODEL, "projects/shop", "ranker", model_pb2.Model(description="CTR"), False)
    clock = Clock()
    deployer = FakeDeployer()
    models = ModelRegistry(
        unit_of_work,
        deployer,
        clock=clock,
        settings=DeploymentSettings(ready_timeout_s=1.0, retire_grace_s=60.0),
        sleep=lambda _seconds: None,
    )
    return World(registry, models, deployer, clock, state)


# --- registration ---------------------------------------------------------------------


def test_create_assigns_numbers_names_and_pins_the_feature_set(world):
    first = world.new_version()
    second = world.new_version(V2_INPUTS, FG_WITH_HOUR)
    assert (first.version, second.version) == (1, 2)
    assert first.name == f"{MODEL_NAME}/versions/1"
    assert second.triton_model_name == "shop__ranker__v2"
    assert second.triton_model_version == "1"
    assert first.state == State.STATE_REGISTERED
    assert [(r.feature_view, r.version, r.feature) for r in first.resolved_features] == [
        ("user_profile", 1, "user_id"),
        ("user_profile", 1, "age"),
        ("item_profile", 1, "genres"),
    ]
    assert world.model().last_version == 2
    assert world.version(1) == first


def test_output_only_fields_of_the_request_are_ignored(world):
    spec = version_spec()
    spec.version, spec.state, spec.triton_model_name = 7, State.STATE_ACTIVE, "elsewhere"
    created = world.models.create(MODEL_NAME, spec, False)
    assert (created.version, created.state, created.triton_model_name) == (
        1,
        State.STATE_REGISTERED,
        "shop__ranker__v1",
    )


def test_validate_only_writes_nothing_and_uses_no_number(world):
    planned = world.models.create(MODEL_NAME, version_spec(), True)
    assert planned.version == 1
    assert world.model().last_version == 0
    assert world.models.list(MODEL_NAME, 0, "", "").items == []


def test_later_changes_to_the_feature_set_do_not_move_a_version(world):
    created = world.new_version()
    feature_set = world.registry.get(MODEL_FEATURE_SET, FEATURE_SET)
    feature_set.features[:] = ["item_profile:genres"]
    world.registry.update(MODEL_FEATURE_SET, feature_set, ["features"])
    assert world.version(1).resolved_features == created.resolved_features


def test_version_numbers_are_never_reused_after_a_delete(world):
    world.new_version()
    world.new_version()
    world.models.delete(f"{MODEL_NAME}/versions/2", "")
    assert world.new_version().version == 3


def test_fg_expression_naming_a_feature_the_set_lacks_is_invalid_argument(world):
    fg = copy.deepcopy(FG)
    fg["features"][1]["expression"] = "item:genre"
    with pytest.raises(InvalidArgument) as caught:
        world.models.create(MODEL_NAME, version_spec(fg=fg), False)
    assert caught.value.field == "model_version.fg_config.features[1].expression"
    assert "input item:genre is not a feature" in caught.value.description
    assert world.model().last_version == 0


@pytest.mark.parametrize(
    ("spec_change", "field"),
    [
        (lambda s: s.ClearField("fg_config"), "model_version.fg_config"),
        (lambda s: s.ClearField("model_feature_set"), "model_version.model_feature_set"),
        (
            lambda s: setattr(s, "model_feature_set", "projects/other/modelFeatureSets/x"),
            "model_version.model_feature_set",
        ),
        (
            lambda s: setattr(s, "model_feature_set", "ranker_features"),
            "model_version.model_feature_set",
        ),
        (lambda s: s.signature.ClearField("outputs"), "model_version.signature.outputs"),
        (
            lambda s: setattr(s.signature.inputs[0], "data_type", "FP32"),
            "model_version.signature.inputs[0].data_type",
        ),
        (
            lambda s: setattr(s.signature.inputs[1], "name", "user_id"),
            "model_version.signature.inputs[1].name",
        ),
        (lambda s: s.signature.inputs[0].dims.append(0), "model_version.signature.inputs[0].dims"),
        (
            lambda s: s.signature.inputs[0].ClearField("dims"),
            "model_version.signature.inputs[0].dims",
        ),
        (
            lambda s: s.metrics.__setitem__("probs_ctr_auc", float("nan")),
            "model_version.metrics.probs_ctr_auc",
        ),
        (lambda s: setattr(s, "trainer", "Deep FM"), "model_version.trainer"),
        (
            lambda s: s.training_window.start_time.FromSeconds(10),
            "model_version.training_window.end_time",
        ),
    ],
)
def test_bad_version_fields_name_the_field(world, spec_change, field):
    spec = version_spec()
    spec_change(spec)
    with pytest.raises(InvalidArgument) as caught:
        world.models.create(MODEL_NAME, spec, False)
    assert caught.value.field == field


def test_missing_parent_or_feature_set_is_not_found(world):
    with pytest.raises(NotFound, match="projects/shop/models/nope does not exist"):
        world.models.create("projects/shop/models/nope", version_spec(), False)
    spec = version_spec()
    spec.model_feature_set = "projects/shop/modelFeatureSets/nope"
    with pytest.raises(NotFound, match=r"model_version\.model_feature_set"):
        world.models.create(MODEL_NAME, spec, False)


def test_list_is_newest_first_with_pages_and_filters(world):
    for _ in range(5):
        world.new_version()
    world.models.deploy(f"{MODEL_NAME}/versions/2")
    first = world.models.list(MODEL_NAME, 2, "", "")
    second = world.models.list(MODEL_NAME, 2, first.next_page_token, "")
    third = world.models.list(MODEL_NAME, 2, second.next_page_token, "")
    pages = [first, second, third]
    assert [[v.version for v in page.items] for page in pages] == [[5, 4], [3, 2], [1]]
    assert third.next_page_token == ""
    deployed = world.models.list(MODEL_NAME, 0, "", "state=STATE_DEPLOYED")
    assert [v.version for v in deployed.items] == [2]
    with pytest.raises(InvalidArgument, match="page_token"):
        world.models.list(MODEL_NAME, 0, "bm9wZQ==", "")


def test_update_changes_metadata_and_refuses_the_artifact_fields(world):
    created = world.new_version()
    created.description = "best so far"
    created.metrics["probs_cvr_auc"] = 0.66
    updated = world.models.update(created, [])
    assert updated.description == "best so far"
    assert dict(updated.metrics) == pytest.approx({"probs_ctr_auc": 0.71, "probs_cvr_auc": 0.66})
    assert updated.etag != created.etag
    with pytest.raises(InvalidArgument, match="'fg_config' is immutable"):
        world.models.update(updated, ["fg_config"])
    with pytest.raises(InvalidArgument, match="'state' is output only"):
        world.models.update(updated, ["state"])
    with pytest.raises(Aborted):
        world.models.update(created, ["description"])


# --- deployment -----------------------------------------------------------------------


def test_deploy_loads_checks_and_marks_deployed(world):
    created = world.new_version()
    world.clock.advance(5)
    deployed = world.models.deploy(created.name)
    assert deployed.state == State.STATE_DEPLOYED
    assert deployed.state_time.ToDatetime(tzinfo=UTC) == world.clock.now
    assert world.deployer.loaded == {"shop__ranker__v1"}
    # Already loaded: checked again, not reloaded.
    world.models.deploy(created.name)
    assert world.deployer.loads == ["shop__ranker__v1"]


def test_deploy_while_the_model_server_is_down_changes_nothing(world):
    created = world.new_version()
    world.deployer.down = True
    with pytest.raises(Unavailable):
        world.models.deploy(created.name)
    assert world.version(1) == created


def test_a_missing_artifact_fails_the_version_with_the_reason(world):
    created = world.new_version(publish=False)
    with pytest.raises(FailedPrecondition) as caught:
        world.models.deploy(created.name)
    assert caught.value.reason == "MODEL_LOAD_FAILED"
    assert "failed to poll from model repository" in caught.value.message
    failed = world.version(1)
    assert failed.state == State.STATE_FAILED
    assert caught.value.message == f"{created.name}: {failed.state_message}"
    assert failed.state_message.startswith("failed to load 'shop__ranker__v1'")
    # Training writes the files later: deploying again succeeds and clears the message.
    world.deployer.publish(created.triton_model_name, created.signature)
    redeployed = world.models.deploy(created.name)
    assert (redeployed.state, redeployed.state_message) == (State.STATE_DEPLOYED, "")


def test_a_signature_mismatch_fails_the_version_and_unloads_it(world):
    created = world.new_version()
    world.deployer.publish(created.triton_model_name, signature(V2_INPUTS))
    with pytest.raises(FailedPrecondition) as caught:
        world.models.deploy(created.name)
    assert caught.value.reason == "SIGNATURE_MISMATCH"
    assert "input 'hour' is not in the signature" in caught.value.message
    assert world.version(1).state == State.STATE_FAILED
    assert world.deployer.loaded == set()


def test_signature_problems_name_every_difference(world):
    created = world.new_version(publish=False)
    loaded = signature([("user_id", "TYPE_INT32", (1,)), ("genres", "TYPE_INT64", (5,))])
    world.deployer.publish(created.triton_model_name, loaded, max_batch_size=0)
    with pytest.raises(FailedPrecondition) as caught:
        world.models.deploy(created.name)
    message = caught.value.message
    assert "max_batch_size is 0" in message
    assert "input 'age' is missing from Triton's config" in message
    assert (
        "input 'genres' is TYPE_INT64 [3] in the signature but TYPE_INT64 [5] in Triton" in message
    )
    assert "input 'user_id' is TYPE_INT64 [1] in the signature but TYPE_INT32 [1]" in message


# --- activation and rollback ----------------------------------------------------------


def test_activation_switches_in_one_step_and_keeps_the_previous_loaded(world):
    first, second = world.new_version(), world.new_version(V2_INPUTS, FG_WITH_HOUR)
    activation = world.models.activate(first.name, "")
    assert activation.model.active_version == 1
    assert activation.version.state == State.STATE_ACTIVE
    activation = world.models.activate(second.name, world.model().etag)
    assert activation.model.active_version == 2
    assert list(activation.model.rollback_versions) == [1]
    assert world.states() == {2: "ACTIVE", 1: "DEPLOYED"}
    assert world.deployer.loaded == {"shop__ranker__v1", "shop__ranker__v2"}


def test_activating_the_active_version_again_reloads_it_if_needed(world):
    created = world.new_version()
    world.models.activate(created.name, "")
    world.deployer.loaded.clear()  # Triton restarted
    activation = world.models.activate(created.name, "")
    assert activation.model.active_version == 1
    assert world.deployer.loaded == {"shop__ranker__v1"}
    assert list(activation.model.rollback_versions) == []


def test_rollback_walks_back_through_activations(world):
    for _ in range(3):
        world.models.activate(world.new_version().name, "")
    assert list(world.model().rollback_versions) == [2, 1]
    assert world.models.rollback(MODEL_NAME, "").model.active_version == 2
    assert list(world.model().rollback_versions) == [1]
    assert world.models.rollback(MODEL_NAME, "").model.active_version == 1
    assert world.states() == {3: "DEPLOYED", 2: "DEPLOYED", 1: "ACTIVE"}
    with pytest.raises(FailedPrecondition) as caught:
        world.models.rollback(MODEL_NAME, "")
    assert caught.value.reason == "NO_PREVIOUS_VERSION"
    assert world.model().active_version == 1


def test_a_version_appears_once_in_the_rollback_history(world):
    first, second = world.new_version(), world.new_version()
    for version in (first, second, first, second):
        world.models.activate(version.name, "")
    assert list(world.model().rollback_versions) == [1]


def test_rollback_with_no_previous_version_is_failed_precondition(world):
    with pytest.raises(FailedPrecondition, match="no previous version"):
        world.models.rollback(MODEL_NAME, "")
    world.models.activate(world.new_version().name, "")
    with pytest.raises(FailedPrecondition, match="no previous version"):
        world.models.rollback(MODEL_NAME, "")


def test_activation_while_the_model_server_is_down_leaves_the_active_version(world):
    first, second = world.new_version(), world.new_version()
    world.models.activate(first.name, "")
    before = world.model()
    world.deployer.down = True
    with pytest.raises(Unavailable):
        world.models.activate(second.name, "")
    assert world.model() == before
    assert world.states() == {2: "REGISTERED", 1: "ACTIVE"}


def test_a_failing_version_is_not_activated(world):
    first, second = world.new_version(), world.new_version(publish=False)
    world.models.activate(first.name, "")
    with pytest.raises(FailedPrecondition) as caught:
        world.models.activate(second.name, "")
    assert caught.value.reason == "MODEL_LOAD_FAILED"
    assert world.model().active_version == 1
    assert world.states() == {2: "FAILED", 1: "ACTIVE"}


def test_activation_re_checks_the_fg_config_against_the_pinned_features(world):
    created = world.new_version()
    world.models.activate(created.name, "")

    def stricter(fg_config, inputs):
        assert [key.ref.feature for key in inputs.keys] == ["user_id", "item_id"]
        features = inputs.features
        if any(f.ref.feature == "age" and f.value_type == VT.VALUE_TYPE_FLOAT for f in features):
            raise InvalidArgument(
                "features[2].expression", "feature 'age': raw_feature needs DOUBLE"
            )

    stricter_models = ModelRegistry(
        world.models._unit_of_work, world.deployer, fg_check=stricter, clock=world.clock
    )
    second = world.new_version()
    with pytest.raises(InvalidArgument, match="raw_feature needs DOUBLE"):
        stricter_models.create(MODEL_NAME, version_spec(), False)
    with pytest.raises(FailedPrecondition) as caught:
        stricter_models.activate(second.name, "")
    assert caught.value.reason == "FG_CONFIG_MISMATCH"
    assert "fg_config.features[2].expression: feature 'age'" in caught.value.message
    assert world.model().active_version == 1
    assert world.deployer.loads == ["shop__ranker__v1"]


def test_a_version_whose_pinned_view_version_is_gone_cannot_be_activated(world):
    created = world.new_version()
    view = world.registry.get(FEATURE_VIEW, "projects/shop/featureViews/user_profile")
    view.fields.add(name="gender", value_type=VT.VALUE_TYPE_STRING)
    world.registry.update(FEATURE_VIEW, view, ["fields"])
    world.registry.delete(FEATURE_VIEW, "projects/shop/featureViews/user_profile", "", 1)
    with pytest.raises(FailedPrecondition) as caught:
        world.models.activate(created.name, "")
    assert caught.value.reason == "PINNED_FEATURE_MISSING"
    assert "'user_profile' version 1" in caught.value.message


def test_a_stale_model_etag_aborts_activation_and_rollback(world):
    first = world.new_version()
    stale = world.model().etag
    world.models.activate(first.name, "")
    with pytest.raises(Aborted):
        world.models.activate(world.new_version().name, stale)
    with pytest.raises(Aborted):
        world.models.rollback(MODEL_NAME, stale)


def test_idle_versions_are_retired_after_the_grace_and_reloaded_on_rollback(world):
    versions = [world.new_version() for _ in range(4)]
    for version in versions[:3]:
        world.models.activate(version.name, "")
    # v1 is no longer the rollback target, but left active only now: still in its grace.
    assert world.states() == {4: "REGISTERED", 3: "ACTIVE", 2: "DEPLOYED", 1: "DEPLOYED"}
    world.clock.advance(61)
    world.models.activate(versions[3].name, "")
    assert world.states() == {4: "ACTIVE", 3: "DEPLOYED", 2: "RETIRED", 1: "RETIRED"}
    assert world.deployer.loaded == {"shop__ranker__v4", "shop__ranker__v3"}
    world.models.rollback(MODEL_NAME, "")
    rolled_back = world.models.rollback(MODEL_NAME, "")
    assert rolled_back.model.active_version == 2
    assert "shop__ranker__v2" in world.deployer.loaded
    assert list(rolled_back.model.rollback_versions) == [1]


def test_delete_unloads_a_deployed_version_and_refuses_the_active_one(world):
    first, second = world.new_version(), world.new_version()
    world.models.activate(first.name, "")
    world.models.activate(second.name, "")
    with pytest.raises(FailedPrecondition) as caught:
        world.models.delete(second.name, "")
    assert caught.value.reason == "VERSION_ACTIVE"
    world.models.delete(first.name, "")
    assert world.deployer.loaded == {"shop__ranker__v2"}
    assert list(world.model().rollback_versions) == []
    with pytest.raises(NotFound, match="versions/1 does not exist"):
        world.version(1)


def test_delete_while_the_model_server_is_down_keeps_the_version(world):
    created = world.new_version()
    world.models.deploy(created.name)
    world.deployer.down = True
    with pytest.raises(Unavailable, match="RETIRED but was not deleted"):
        world.models.delete(created.name, "")
    assert world.version(1).state == State.STATE_RETIRED


# --- the Model resource ---------------------------------------------------------------


def test_a_model_with_versions_cannot_be_deleted(world):
    world.new_version()
    with pytest.raises(FailedPrecondition) as caught:
        world.registry.delete(MODEL, MODEL_NAME, "")
    assert caught.value.reason == "HAS_DEPENDANTS"
    assert f"{MODEL_NAME}/versions/1" in caught.value.message


def test_updates_and_apply_keep_the_activation_state(world):
    world.models.activate(world.new_version().name, "")
    world.models.activate(world.new_version().name, "")
    model = world.model()
    model.description = "ranks items"
    model.active_version, model.last_version = 0, 0
    updated = world.registry.update(MODEL, model, [])
    assert (updated.active_version, list(updated.rollback_versions)) == (2, [1])
    assert updated.last_version == 2
    declared = Declared(MODEL, "ranker", model_pb2.Model(description="from yaml"))
    world.registry.apply("projects/shop", [declared], False, False)
    applied = world.model()
    assert applied.description == "from yaml"
    assert (applied.active_version, applied.last_version) == (2, 2)
    with pytest.raises(InvalidArgument, match="output only"):
        world.registry.update(MODEL, applied, ["active_version"])
