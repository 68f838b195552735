"""What the CLI prints: plans, tables, resource documents, proto JSON and gRPC errors."""

from __future__ import annotations

import json

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import entity_pb2, feature_view_pb2
from recstack.registry.v1 import registry_service_pb2 as pb

from cli import output, resources
from cli.errors import describe_rpc_error
from cli.plan import render_plan, summary

VT = value_pb2.ValueType
Action = pb.PlanStep.Action


def step(name: str, action: int, *changed: str) -> pb.PlanStep:
    return pb.PlanStep(name=name, action=action, changed_fields=changed)


def a_view() -> feature_view_pb2.FeatureView:
    view = feature_view_pb2.FeatureView(
        name="projects/shop/featureViews/user_profile",
        version=3,
        entity="user",
        source="users",
        type=feature_view_pb2.FeatureView.TYPE_BATCH,
        online_enabled=True,
        fields=[
            feature_view_pb2.FeatureField(name="user_id", value_type=VT.VALUE_TYPE_INT64),
            feature_view_pb2.FeatureField(name="emb", value_type=VT.VALUE_TYPE_FLOAT_LIST),
        ],
    )
    view.ttl.FromSeconds(7 * 86400)
    return view


def test_plan_lists_every_step_with_its_kind_and_changed_fields():
    response = pb.ApplyResponse(
        steps=[
            step("projects/shop", Action.ACTION_CREATE),
            step("projects/shop/entities/user", Action.ACTION_UNCHANGED),
            step("projects/shop/featureViews/user_profile", Action.ACTION_NEW_VERSION, "fields"),
            step("projects/shop/featureViews/item_stats", Action.ACTION_NEW_VERSION, "ttl"),
            step("projects/shop/embeddingModels/m", Action.ACTION_UPDATE, "batch_size", "tags"),
            step("projects/shop/modelFeatureSets/old", Action.ACTION_DELETE),
        ]
    )
    assert render_plan(response, "shop").splitlines() == [
        "Plan for project shop:",
        "  ACTION       KIND             ID            CHANGED FIELDS",
        "  create       Project          shop",
        "  unchanged    Entity           user",
        "  new version  FeatureView      user_profile  fields",
        "  new version  FeatureView      item_stats    ttl",
        "  update       EmbeddingModel   m             batch_size, tags",
        "  delete       ModelFeatureSet  old",
        "Plan: 1 to create, 1 to update, 2 new versions, 1 to delete, 1 unchanged. "
        "Nothing was written.",
    ]
    response.applied = True
    assert render_plan(response, "shop").splitlines()[0] == "Applied to project shop:"
    assert summary(response) == (
        "Applied: 1 created, 1 updated, 2 new versions, 1 deleted, 1 unchanged."
    )


def test_all_unchanged_says_no_changes():
    response = pb.ApplyResponse(
        steps=[step("projects/shop/entities/user", Action.ACTION_UNCHANGED)], applied=True
    )
    assert summary(response) == "No changes: the registry already matches the definitions."


def test_table_pads_columns_and_trims_line_ends():
    assert output.table(["A", "LONGER"], [["xyz", ""], [1, None]]).splitlines() == [
        "A    LONGER",
        "xyz",
        "1",
    ]


def test_feature_view_table_uses_friendly_values():
    lines = output.resource_table(resources.FEATURE_VIEW, [a_view()]).splitlines()
    assert lines[0].split() == [
        "ID", "VERSION", "TYPE", "ENTITY", "SOURCE", "FIELDS", "TTL", "ONLINE", "OFFLINE",
    ]  # fmt: skip
    assert lines[1].split() == [
        "user_profile",
        "3",
        "BATCH",
        "user",
        "users",
        "2",
        "7d",
        "yes",
        "no",
    ]


def test_entity_and_embedding_model_tables():
    entity = entity_pb2.Entity(
        name="projects/shop/entities/user", join_key="user_id", key_type=VT.VALUE_TYPE_STRING
    )
    assert output.resource_table(resources.ENTITY, [entity]).splitlines()[1].split() == [
        "user",
        "user_id",
        "STRING",
    ]


def test_document_reads_like_the_yaml_definitions():
    text = output.document(a_view())
    assert "version: 3\n" in text
    assert "type: BATCH\n" in text
    assert "ttl: 7d\n" in text
    assert "  value_type: ARRAY<FLOAT>\n" in text
    assert text.startswith("name: projects/shop/featureViews/user_profile\n")


def test_json_is_proto_json_with_proto_field_names():
    data = json.loads(output.to_json(a_view()))
    assert data["fields"][1] == {"name": "emb", "value_type": "VALUE_TYPE_FLOAT_LIST"}
    assert data["ttl"] == "604800s"
    assert data["version"] == "3"


class FakeRpcError(grpc.RpcError):
    """The parts of a failed unary call that error reporting reads."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: object) -> None:
        self._code, self._message = code, message
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        status = status_pb2.Status(code=code.value[0], message=message, details=packed)
        self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple:
        return self._trailers


def test_rpc_error_shows_code_message_fields_reason_and_where():
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="definitions[1].id", description="bad"
    )
    error = FakeRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "definitions[1].id: bad",
        error_details_pb2.ErrorInfo(reason="INVALID_ID", domain="recstack.registry"),
        error_details_pb2.BadRequest(field_violations=[violation]),
    )
    text = describe_rpc_error(error, "h:1", lambda path: "a.yaml document 2 (Entity x)")
    assert text.splitlines() == [
        "INVALID_ARGUMENT: definitions[1].id: bad",
        "  reason: INVALID_ID",
        "  field: definitions[1].id (in a.yaml document 2 (Entity x))",
    ]


def test_rpc_error_without_rich_status_and_the_unavailable_hint():
    error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    error._trailers = ()
    assert describe_rpc_error(error, "10.0.0.1:50051").splitlines() == [
        "UNAVAILABLE: connection refused",
        "  hint: is the registry running at 10.0.0.1:50051? "
        "Set --registry or RECSTACK_REGISTRY_ADDR.",
    ]


def test_reason_equal_to_the_code_is_not_repeated():
    error = FakeRpcError(
        grpc.StatusCode.NOT_FOUND, "gone", error_details_pb2.ErrorInfo(reason="NOT_FOUND")
    )
    assert describe_rpc_error(error, "h:1") == "NOT_FOUND: gone"
