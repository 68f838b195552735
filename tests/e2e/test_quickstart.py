"""The quickstart: the PAI-Rec example trained by `recstack train` (gbdt) on the platform's
features, end to end through the CLI and the services."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from examples.quickstart.data import make_data
from tests.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("quickstart") / "quickstart"
    shutil.copytree(QUICKSTART, copy, ignore=shutil.ignore_patterns("*.csv", "*.parquet"))
    make_data.main(copy / "data")
    return copy


@pytest.fixture(scope="module")
def project(quickstart, registry_address, materialization_address) -> str:
    project_id = f"quickstart_{uuid.uuid4().hex[:6]}"
    connect = ("--registry", registry_address)
    applied = run_cli("apply", str(quickstart / "feature_repo"), "--project", project_id, *connect)
    assert applied.code == 0, applied.err
    for view in ("user_features", "item_features"):
        backfill = run_cli(
            "materialize",
            "backfill",
            f"{project_id}/{view}",
            "--start",
            "2026-09-29",
            "--end",
            "2026-10-01",
            "--wait",
            "--materialization",
            materialization_address,
            *connect,
        )
        assert backfill.code == 0, backfill.out + backfill.err
    return project_id


def test_recstack_train_fits_the_seed_gbdt_and_beats_popularity(
    quickstart, project, registry_address, materialization_address
):
    result = run_cli(
        "train",
        str(quickstart / "train.yaml"),
        "--project",
        project,
        "--work-dir",
        str(quickstart / "work"),
        "--registry",
        registry_address,
        "--materialization",
        materialization_address,
    )

    assert result.code == 0, result.out + result.err
    row = re.search(r"^probs_ctr\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", result.out, re.MULTILINE)
    assert row is not None, result.out
    auc, logloss, popularity_auc, _ = (float(value) for value in row.groups())
    # Clicks follow a noisy logistic rule of the three features: the model must come close to
    # the rule itself, and popularity (items are drawn uniformly) must not.
    assert auc > oracle_auc(quickstart / "data") - 0.015
    assert popularity_auc < 0.6
    assert logloss < 0.6


def oracle_auc(data: Path) -> float:
    users, items = pcsv.read_csv(data / "users.csv"), pcsv.read_csv(data / "items.csv")
    test = pq.read_table(data / "test.parquet")
    user = test.column("user_id").to_numpy() - 1
    item = test.column("item_id").to_numpy() - 1
    logit = make_data.click_logit(
        users.column("category_affinity").to_numpy()[user],
        users.column("recency_score").to_numpy()[user],
        items.column("price").to_numpy()[item],
    )
    return float(roc_auc_score(test.column("clicked").to_numpy(), logit))
