"""`recstack materialize` against real registry and materialization services on PostgreSQL.

A FILE-source view over a small Parquet file is declared with `recstack apply`, then
materialized, inspected, retried, switched online and published through `cli.main`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli import run_cli

USERS = 20
EVENTS_PER_DAY = 50
REPO = """\
kind: Entity
id: user
join_key: user_id
key_type: INT64
---
kind: DataSource
id: events
file:
  path: events.parquet
  format: PARQUET
event_timestamp_column: ts
---
kind: FeatureView
id: clicks
entity: user
source: events
type: BATCH
offline_enabled: true
online_enabled: false
fields:
  - {name: user_id, value_type: INT64}
  - {name: clicks, value_type: DOUBLE}
"""


def write_source(path: Path) -> None:
    """EVENTS_PER_DAY events on each of 2026-04-01..05, at random times of the day."""
    rng = np.random.default_rng(7)
    times, keys = [], []
    for day in range(1, 6):
        midnight = datetime(2026, 4, day, tzinfo=UTC)
        times += [midnight + timedelta(seconds=int(s)) for s in rng.integers(0, 86400, 50)]
        keys += list(rng.integers(1, USERS + 1, EVENTS_PER_DAY))
    table = pa.table(
        {
            "user_id": pa.array(keys, pa.int64()),
            "clicks": pa.array(rng.random(len(keys))),
            "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, path)


@pytest.fixture
def mat(materialization_address):
    return lambda *args: run_cli("materialize", *args, "--materialization", materialization_address)


@pytest.fixture
def view(registry_address, tmp_path) -> str:
    """`PROJECT/clicks`, declared through `recstack apply` in a fresh project."""
    project = f"mcli_{uuid.uuid4().hex[:10]}"
    write_source(tmp_path / "events.parquet")
    (tmp_path / "recstack.yaml").write_text(f"project: {project}\n")
    (tmp_path / "definitions.yaml").write_text(REPO)
    applied = run_cli("apply", str(tmp_path), "--registry", registry_address)
    assert applied.code == 0, applied.err
    return f"{project}/clicks"


def full_name(view: str) -> str:
    project, view_id = view.split("/")
    return f"projects/{project}/featureViews/{view_id}"


def backfill(mat, view: str, *args: str) -> list[dict]:
    """Backfill and wait; the jobs as they ended (proto JSON)."""
    result = mat("backfill", view, *args, "--wait", "-o", "json")
    assert result.code == 0, result.err
    return result.json()["jobs"]


def job_ref(view: str, job: dict) -> str:
    return f"{view}/{job['name'].rsplit('/', 1)[-1]}"


def test_backfill_wait_then_jobs_and_intervals(mat, view):
    started = mat("backfill", view, "--start", "2026-04-01", "--end", "2026-04-03", "--wait")
    assert started.code == 0, started.err
    assert started.out.startswith("Started 1 job:\n")
    assert "[2026-04-01T00:00Z, 2026-04-03T00:00Z)  offline" in started.out
    outcome = started.out.splitlines()[-1]
    assert "SUCCEEDED  100 rows read · written offline 100 · " in outcome

    header, row = mat("jobs", view).out.splitlines()
    assert header.startswith("JOB ")
    job_id = outcome.split()[0]
    assert row.split()[:3] == [job_id, "BACKFILL", "SUCCEEDED"]
    assert row.split()[5:8] == ["offline", "100", "100"]

    timeline = mat("intervals", view, "--store", "offline")
    assert timeline.code == 0, timeline.err
    lines = timeline.out.splitlines()
    assert lines[0] == f"Offline data intervals of {full_name(view)} (latest version):"
    assert lines[2] == "  " + "█" * 60
    assert lines[-1].split() == ["2026-04-01T00:00Z", "2026-04-03T00:00Z", "2d", "COMPLETE", job_id]

    # A window wider than the materialized range shows the NONE gaps in proportion.
    wider = mat(
        "intervals", view, "--store", "offline", "--start", "2026-03-31", "--end", "2026-04-04"
    )
    assert wider.out.splitlines()[2] == "  " + "·" * 15 + "█" * 30 + "·" * 15
    assert [line.split()[3] for line in wider.out.splitlines()[-3:]] == [
        "NONE",
        "COMPLETE",
        "NONE",
    ]

    as_json = mat("intervals", view, "--store", "offline", "-o", "json").json()
    [interval] = as_json["data_intervals"]
    assert interval["status"] == "STATUS_COMPLETE"
    assert interval["job"] == f"{full_name(view)}/jobs/{job_id}"


def test_retry_or_cancel_of_a_succeeded_job_is_a_failed_precondition(mat, view):
    [job] = backfill(mat, view, "--start", "2026-04-01", "--end", "2026-04-02")
    assert job["state"] == "STATE_SUCCEEDED"

    retried = mat("retry", job_ref(view, job))
    assert (retried.code, retried.out) == (1, "")
    assert retried.err.startswith("recstack: error: FAILED_PRECONDITION: ")
    assert "only FAILED or CANCELLED jobs can be retried" in retried.err
    assert "Traceback" not in retried.err

    cancelled = mat("cancel", job["name"])
    assert cancelled.code == 1
    assert cancelled.err.startswith("recstack: error: FAILED_PRECONDITION: ")

    watched = mat("watch", job_ref(view, job))
    assert watched.code == 0, watched.err
    assert "SUCCEEDED" in watched.out


def test_a_failed_job_exits_1_and_retry_wait_finishes_it(mat, view, tmp_path):
    source = tmp_path / "events.parquet"
    source.rename(tmp_path / "hidden.parquet")
    failed = mat("backfill", view, "--start", "2026-04-02", "--end", "2026-04-03", "--wait")
    assert failed.code == 1
    assert "FAILED" in failed.out
    assert "    error: " in failed.out
    assert failed.err.startswith("recstack: error: job projects/")
    assert " ended FAILED: " in failed.err
    job_id = failed.out.splitlines()[-2].split()[0]

    assert mat("watch", f"{view}/{job_id}").code == 1
    timeline = mat("intervals", view, "--store", "offline")
    assert timeline.out.splitlines()[2] == "  " + "▒" * 60

    (tmp_path / "hidden.parquet").rename(source)
    retried = mat("retry", f"{view}/{job_id}", "--wait")
    assert retried.code == 0, retried.err
    assert "RETRY" in retried.out
    assert "SUCCEEDED  50 rows read" in retried.out
    assert "COMPLETE" in mat("intervals", view, "--store", "offline").out


def test_settings_online_on_then_backfill_online(mat, view):
    refused = mat(
        "backfill", view, "--store", "online", "--start", "2026-04-01", "--end", "2026-04-02"
    )
    assert refused.code == 1
    assert "reason: STORE_DISABLED" in refused.err

    enabled = mat("settings", view, "--online", "on")
    assert enabled.code == 0, enabled.err
    assert enabled.out.splitlines() == [
        f"Materialization settings of {full_name(view)}:",
        "  offline       on",  # untouched: only the option given is in the mask
        "  online        on",
        "  schedule      none",
        "  source delay  0s",
    ]
    [job] = backfill(mat, view, "--store", "online", "--start", "2026-04-01", "--end", "2026-04-02")
    assert job["state"] == "STATE_SUCCEEDED"
    assert job["stores"] == ["STORE_ONLINE"]
    assert int(job["progress"]["rows_written_online"]) > 0
    online = mat("intervals", view, "--store", "online")
    assert online.out.splitlines()[-1].split()[3] == "COMPLETE"
    assert mat("intervals", view, "--store", "offline").out.startswith("No offline data intervals")


def test_settings_schedule_and_source_delay_then_remove_it(mat, view):
    scheduled = mat(
        "settings", view, "--every", "6", "--unit", "hour", "--from", "2030-01-01",
        "--source-delay", "90m", "-o", "json",
    )  # fmt: skip
    assert scheduled.code == 0, scheduled.err
    settings = scheduled.json()["settings"]
    assert settings["recurrence"] == {
        "frequency": "FREQUENCY_HOUR",
        "interval": 6,
        "start_time": "2030-01-01T00:00:00Z",
    }
    assert settings["source_delay"] == "5400s"
    assert settings["offline_enabled"] is True
    removed = mat("settings", view, "--no-schedule")
    assert "  schedule      none" in removed.out
    assert "  source delay  1h30m" in removed.out


def test_publish_a_partition(mat, view):
    backfill(mat, view, "--start", "2026-04-01", "--end", "2026-04-04")
    assert mat("settings", view, "--online", "on").code == 0
    published = mat("publish", view, "--partition", "2026-04-02", "--wait")
    assert published.code == 0, published.err
    assert "PUBLISH" in published.out
    assert "[2026-04-02T00:00Z, 2026-04-03T00:00Z)  online" in published.out
    assert "SUCCEEDED  50 rows read · written online " in published.out
    latest = mat("jobs", view, "--limit", "1").out.splitlines()[1]
    assert latest.split()[1:3] == ["PUBLISH", "SUCCEEDED"]


def test_unknown_view_and_job_are_not_found(mat, view):
    project = view.split("/")[0]
    missing = mat("backfill", f"{project}/nope", "--start", "2026-04-01", "--end", "2026-04-02")
    assert missing.code == 1
    assert missing.err.startswith("recstack: error: NOT_FOUND: ")
    gone = mat("watch", f"{view}/0000000000000000")
    assert gone.code == 1
    assert gone.err.startswith("recstack: error: NOT_FOUND: ")
    never = mat("backfill", view)
    assert never.code == 1
    assert never.err.startswith("recstack: error: INVALID_ARGUMENT: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("backfill", "clicks"), "give the feature-view as PROJECT/ID"),
        (("backfill", "shop/clicks", "--start", "tomorrow"), "is not an ISO-8601 time"),
        (("backfill", "shop/clicks", "--store", "disk"), "invalid choice: 'disk'"),
        (("retry", "shop/clicks"), "give the job as PROJECT/VIEW/JOB_ID"),
        (("intervals", "shop/clicks"), "the following arguments are required: --store"),
        (("settings", "shop/clicks"), "nothing to change"),
        (("publish", "shop/clicks", "--partition", "April"), "is not a YYYY-MM-DD partition"),
        (("export", "shop/ranker", "--output-path", "x.parquet"), "one of the arguments"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_a_usage_message(mat, args, message):
    result = mat(*args)
    assert result.code == 2, result
    assert message in result.err
    assert "usage: recstack materialize" in result.err or result.err.startswith("recstack: error:")
    assert "Traceback" not in result.err


def test_address_comes_from_the_environment(materialization_address, view, monkeypatch):
    monkeypatch.setenv("RECSTACK_MATERIALIZATION_ADDR", materialization_address)
    result = run_cli("materialize", "jobs", view)
    assert (result.code, result.out) == (0, f"No jobs for {full_name(view)}.\n")
