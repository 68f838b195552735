"""The `recstack` command line without a server: parsing, exit statuses, paging and output."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from google.protobuf.message import Message
from recstack.registry.v1 import entity_pb2
from recstack.registry.v1 import registry_service_pb2 as pb

from cli import resources
from cli.connection import CliSettings, Context
from cli.errors import UsageError
from tests.cli import run_cli


@dataclass
class FakeConnection:
    """Answers registry calls from canned responses and records the requests."""

    responses: dict[str, list[Message]]
    requests: list[tuple[str, Message]] = field(default_factory=list)

    def call(self, rpc: str, request: Message, *, locate: object = None) -> Message:
        self.requests.append((rpc, request))
        return self.responses[rpc].pop(0)

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def fake(monkeypatch):
    connection = FakeConnection({})
    monkeypatch.setattr(Context, "connect", lambda self: connection)
    return connection


def entity(resource_id: str) -> entity_pb2.Entity:
    return entity_pb2.Entity(
        name=f"projects/shop/entities/{resource_id}", join_key=f"{resource_id}_id", key_type=1
    )


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.code == 0
    for command in ("apply", "plan", "list", "get", "delete"):
        assert f"    {command} " in result.out
    assert "RECSTACK_REGISTRY_ADDR" in result.out


def test_command_help_shows_common_options():
    result = run_cli("get", "--help")
    assert result.code == 0
    assert "--output {table,json}" in result.out
    assert "--registry HOST:PORT" in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("list", "widgets"), "invalid choice: 'widgets'"),
        (("list", "entities"), "--project is required to list entities"),
        (("get", "entity", "user"), "give the entity as PROJECT/ID"),
        (("get", "entity", "shop/user", "--version", "1"), "--version applies to feature views"),
        (("get", "feature-view", "shop/v", "--version", "0"), "0 must be at least 1"),
        (("list", "entities", "--project", "p", "--limit", "x"), "'x' is not a whole number"),
        (("list", "entities", "-o", "yaml"), "invalid choice: 'yaml'"),
        (("apply", "/no/such/dir"), "/no/such/dir does not exist"),
        (("list", "projects", "--timeout", "0"), "invalid settings: timeout_seconds"),
    ],
)
def test_usage_errors_exit_2_with_a_message_and_no_traceback(args, message, fake):
    result = run_cli(*args)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err
    assert fake.requests == []


def test_list_walks_every_page_and_prints_a_table(fake):
    fake.responses["ListEntities"] = [
        pb.ListEntitiesResponse(entities=[entity("a"), entity("b")], next_page_token="t1"),
        pb.ListEntitiesResponse(entities=[entity("c")]),
    ]
    result = run_cli("list", "entity", "--project", "shop", "--filter", "join_key=a_id")
    assert result.code == 0
    assert result.out.splitlines() == [
        "ID  JOIN KEY  KEY TYPE  DESCRIPTION",
        "a   a_id      INT64",
        "b   b_id      INT64",
        "c   c_id      INT64",
    ]
    tokens = [request.page_token for _, request in fake.requests]
    assert tokens == ["", "t1"]
    assert {(r.parent, r.filter) for _, r in fake.requests} == {("projects/shop", "join_key=a_id")}


def test_list_limit_stops_paging_and_json_is_one_list_response(fake):
    fake.responses["ListEntities"] = [
        pb.ListEntitiesResponse(entities=[entity("a"), entity("b")], next_page_token="t1"),
    ]
    result = run_cli("list", "entities", "--project", "shop", "--limit", "2", "-o", "json")
    assert result.code == 0
    assert [e["name"] for e in json.loads(result.out)["entities"]] == [
        "projects/shop/entities/a",
        "projects/shop/entities/b",
    ]
    assert fake.requests[0][1].page_size == 2


def test_empty_list_says_so(fake):
    fake.responses["ListFeatureViews"] = [pb.ListFeatureViewsResponse()]
    result = run_cli("list", "feature-views", "--project", "shop")
    assert result.out == "No feature views in project shop.\n"


def test_get_by_id_with_project_and_json_output(fake):
    fake.responses["GetEntity"] = [pb.GetEntityResponse(entity=entity("user"))]
    result = run_cli("get", "entity", "user", "--project", "shop", "-o", "json")
    assert result.code == 0
    assert json.loads(result.out)["key_type"] == "VALUE_TYPE_INT64"
    assert fake.requests[0][1].name == "projects/shop/entities/user"


def test_delete_a_feature_view_version_with_etag(fake):
    fake.responses["DeleteFeatureView"] = [pb.DeleteFeatureViewResponse()]
    result = run_cli("delete", "feature-views", "shop/v", "--version", "2", "--etag", "e1")
    assert result.out == "Deleted projects/shop/featureViews/v version 2.\n"
    request = fake.requests[0][1]
    assert (request.name, request.version, request.etag) == (
        "projects/shop/featureViews/v",
        2,
        "e1",
    )


def test_apply_definition_errors_exit_1_before_any_call(tmp_path, fake):
    (tmp_path / "e.yaml").write_text("kind: Entity\nid: u\njoin_key: u_id\nkey_type: INT8\n")
    result = run_cli("apply", str(tmp_path), "--project", "shop")
    assert result.code == 1
    assert result.err.startswith(f"recstack: error: {tmp_path / 'e.yaml'} document 1 (Entity u)")
    assert fake.requests == []


def test_plan_sends_one_validate_only_apply(tmp_path, fake):
    (tmp_path / "e.yaml").write_text("kind: Entity\nid: u\njoin_key: u_id\nkey_type: INT64\n")
    fake.responses["Apply"] = [
        pb.ApplyResponse(
            steps=[pb.PlanStep(name="projects/shop/entities/u", action=pb.PlanStep.ACTION_CREATE)]
        )
    ]
    result = run_cli("plan", str(tmp_path), "--project", "shop", "--prune")
    assert result.code == 0
    ((rpc, request),) = fake.requests
    assert rpc == "Apply"
    assert (request.parent, request.validate_only, request.prune) == ("projects/shop", True, True)
    assert request.definitions[0].entity.join_key == "u_id"
    assert "Plan: 1 to create. Nothing was written." in result.out


def test_unexpected_errors_are_one_line_not_a_traceback(monkeypatch):
    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(Context, "connect", broken)
    result = run_cli("list", "projects")
    assert result.code == 1
    assert result.err.startswith("recstack: unexpected error: RuntimeError: boom")


@pytest.mark.parametrize(
    ("kind", "reference", "project", "name"),
    [
        (resources.FEATURE_VIEW, "shop/v", None, "projects/shop/featureViews/v"),
        (resources.FEATURE_VIEW, "v", "shop", "projects/shop/featureViews/v"),
        (resources.FEATURE_VIEW, "shop/v", "shop", "projects/shop/featureViews/v"),
        (resources.ENTITY, "projects/s/entities/u", None, "projects/s/entities/u"),
        (resources.PROJECT, "shop", None, "projects/shop"),
        (resources.PROJECT, "projects/shop", None, "projects/shop"),
    ],
)
def test_references(kind, reference, project, name):
    assert resources.parse_reference(kind, reference, project) == name


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        (resources.ENTITY, "projects/s/featureViews/u"),
        (resources.ENTITY, "projects/s/entities"),
        (resources.ENTITY, "a/b/c"),
        (resources.ENTITY, "shop/"),
    ],
)
def test_bad_references(kind, reference):
    with pytest.raises(UsageError):
        resources.parse_reference(kind, reference, None)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECSTACK_REGISTRY_ADDR", "registry:1234")
    monkeypatch.setenv("RECSTACK_AUTH_TOKEN", "s3cret")
    monkeypatch.setenv("RECSTACK_DATABASE_URL", "postgresql://elsewhere")  # a service's setting
    settings = CliSettings()
    assert settings.registry_addr == "registry:1234"
    # That the token reaches the server: tests/integration/test_channels.py.
    assert settings.auth_token is not None and settings.auth_token.get_secret_value() == "s3cret"
    assert CliSettings(registry_addr="flag:1").registry_addr == "flag:1"
