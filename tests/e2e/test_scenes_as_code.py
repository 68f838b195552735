"""Scenes and experiments in the feature repository: `recstack plan` and `apply` create,
update and prune them in the recommend service, after the registry's definitions, and a
scene naming what the registry lacks fails at apply, naming its file."""

from __future__ import annotations

import re
import shutil
import textwrap
import uuid
from pathlib import Path

import pytest
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.recommend.v1 import recommend_service_pb2_grpc

from tests.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


def scene_yaml(scene_id: str, *, top_n: int = 10, feature: str = "popularity") -> str:
    return textwrap.dedent(
        f"""\
        kind: Scene
        id: {scene_id}
        user_entity: user
        item_entity: item
        recalls:
          - type: popularity
            quota: 50
            params: {{feature_view: item_stats, feature: {feature}}}
        filters:
          - type: exclude_items
        reranks:
          - type: top_n
        top_n: {top_n}
        ---
        kind: Experiment
        id: {scene_id}_ab
        scene: {scene_id}
        layer: ranking
        variants:
          - {{name: control, bucket_start: 0, bucket_end: 50}}
          - {{name: short, bucket_start: 50, bucket_end: 100, overrides: {{top_n: 5}}}}
        """
    )


def row(plan: str, action: str, kind: str, resource_id: str) -> str | None:
    """The plan table's row for one resource, or None."""
    found = re.search(rf"^\s*{action}\s+{kind}\s+{resource_id}(\s.*)?$", plan, re.MULTILINE)
    return found.group(0).rstrip() if found else None


@pytest.fixture
def repo(tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "examples" / "feature_repo", copy, ignore=shutil.ignore_patterns("data"))
    (copy / "data").symlink_to(ROOT / "examples" / "feature_repo" / "data")
    return copy


@pytest.fixture
def cli(registry_address, recommend_address, cli_environment):
    def run(*args: str):
        return run_cli(*args, "--registry", registry_address, "--recommend", recommend_address)

    return run


def test_scenes_are_planned_applied_updated_and_pruned(repo, cli, recommend_address, connect):
    project = f"scenes_{uuid.uuid4().hex[:6]}"
    scene_id = f"{project}_home"
    (repo / "scenes.yaml").write_text(scene_yaml(scene_id))

    planned = cli("plan", str(repo), "--project", project)
    applied = cli("apply", str(repo), "--project", project)
    again = cli("apply", str(repo), "--project", project)
    (repo / "scenes.yaml").write_text(scene_yaml(scene_id, top_n=20))
    updated = cli("apply", str(repo), "--project", project)

    for result in (planned, applied, again, updated):
        assert result.code == 0, result.out + result.err
    assert row(planned.out, "create", "Scene", scene_id).endswith(
        "(registry references checked at apply)"  # the project is new
    )
    assert "Nothing was written" in planned.out
    assert row(applied.out, "create", "Experiment", f"{scene_id}_ab") is not None
    assert row(again.out, "unchanged", "Scene", scene_id) is not None
    assert row(updated.out, "update", "Scene", scene_id).endswith("top_n")
    with connect(recommend_address) as channel:
        stub = recommend_service_pb2_grpc.RecommendServiceStub(channel)
        scene = stub.GetScene(cpb.GetSceneRequest(name=f"scenes/{scene_id}")).scene
        assert (scene.project, scene.top_n) == (project, 20)

        (repo / "scenes.yaml").write_text(
            "kind: Scene\nid: "
            + scene_id
            + "_other\n"
            + scene_yaml(scene_id).split("\n", 2)[2].split("---")[0]
        )
        pruned = cli("apply", str(repo), "--project", project, "--prune")
        assert pruned.code == 0, pruned.out + pruned.err
        names = [s.name for s in stub.ListScenes(cpb.ListScenesRequest(page_size=1000)).scenes]
    assert row(pruned.out, "delete", "Experiment", f"{scene_id}_ab") is not None
    assert f"scenes/{scene_id}" not in names
    assert f"scenes/{scene_id}_other" in names


def test_a_scene_naming_a_missing_feature_fails_at_apply_naming_its_file(repo, cli):
    project = f"scenes_{uuid.uuid4().hex[:6]}"
    (repo / "scenes.yaml").write_text(scene_yaml(f"{project}_home", feature="clicks"))

    result = cli("apply", str(repo), "--project", project)
    plan = cli("plan", str(repo), "--project", project)  # the registry matches now

    assert result.code == plan.code == 1
    assert "(the registry definitions were applied)" in result.err
    assert "has no feature 'clicks'" in plan.err
    assert "FAILED_PRECONDITION" in result.err
    assert (
        "scene.recalls[0].params: feature view 'item_stats' has no feature 'clicks'" in result.err
    )
    assert "scenes.yaml document 1 (Scene" in result.err
