"""`recstack` commands against a real registry on real PostgreSQL, through `cli.main`."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli import Result, run_cli

ENTITIES = """\
kind: Entity
id: user
join_key: user_id
key_type: INT64
---
kind: Entity
id: item
join_key: item_id
key_type: STRING
"""
SOURCES = """\
kind: DataSource
id: users
file:
  path: data/users.parquet
  format: PARQUET
event_timestamp_column: event_ts
"""
MODELS = """\
kind: EmbeddingModel
id: minilm
model_type: TEXT_EMBEDDING
provider: TRITON
model_name: minilm
dimension: {dimension}
"""
VIEWS = """\
kind: FeatureView
id: user_profile
description: {description}
entity: user
source: users
type: BATCH
ttl: 7d
online_enabled: true
offline_enabled: true
fields:
  - {{name: user_id, value_type: INT64}}
  - {{name: age, value_type: DOUBLE}}
{extra_field}"""
FEATURE_SETS = """\
kind: ModelFeatureSet
id: ranker
features: ["user_profile:*"]
label: clicked
entities: [user]
"""


@pytest.fixture
def project() -> str:
    return f"cli_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cli(registry_address):
    return lambda *args: run_cli(*args, "--registry", registry_address)


@pytest.fixture
def repo(tmp_path: Path, project: str) -> Path:
    (tmp_path / "data").mkdir()
    table = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "event_ts": pa.array([0, 0], pa.timestamp("us", tz="UTC")),
            "age": pa.array([0.1, 0.2], pa.float64()),
        }
    )
    pq.write_table(table, tmp_path / "data" / "users.parquet")
    write(tmp_path, "recstack.yaml", f"project: {project}\n")
    write(tmp_path, "entities.yaml", ENTITIES)
    write(tmp_path, "sources.yml", SOURCES)
    write(tmp_path, "models/minilm.yaml", MODELS.format(dimension=384))
    write_view(tmp_path)
    write(tmp_path, "feature_sets.yaml", FEATURE_SETS)
    return tmp_path


def write(root: Path, name: str, text: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


def write_view(root: Path, description: str = "profile", extra_field: str = "") -> None:
    write(root, "views.yaml", VIEWS.format(description=description, extra_field=extra_field))


def actions(result: Result) -> dict[str, tuple[str, list[str]]]:
    """Resource name → (action, changed fields) from `apply|plan --output json`."""
    return {
        step["name"]: (step["action"], step.get("changed_fields", []))
        for step in result.json().get("steps", [])
    }


def test_apply_creates_everything_and_a_second_apply_changes_nothing(cli, repo, project):
    first = cli("apply", str(repo))
    assert first.code == 0, first.err
    for kind, resource_id in (
        ("Project", project),
        ("Entity", "user"),
        ("Entity", "item"),
        ("DataSource", "users"),
        ("EmbeddingModel", "minilm"),
        ("FeatureView", "user_profile"),
        ("ModelFeatureSet", "ranker"),
    ):
        assert any(
            line.split()[:3] == ["create", kind, resource_id] for line in first.out.splitlines()
        ), first.out
    assert "Applied: 7 created." in first.out

    second = cli("apply", str(repo), "--output", "json")
    assert second.code == 0, second.err
    assert second.json()["applied"] is True
    steps = actions(second)
    assert len(steps) == 6  # the project exists now, so it is not a step
    assert {action for action, _ in steps.values()} == {"ACTION_UNCHANGED"}

    again = cli("apply", str(repo))
    assert again.out.rstrip().endswith("No changes: the registry already matches the definitions.")


def test_relative_file_path_is_stored_absolute(cli, repo, project):
    assert cli("apply", str(repo)).code == 0
    shown = cli("get", "data-source", f"{project}/users", "-o", "json").json()
    assert shown["file"]["path"] == str((repo / "data" / "users.parquet").resolve())


def test_changed_description_is_update_and_changed_schema_is_new_version(cli, repo, project):
    assert cli("apply", str(repo)).code == 0
    view = f"projects/{project}/featureViews/user_profile"

    write_view(repo, description="new words")
    planned = cli("plan", str(repo), "-o", "json")
    assert actions(planned)[view] == ("ACTION_UPDATE", ["description"])
    text = cli("plan", str(repo))
    assert any(
        line.split() == ["update", "FeatureView", "user_profile", "description"]
        for line in text.out.splitlines()
    ), text.out
    assert cli("apply", str(repo)).code == 0

    write_view(repo, description="new words", extra_field="  - {name: score, value_type: FLOAT}\n")
    applied = cli("apply", str(repo), "-o", "json")
    assert actions(applied)[view] == ("ACTION_NEW_VERSION", ["fields"])
    # The feature set pins `user_profile:*` to a version, so it is re-pinned to the new one.
    feature_set = f"projects/{project}/modelFeatureSets/ranker"
    assert actions(applied)[feature_set] == ("ACTION_UPDATE", ["resolved_features"])

    latest = cli("get", "feature-view", f"{project}/user_profile", "-o", "json").json()
    first = cli("get", "feature-view", f"{project}/user_profile", "--version", "1", "-o", "json")
    assert latest["version"] == "2"
    assert [f["name"] for f in latest["fields"]] == ["user_id", "age", "score"]
    assert first.json()["version"] == "1"
    assert [f["name"] for f in first.json()["fields"]] == ["user_id", "age"]


def test_prune_deletes_only_with_the_flag(cli, repo, project):
    assert cli("apply", str(repo)).code == 0
    (repo / "feature_sets.yaml").unlink()
    name = f"{project}/ranker"

    kept = cli("apply", str(repo), "-o", "json")
    assert kept.code == 0
    assert "ACTION_DELETE" not in {action for action, _ in actions(kept).values()}
    assert cli("get", "model-feature-set", name).code == 0

    planned = cli("plan", str(repo), "--prune")
    assert any(
        line.split() == ["delete", "ModelFeatureSet", "ranker"] for line in planned.out.splitlines()
    ), planned.out
    assert cli("get", "model-feature-set", name).code == 0

    pruned = cli("apply", str(repo), "--prune")
    assert pruned.code == 0, pruned.err
    assert "1 deleted" in pruned.out
    gone = cli("get", "model-feature-set", name)
    assert gone.code == 1
    assert gone.err.startswith("recstack: error: NOT_FOUND: ")


def test_one_invalid_document_applies_nothing(cli, repo, project):
    write(repo, "models/minilm.yaml", MODELS.format(dimension=99999))
    result = cli("apply", str(repo))
    assert result.code == 1
    assert "definitions[3].embedding_model.dimension: 99999 is outside" in result.err
    assert "minilm.yaml document 1 (EmbeddingModel minilm)" in result.err
    assert "  field: definitions[3].embedding_model.dimension" in result.err
    assert "Traceback" not in result.err
    # Entities and the source come first in the plan, yet nothing was written.
    assert cli("get", "project", project).code == 1
    assert cli("list", "entities", "--project", project).out.startswith("No entities")


def test_a_typo_is_reported_with_file_document_and_field_before_any_call(cli, repo, project):
    write(repo, "entities.yaml", ENTITIES.replace("key_type: STRING", "key_typ: STRING"))
    result = cli("apply", str(repo))
    assert result.code == 1
    assert result.out == ""
    assert f"{repo / 'entities.yaml'} document 2 (Entity item): key_typ:" in result.err
    assert "did you mean 'key_type'?" in result.err
    assert cli("get", "project", project).code == 1


def test_plan_writes_nothing(cli, repo, project):
    planned = cli("plan", str(repo))
    assert planned.code == 0, planned.err
    assert "create  Project" in planned.out
    assert "Nothing was written." in planned.out
    assert cli("get", "project", project).code == 1
    assert cli("plan", str(repo), "-o", "json").json().get("applied", False) is False


def test_project_flag_overrides_recstack_yaml(cli, repo, project):
    other = f"{project}_b"
    assert cli("apply", str(repo), "--project", other).code == 0
    assert cli("get", "project", other).code == 0
    assert cli("get", "project", project).code == 1


def test_list_get_delete_in_table_and_json(cli, repo, project):
    assert cli("apply", str(repo)).code == 0

    table = cli("list", "feature-views", "--project", project)
    assert table.code == 0
    header, row = table.out.splitlines()
    assert header.split()[:4] == ["ID", "VERSION", "TYPE", "ENTITY"]
    assert row.split() == ["user_profile", "1", "BATCH", "user", "users", "2", "7d", "yes", "yes"]

    listed = cli("list", "entities", "--project", project, "-o", "json").json()
    assert [e["name"] for e in listed["entities"]] == [
        f"projects/{project}/entities/item",
        f"projects/{project}/entities/user",
    ]
    assert (
        cli("list", "entities", "--project", project, "--limit", "1", "-o", "json").json()[
            "entities"
        ][0]["join_key"]
        == "item_id"
    )
    assert project in cli("list", "projects").out

    shown = cli("get", "embedding-model", f"{project}/minilm")
    assert "provider: TRITON" in shown.out
    assert "dimension: 384" in shown.out
    assert "batch_size: 10" in shown.out  # the registry's default
    view = cli("get", "feature-view", "user_profile", "--project", project)
    assert "value_type: DOUBLE" in view.out
    assert "ttl: 7d" in view.out

    item = cli("get", "entity", f"projects/{project}/entities/item", "-o", "json").json()
    assert item["key_type"] == "VALUE_TYPE_STRING"
    deleted = cli("delete", "entity", f"{project}/item", "--etag", item["etag"])
    assert deleted.code == 0, deleted.err
    assert deleted.out.strip() == f"Deleted projects/{project}/entities/item."
    assert cli("delete", "model-feature-set", f"{project}/ranker", "-o", "json").out.strip() == "{}"


def test_delete_of_one_feature_view_version(cli, repo, project):
    assert cli("apply", str(repo)).code == 0
    write_view(repo, extra_field="  - {name: score, value_type: FLOAT}\n")
    assert cli("apply", str(repo)).code == 0
    name = f"{project}/user_profile"
    assert cli("delete", "feature-view", name, "--version", "1").code == 0
    assert cli("get", "feature-view", name, "--version", "1").code == 1
    assert cli("get", "feature-view", name, "-o", "json").json()["version"] == "2"


def test_rpc_errors_exit_1_with_code_message_and_reason(cli, repo, project):
    assert cli("apply", str(repo)).code == 0

    missing = cli("get", "entity", f"{project}/nobody")
    assert (missing.code, missing.out) == (1, "")
    assert missing.err == (
        f"recstack: error: NOT_FOUND: projects/{project}/entities/nobody does not exist\n"
    )

    stale = cli("delete", "entity", f"{project}/item", "--etag", "stale")
    assert stale.code == 1
    assert stale.err.startswith("recstack: error: ABORTED: ")
    assert "reason: ETAG_MISMATCH" in stale.err

    used = cli("delete", "entity", f"{project}/user")
    assert used.code == 1
    assert used.err.startswith("recstack: error: FAILED_PRECONDITION: ")
    assert "reason: HAS_DEPENDANTS" in used.err
    assert cli("get", "entity", f"{project}/user").code == 0

    bad_filter = cli("list", "entities", "--project", project, "--filter", "((")
    assert bad_filter.code == 1
    assert "INVALID_ARGUMENT" in bad_filter.err
    assert "Traceback" not in missing.err + stale.err + used.err + bad_filter.err


@pytest.mark.parametrize(
    "args",
    [
        ["list", "feature-views"],
        ["list", "widgets", "--project", "shop"],
        ["get", "entity", "user"],
        ["get", "entity", "shop/user", "--version", "2"],
        ["get", "feature-view", "shop/x", "--version", "0"],
        ["get", "feature-view", "a/b/c"],
        ["get", "feature-view", "projects/shop/entities/user"],
        ["get", "entity", "shop/user", "--project", "other"],
        ["apply"],
        ["apply", "/does/not/exist"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(cli, args):
    result = cli(*args)
    assert result.code == 2, result
    assert "Traceback" not in result.err
    assert result.err


def test_unreachable_registry_is_unavailable_with_a_hint():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    result = run_cli("list", "projects", "--registry", address, "--timeout", "5")
    assert result.code == 1
    assert result.err.startswith("recstack: error: UNAVAILABLE: ")
    assert f"is the registry running at {address}?" in result.err


def test_registry_address_comes_from_the_environment(
    cli, repo, project, registry_address, monkeypatch
):
    assert cli("apply", str(repo)).code == 0
    monkeypatch.setenv("RECSTACK_REGISTRY_ADDR", registry_address)
    listed = run_cli("list", "projects", "-o", "json")
    assert listed.code == 0, listed.err
    assert f"projects/{project}" in {p["name"] for p in listed.json()["projects"]}
