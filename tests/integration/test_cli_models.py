"""`recstack model …` and `recstack apply` of a Model against the real registry and Triton."""

from __future__ import annotations

import pytest
from recstack.registry.v1 import registry_service_pb2_grpc

from tests.cli import run_cli
from tests.models import V2_INPUTS
from tests.registered_models import FG_WITH_HOUR, RegisteredModel

pytestmark = pytest.mark.usefixtures("unload_trained_models")
MODEL_YAML = """\
kind: Model
id: ranker
description: {description}
tags: {{team: ranking}}
"""


@pytest.fixture(scope="module")
def stub(registry_address, connect):
    with connect(registry_address) as channel:
        yield registry_service_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture
def model(stub, trained_model_repository):
    return RegisteredModel(stub, trained_model_repository)


def cli(address, *args):
    return run_cli(*args, "--registry", address)


def test_versions_deploy_activate_and_rollback(model, registry_address):
    reference = f"{model.project}/ranker"
    model.add_version()
    model.add_version(V2_INPUTS, FG_WITH_HOUR)

    listed = cli(registry_address, "model", "versions", reference)
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert lines[0].split() == [
        "VERSION",
        "STATE",
        "TRAINER",
        "METRICS",
        "TRITON",
        "MODEL",
        "CREATED",
        "MESSAGE",
    ]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["2", "REGISTERED", "dnn"],
        ["1", "REGISTERED", "dnn"],
    ]
    assert "probs_ctr_auc=0.7" in lines[1]

    deployed = cli(registry_address, "model", "deploy", reference, "1")
    assert deployed.code == 0, deployed.err
    assert deployed.out.strip() == (
        f"Deployed projects/{model.project}/models/ranker/versions/1 to Triton as "
        f"{model.project}__ranker__v1 (state DEPLOYED)."
    )
    assert cli(registry_address, "model", "activate", reference, "1").code == 0
    activated = cli(registry_address, "model", "activate", reference, "2")
    assert activated.code == 0, activated.err
    assert activated.out.strip() == (
        f"projects/{model.project}/models/ranker now serves version 2 "
        f"({model.project}__ranker__v2); rollback goes to version 1."
    )
    table = cli(registry_address, "model", "list", model.project).out.splitlines()
    assert table[0].split() == ["ID", "ACTIVE", "VERSIONS", "ROLLBACK", "TO", "DESCRIPTION"]
    assert table[1].split() == ["ranker", "2", "2", "1"]

    rolled_back = cli(registry_address, "model", "rollback", reference, "-o", "json")
    assert rolled_back.code == 0, rolled_back.err
    assert rolled_back.json()["model"]["active_version"] == "1"
    assert rolled_back.json()["model_version"]["state"] == "STATE_ACTIVE"

    again = cli(registry_address, "model", "rollback", reference)
    assert again.code == 1
    assert "FAILED_PRECONDITION" in again.err
    assert "no previous version" in again.err
    assert "reason: NO_PREVIOUS_VERSION" in again.err

    shown = cli(registry_address, "model", "get", reference, "--version", "2")
    assert shown.code == 0, shown.err
    assert "state: DEPLOYED" in shown.out
    assert "feature_name: hour" in shown.out


def test_a_failed_deploy_exits_1_with_the_reason(model, registry_address):
    model.add_version(write=False)
    failed = cli(registry_address, "model", "deploy", f"{model.project}/ranker", "1")
    assert failed.code == 1
    assert "FAILED_PRECONDITION" in failed.err
    assert "reason: MODEL_LOAD_FAILED" in failed.err
    versions = cli(registry_address, "model", "versions", f"{model.project}/ranker")
    assert "FAILED" in versions.out
    assert "Triton could not load it: failed to load" in versions.out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("model", "deploy", "ranker", "1"), 2, "give the model as PROJECT/ID"),
        (("model", "deploy", "shop/ranker", "0"), 2, "must be at least 1"),
        (("model", "activate", "shop/ranker"), 2, "the following arguments are required"),
        (("model", "get", "nope_project/ranker"), 1, "NOT_FOUND"),
    ],
)
def test_bad_commands_exit_with_their_status(registry_address, args, code, message):
    result = cli(registry_address, *args)
    assert result.code == code
    assert message in result.err


def test_apply_declares_a_model_and_keeps_its_activation(model, registry_address, tmp_path):
    reference = f"{model.project}/ranker"
    model.add_version()
    assert cli(registry_address, "model", "activate", reference, "1").code == 0
    (tmp_path / "recstack.yaml").write_text(f"project: {model.project}\n")
    (tmp_path / "model.yaml").write_text(MODEL_YAML.format(description="ranks the shop"))
    applied = cli(registry_address, "apply", str(tmp_path))
    assert applied.code == 0, applied.err
    assert "update  Model  ranker  description, tags" in applied.out
    shown = cli(registry_address, "model", "get", reference, "-o", "json").json()
    assert shown["description"] == "ranks the shop"
    assert shown["active_version"] == "1"
    (tmp_path / "model.yaml").write_text(MODEL_YAML.format(description="x") + "active_version: 2\n")
    refused = cli(registry_address, "apply", str(tmp_path))
    assert refused.code == 1
    assert "active_version: is output only" in refused.err
