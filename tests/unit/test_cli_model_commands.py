"""`recstack model …` without a server: the requests it sends and what it prints."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from google.protobuf.message import Message
from recstack.registry.v1 import model_pb2
from recstack.registry.v1 import registry_service_pb2 as pb

from cli.connection import Context
from tests.cli import run_cli

State = model_pb2.ModelVersion.State
MODEL = "projects/shop/models/ranker"


@dataclass
class FakeConnection:
    responses: dict[str, list[Message]]
    requests: list[tuple[str, Message, dict]] = field(default_factory=list)

    def call(self, rpc: str, request: Message, **options: object) -> Message:
        self.requests.append((rpc, request, options))
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


def version(number: int, state: int = State.STATE_DEPLOYED, message: str = ""):
    found = model_pb2.ModelVersion(
        name=f"{MODEL}/versions/{number}",
        version=number,
        trainer="gbdt",
        metrics={"probs_ctr_auc": 0.71234, "logloss": 0.4},
        triton_model_name=f"shop__ranker__v{number}",
        state=state,
        state_message=message,
    )
    found.create_time.FromSeconds(1_800_000_000)
    return found


def test_activate_sends_the_version_and_etag_and_says_what_serves(fake):
    fake.responses["ActivateModelVersion"] = [
        pb.ActivateModelVersionResponse(
            model=model_pb2.Model(name=MODEL, active_version=3, rollback_versions=[2, 1]),
            model_version=version(3, State.STATE_ACTIVE),
        )
    ]
    result = run_cli("model", "activate", "shop/ranker", "3", "--etag", "e1")
    assert result.code == 0, result.err
    rpc, request, options = fake.requests[0]
    assert (rpc, request) == (
        "ActivateModelVersion",
        pb.ActivateModelVersionRequest(name=f"{MODEL}/versions/3", etag="e1"),
    )
    assert options == {"long": True}
    assert result.out == (
        f"{MODEL} now serves version 3 (shop__ranker__v3); rollback goes to version 2.\n"
    )


def test_rollback_to_the_last_version_says_there_is_no_further_one(fake):
    fake.responses["RollbackModel"] = [
        pb.RollbackModelResponse(
            model=model_pb2.Model(name=MODEL, active_version=1),
            model_version=version(1, State.STATE_ACTIVE),
        )
    ]
    result = run_cli("model", "rollback", "ranker", "--project", "shop")
    assert fake.requests[0][1] == pb.RollbackModelRequest(name=MODEL)
    assert result.out == (
        f"Rolled back: {MODEL} now serves version 1 (shop__ranker__v1); "
        "no version to roll back to.\n"
    )


def test_versions_pages_until_the_limit_and_tabulates(fake):
    fake.responses["ListModelVersions"] = [
        pb.ListModelVersionsResponse(
            model_versions=[version(5, State.STATE_ACTIVE), version(4)], next_page_token="t"
        ),
        pb.ListModelVersionsResponse(
            model_versions=[version(3, State.STATE_FAILED, "Triton could not load it: " + "x" * 80)]
        ),
    ]
    result = run_cli("model", "versions", "shop/ranker", "--limit", "3", "--filter", "trainer=gbdt")
    assert result.code == 0, result.err
    requests = [request for _, request, _ in fake.requests]
    assert [(r.page_size, r.page_token, r.filter) for r in requests] == [
        (3, "", "trainer=gbdt"),
        (1, "t", "trainer=gbdt"),
    ]
    lines = result.out.splitlines()
    assert lines[1].split()[:4] == ["5", "ACTIVE", "gbdt", "logloss=0.4,"]
    assert "probs_ctr_auc=0.7123" in lines[1]
    assert "2027-01-15T08:00Z" in lines[1]
    assert lines[3].split()[1] == "FAILED"
    assert lines[3].endswith("…")


def test_no_versions_and_json_output(fake):
    fake.responses["ListModelVersions"] = [
        pb.ListModelVersionsResponse(),
        pb.ListModelVersionsResponse(),
    ]
    assert run_cli("model", "versions", "shop/ranker").out == f"{MODEL} has no versions yet.\n"
    assert run_cli("model", "versions", "shop/ranker", "-o", "json").json() == {}


def test_list_shows_active_and_rollback_versions(fake):
    fake.responses["ListModels"] = [
        pb.ListModelsResponse(
            models=[
                model_pb2.Model(
                    name=MODEL, active_version=3, rollback_versions=[2], last_version=4
                ),
                model_pb2.Model(name="projects/shop/models/new", description="untrained"),
            ]
        )
    ]
    lines = run_cli("model", "list", "shop").out.splitlines()
    assert fake.requests[0][1].parent == "projects/shop"
    assert [line.split() for line in lines[1:]] == [
        ["ranker", "3", "4", "2"],
        ["new", "-", "0", "-", "untrained"],
    ]


def test_get_a_version_reads_it_by_name(fake):
    fake.responses["GetModelVersion"] = [pb.GetModelVersionResponse(model_version=version(2))]
    result = run_cli("model", "get", "shop/ranker", "--version", "2")
    assert fake.requests[0][1] == pb.GetModelVersionRequest(name=f"{MODEL}/versions/2")
    assert "state: DEPLOYED" in result.out
    assert "triton_model_name: shop__ranker__v2" in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("model", "deploy", "shop/ranker", "two"), "'two' is not a whole number"),
        (("model", "deploy", "shop/ranker", "0"), "0 must be at least 1"),
        (("model", "rollback", "a/b/c"), "give the model as PROJECT/ID"),
        (("model", "get", "other/ranker", "--project", "shop"), "names project 'other'"),
    ],
)
def test_usage_errors_exit_2(fake, args, message):
    result = run_cli(*args)
    assert result.code == 2
    assert message in result.err
    assert fake.requests == []
