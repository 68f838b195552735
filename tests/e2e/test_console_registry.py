"""The console's registry and online-features pages in a real browser, on the example feature
repository applied with the `recstack` CLI, a second version of one view made through the
registry API, and a row written with the serving API."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import field_mask_pb2
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.registry.v1 import registry_service_pb2_grpc
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from tests.plugins.console import artifact

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def project(registry_address, stack_security, connect) -> str:
    project_id = f"shop_{uuid.uuid4().hex[:8]}"
    script = Path(sys.executable).with_name("recstack")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    env = {**os.environ, "RECSTACK_REGISTRY_ADDR": registry_address, **stack_security.cli_env()}
    applied = subprocess.run(
        [*command, "apply", "examples/feature_repo", "--project", project_id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert applied.returncode == 0, applied.stderr
    # Version 2 of user_profile: price_affinity dropped (a schema change makes a version).
    registry = registry_service_pb2_grpc.RegistryServiceStub(connect(registry_address))
    name = f"projects/{project_id}/featureViews/user_profile"
    view = registry.GetFeatureView(rpb.GetFeatureViewRequest(name=name)).feature_view
    kept = [f for f in view.fields if f.name != "price_affinity"]
    del view.fields[:]
    view.fields.extend(kept)
    updated = registry.UpdateFeatureView(
        rpb.UpdateFeatureViewRequest(
            feature_view=view, update_mask=field_mask_pb2.FieldMask(paths=["fields"])
        )
    ).feature_view
    assert updated.version == 2
    return project_id


def test_projects_and_a_projects_definitions(console_page, project):
    page = console_page
    page.goto("/")
    page.locator(f"tr.project[data-project='{project}'] a").first.click()
    page.wait_for_url(f"**/registry/{project}")
    views = {
        row.get_attribute("data-view"): row.get_attribute("data-version")
        for row in page.locator("tr.feature-view").all()
    }
    assert views == {
        "user_profile": "2",
        "item_stats": "1",
        "item_reviews": "1",
        "item_review_text": "1",
    }
    entities = page.locator("tr.entity").all()
    assert {row.get_attribute("data-entity") for row in entities} == {"user", "item"}
    sources = {row.get_attribute("data-source") for row in page.locator("tr.source").all()}
    assert sources == {"user_events", "item_events", "item_reviews_push", "product_reviews"}
    model = page.locator("tr.embedding-model[data-model=minilm]")
    assert "TRITON" in model.inner_text()
    assert page.locator("tr.feature-set").count() == 1


def test_a_views_versions_schema_json_and_diff(console_page, project):
    page = console_page
    page.goto(f"/registry/{project}/views/user_profile")
    assert page.locator("#shown-version").inner_text() == "v2"
    fields = [row.get_attribute("data-field") for row in page.locator("tr.field").all()]
    assert fields == ["user_id", "age_norm", "activity"]
    assert '"name": "activity"' in page.locator("#view-json").inner_text()

    page.locator("#versions a[data-version='1']").click()
    page.wait_for_url("**version=1")
    fields = [row.get_attribute("data-field") for row in page.locator("tr.field").all()]
    assert fields == ["user_id", "age_norm", "activity", "price_affinity"]
    assert (
        page.locator("tr.field[data-field=price_affinity]").get_attribute("data-type") == "DOUBLE"
    )

    page.goto(f"/registry/{project}/views/user_profile")
    page.screenshot(path=str(artifact("registry-view.png")))
    page.locator("#diff-form button").click()
    page.wait_for_url("**/diff?a=1&b=2")
    page.screenshot(path=str(artifact("registry-diff.png")))
    removed = page.locator("#diff .diff-removed").all_inner_texts()
    added = page.locator("#diff .diff-added").all_inner_texts()
    assert any('"price_affinity"' in line for line in removed)
    assert any('"version": "2"' in line for line in added)
    assert not any("price_affinity" in line for line in added)


def test_a_produced_field_names_its_transform_and_model(console_page, project):
    page = console_page
    page.goto(f"/registry/{project}/views/item_review_text")
    produced = [
        row.inner_text()
        for row in page.locator("tr.field").all()
        if "LLM_EMBEDDING" in row.inner_text()
    ]
    assert produced, page.locator("#schema").inner_text()
    assert "minilm" in produced[0]


def test_a_missing_project_says_what_the_registry_said(console_page):
    response = console_page.goto("/registry/no_such_project_here")
    assert response.status == 502
    error = console_page.locator(".service-error")
    assert error.get_attribute("data-code") == "NOT_FOUND"


def test_online_features_of_an_entity_with_statuses_and_ages(
    console_page, project, serving_address, connect
):
    serving = serving_service_pb2_grpc.FeatureServingServiceStub(connect(serving_address))
    row = spb.FeatureRow(
        values={
            "user_id": value_pb2.Value(int64_value=7),
            "age_norm": value_pb2.Value(double_value=0.25),
            "activity": value_pb2.Value(double_value=3.5),
        }
    )
    row.event_time.FromDatetime(datetime.now(UTC) - timedelta(hours=2))
    written = serving.WriteFeatures(
        spb.WriteFeaturesRequest(project=project, feature_view="user_profile", rows=[row])
    )
    assert written.rows_written == 1

    page = console_page
    page.goto(f"/features?project={project}&view=user_profile&key=7")
    shown = {
        r.get_attribute("data-feature"): (
            r.get_attribute("data-status"),
            r.locator(".value").inner_text(),
        )
        for r in page.locator("#online-features tr.feature").all()
    }
    assert shown["user_profile:age_norm"] == ("PRESENT", "0.25")
    assert shown["user_profile:activity"] == ("PRESENT", "3.5")
    page.screenshot(path=str(artifact("online-features.png")))
    age = page.locator("#online-features tr.feature[data-feature='user_profile:activity'] .age")
    assert age.inner_text().startswith(("2h", "1h 59m"))

    page.goto(f"/features?project={project}&view=user_profile&key=424242")
    statuses = {r.get_attribute("data-status") for r in page.locator("tr.feature").all()}
    assert statuses == {"NOT_FOUND"}

    response = page.goto(f"/features?project={project}&view=user_profile&key=seven")
    assert response.status == 400
    assert "not an integer" in page.locator(".bad-input").inner_text()
