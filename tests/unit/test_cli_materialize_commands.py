"""`recstack materialize` without a server: parsing, requests, progress, tables and timelines."""

from __future__ import annotations

import argparse
import io
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.message import Message
from recstack.common.v1 import time_window_pb2
from recstack.materialization.v1 import data_interval_pb2, job_pb2, materialization_settings_pb2
from recstack.materialization.v1 import materialization_service_pb2 as pb

from cli import main, materialize
from cli.connection import CliSettings, Connection, Context
from cli.errors import UsageError
from tests.cli import run_cli

Job = job_pb2.Job
DI = data_interval_pb2.DataInterval
VIEW = "projects/shop/featureViews/clicks"


@dataclass
class FakeConnection:
    """Answers materialization calls from canned responses and records the requests."""

    responses: dict[str, list[Message]] = field(default_factory=dict)
    streams: dict[str, list[list[Message]]] = field(default_factory=dict)
    requests: list[tuple[str, Message]] = field(default_factory=list)
    long_calls: list[str] = field(default_factory=list)

    def call(self, rpc: str, request: Message, *, long: bool = False) -> Message:
        self.requests.append((rpc, request))
        if long:
            self.long_calls.append(rpc)
        return self.responses[rpc].pop(0)

    def stream(self, rpc: str, request: Message) -> Iterator[Message]:
        self.requests.append((rpc, request))
        yield from self.streams[rpc].pop(0)

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def fake(monkeypatch):
    connection = FakeConnection()
    monkeypatch.setattr(materialize, "connect", lambda args, context: connection)
    return connection


def at(day: int, hour: int = 4, second: int = 0) -> datetime:
    return datetime(2026, 4, day, hour, 0, second, tzinfo=UTC)


def window(start: datetime, end: datetime) -> time_window_pb2.TimeWindow:
    message = time_window_pb2.TimeWindow()
    message.start_time.FromDatetime(start)
    message.end_time.FromDatetime(end)
    return message


def job(job_id: str = "j1", state: int = Job.STATE_QUEUED, **fields) -> Job:
    return Job(
        name=f"{VIEW}/jobs/{job_id}",
        window=window(at(1), at(2)),
        stores=[job_pb2.STORE_OFFLINE],
        state=state,
        trigger=Job.TRIGGER_BACKFILL,
        **fields,
    )


def progress(rows: int, chunks: int, offline: int = 0, online: int = 0) -> job_pb2.JobProgress:
    return job_pb2.JobProgress(
        rows_read=rows, chunks_done=chunks, rows_written_offline=offline, rows_written_online=online
    )


def updates(job_id: str, final: int, error: str = "") -> list[pb.WatchJobResponse]:
    return [
        pb.WatchJobResponse(job=job(job_id, Job.STATE_RUNNING, progress=progress(0, 0))),
        pb.WatchJobResponse(job=job(job_id, Job.STATE_RUNNING, progress=progress(500, 1))),
        pb.WatchJobResponse(
            job=job(job_id, final, progress=progress(1000, 2, 1000), error_message=error)
        ),
    ]


def interval(start: datetime, end: datetime, status: int, job_id: str = "") -> DI:
    name = f"{VIEW}/jobs/{job_id}" if job_id else ""
    return DI(window=window(start, end), status=status, job=name)


# --- argument types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-04-02", datetime(2026, 4, 2, tzinfo=UTC)),
        ("2026-04-02T04:00", at(2)),
        ("2026-04-02 04:00:00", at(2)),
        ("2026-04-02T04:00Z", at(2)),
        ("2026-04-02T06:00:00+02:00", at(2)),
        ("2026-04-01T23:00-05:00", at(2)),
        ("2026-04-02T04:00:00.250", at(2) + timedelta(milliseconds=250)),
    ],
)
def test_times_are_iso_8601_and_utc_when_naive(text, moment):
    parsed = materialize.parse_time(text)
    assert parsed == moment
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "04/02/2026", ""])
def test_bad_times(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not an ISO-8601 time"):
        materialize.parse_time(text)


def test_formatted_times_are_short_exact_and_read_back():
    for moment in (at(2), at(2, second=5), at(2) + timedelta(microseconds=7)):
        text = materialize.format_time(moment)
        assert materialize.parse_time(text) == moment
    assert materialize.format_time(at(2)) == "2026-04-02T04:00Z"
    assert materialize.format_time(at(2, second=5)) == "2026-04-02T04:00:05Z"


@pytest.mark.parametrize(
    ("text", "delay"),
    [
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("0", timedelta(0)),
    ],
)
def test_durations(text, delay):
    assert materialize.parse_delay(text) == delay


@pytest.mark.parametrize("text", ["soon", "30", "1w", "-1h", ""])
def test_bad_durations(text):
    with pytest.raises(argparse.ArgumentTypeError):
        materialize.parse_delay(text)


@pytest.mark.parametrize(
    ("reference", "name"),
    [
        ("shop/clicks/abc", f"{VIEW}/jobs/abc"),
        (f"{VIEW}/jobs/abc", f"{VIEW}/jobs/abc"),
    ],
)
def test_job_references(reference, name):
    assert materialize.job_name(reference) == name


@pytest.mark.parametrize(
    "reference",
    [
        "abc",
        "shop/abc",
        "shop//abc",
        "a/b/c/d",
        f"{VIEW}/runs/abc",
        f"{VIEW}/jobs/",
        "projects/a/b",
    ],
)
def test_bad_job_references(reference):
    with pytest.raises(UsageError, match="PROJECT/VIEW/JOB_ID"):
        materialize.job_name(reference)


def test_enum_words_come_from_the_contract():
    assert materialize.words(materialize.STORE) == ["offline", "online"]
    assert materialize.words(materialize.STATUS) == ["none", "pending", "incomplete", "complete"]
    assert materialize.enum_number(materialize.MODE, "incremental") == (
        pb.PublishTableRequest.MODE_INCREMENTAL
    )


# --- usage errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("materialize",), "the following arguments are required: COMMAND"),
        (("materialize", "backfill"), "the following arguments are required: PROJECT/VIEW"),
        (("materialize", "backfill", "clicks"), "give the feature-view as PROJECT/ID"),
        (("materialize", "backfill", "shop/v", "--start", "soon"), "is not an ISO-8601 time"),
        (("materialize", "backfill", "shop/v", "--status", "done"), "invalid choice: 'done'"),
        (("materialize", "backfill", "shop/v", "--store", "cache"), "invalid choice: 'cache'"),
        (
            ("materialize", "backfill", "shop/v", "--start", "2026-04-02", "--end", "2026-04-01"),
            "--end must be after --start",
        ),
        (("materialize", "retry", "shop/v"), "give the job as PROJECT/VIEW/JOB_ID"),
        (("materialize", "jobs", "shop/v", "--limit", "0"), "0 must be at least 1"),
        (("materialize", "intervals", "shop/v"), "the following arguments are required: --store"),
        (
            ("materialize", "intervals", "shop/v", "--store", "offline", "--start", "2026-04-01"),
            "give --start and --end together",
        ),
        (("materialize", "settings", "shop/v"), "nothing to change"),
        (("materialize", "settings", "shop/v", "--online", "yes"), "invalid choice: 'yes'"),
        (("materialize", "settings", "shop/v", "--every", "2"), "--every needs --unit"),
        (("materialize", "settings", "shop/v", "--unit", "hour"), "give --every N too"),
        (
            ("materialize", "settings", "shop/v", "--every", "1", "--no-schedule"),
            "not allowed with argument",
        ),
        (("materialize", "settings", "shop/v", "--source-delay=-5m"), "must not be negative"),
        (("materialize", "publish", "shop/v"), "required: --partition"),
        (("materialize", "publish", "shop/v", "--partition", "2026-02-30"), "YYYY-MM-DD"),
        (("materialize", "publish", "shop/v", "--partition", "x", "--mode", "upsert"), "YYYY"),
        (("materialize", "export", "shop/r", "--snapshot", "2026-04-02"), "--output-path"),
        (
            ("materialize", "export", "shop/r", "--output-path", "o.parquet"),
            "one of the arguments --entities --entity-table --snapshot --changes-start",
        ),
        (
            (
                "materialize",
                "export",
                "shop/r",
                "--output-path",
                "o",
                "--entities",
                "e",
                "--snapshot",
                "2026-04-02",
            ),
            "not allowed with argument",
        ),
        (
            (
                "materialize",
                "export",
                "shop/r",
                "--output-path",
                "o",
                "--changes-start",
                "2026-04-02",
            ),
            "give --changes-start and --changes-end together",
        ),
        (
            (
                "materialize",
                "export",
                "shop/r",
                "--output-path",
                "o",
                "--snapshot",
                "2026-04-02",
                "--timestamp-column",
                "ts",
            ),
            "--timestamp-column applies to --entities and --entity-table",
        ),
        (
            (
                "materialize",
                "export",
                "shop/r",
                "--output-path",
                "o",
                "--changes-start",
                "2026-04-02",
                "--changes-end",
                "2026-04-01",
            ),
            "--changes-end must be after --changes-start",
        ),
        (("materialize", "jobs", "shop/v", "--timeout", "0"), "invalid settings: timeout_seconds"),
    ],
)
def test_usage_errors_exit_2_before_any_call(args, message, fake):
    result = run_cli(*args)
    assert result.code == 2, result
    assert message in result.err
    assert "usage:" in result.err or result.err.startswith("recstack: error: ")
    assert "Traceback" not in result.err
    assert fake.requests == []


def test_help_lists_the_group_and_its_commands():
    top = run_cli("--help")
    assert "    materialize\n" in top.out
    group = run_cli("materialize", "--help")
    assert group.code == 0
    for command in ("backfill", "retry", "cancel", "watch", "jobs", "intervals", "settings"):
        assert f"    {command}" in group.out
    assert "RECSTACK_MATERIALIZATION_ADDR" in group.out
    backfill = run_cli("materialize", "backfill", "--help")
    assert "--materialization HOST:PORT" in backfill.out
    assert "--output {table,json}" in backfill.out


# --- requests and output ---------------------------------------------------------------------


def test_backfill_sends_the_window_statuses_and_stores_and_lists_the_jobs(fake):
    fake.responses["Backfill"] = [pb.BackfillResponse(jobs=[job("a1"), job("b2")])]
    result = run_cli(
        "materialize", "backfill", "shop/clicks", "--start", "2026-04-01T04:00",
        "--end", "2026-04-02T04:00+00:00", "--status", "none", "INCOMPLETE",
        "--status", "complete", "--store", "online",
    )  # fmt: skip
    assert result.code == 0, result.err
    ((rpc, request),) = fake.requests
    assert rpc == "Backfill"
    assert request.feature_view == VIEW
    assert request.window == window(at(1), at(2))
    assert list(request.statuses) == [DI.STATUS_NONE, DI.STATUS_INCOMPLETE, DI.STATUS_COMPLETE]
    assert list(request.stores) == [job_pb2.STORE_ONLINE]
    assert result.out.splitlines() == [
        "Started 2 jobs:",
        "  JOB  TRIGGER   STATE   WINDOW                                  STORES",
        "  a1   BACKFILL  QUEUED  [2026-04-01T04:00Z, 2026-04-02T04:00Z)  offline",
        "  b2   BACKFILL  QUEUED  [2026-04-01T04:00Z, 2026-04-02T04:00Z)  offline",
    ]


def test_backfill_without_window_or_options_leaves_them_to_the_service(fake):
    fake.responses["Backfill"] = [pb.BackfillResponse()]
    result = run_cli(
        "materialize", "backfill", "clicks", "--project", "shop", "--end", "2026-04-03"
    )
    assert result.code == 0
    request = fake.requests[0][1]
    assert not request.window.HasField("start_time")
    assert request.window.end_time.ToDatetime(tzinfo=UTC) == datetime(2026, 4, 3, tzinfo=UTC)
    assert (list(request.statuses), list(request.stores)) == ([], [])
    assert result.out.startswith("Nothing to backfill")


def test_backfill_wait_watches_every_job_and_succeeds(fake):
    fake.responses["Backfill"] = [pb.BackfillResponse(jobs=[job("a1"), job("b2")])]
    fake.streams["WatchJob"] = [
        updates("a1", Job.STATE_SUCCEEDED),
        updates("b2", Job.STATE_SUCCEEDED),
    ]
    result = run_cli("materialize", "backfill", "shop/clicks", "--status", "none", "--wait")
    assert result.code == 0, result.err
    watched = [r.name for rpc, r in fake.requests if rpc == "WatchJob"]
    assert watched == [f"{VIEW}/jobs/a1", f"{VIEW}/jobs/b2"]
    lines = result.out.splitlines()
    # Without a terminal: one line per state change and one per outcome, no carriage returns.
    assert "\r" not in result.out
    assert lines[-4].startswith("[1/2] a1  RUNNING    0 rows read · 0 chunks · ")
    assert lines[-3].startswith(
        "[1/2] a1  SUCCEEDED  1,000 rows read · written offline 1,000 · 2 chunks · "
    )
    assert lines[-1].startswith("[2/2] b2  SUCCEEDED  1,000 rows read")


def test_backfill_wait_exits_1_when_a_job_fails(fake):
    fake.responses["Backfill"] = [pb.BackfillResponse(jobs=[job("a1"), job("b2")])]
    fake.streams["WatchJob"] = [
        updates("a1", Job.STATE_SUCCEEDED),
        updates("b2", Job.STATE_FAILED, "source missing"),
    ]
    result = run_cli("materialize", "backfill", "shop/clicks", "--wait")
    assert result.code == 1
    assert "    error: source missing" in result.out
    assert result.err == "recstack: error: 1 of 2 jobs did not succeed: b2 FAILED\n"


def test_backfill_json_is_one_response_with_the_final_states(fake):
    fake.responses["Backfill"] = [pb.BackfillResponse(jobs=[job("a1")])]
    fake.streams["WatchJob"] = [updates("a1", Job.STATE_SUCCEEDED)]
    result = run_cli("materialize", "backfill", "shop/clicks", "--wait", "-o", "json")
    assert result.code == 0
    document = json.loads(result.out)
    assert [j["state"] for j in document["jobs"]] == ["STATE_SUCCEEDED"]
    assert document["jobs"][0]["progress"]["rows_read"] == "1000"


def test_watch_exits_0_only_when_the_job_succeeds(fake):
    fake.streams["WatchJob"] = [
        updates("a1", Job.STATE_SUCCEEDED),
        updates("a1", Job.STATE_CANCELLED, "cancelled by user"),
    ]
    ok = run_cli("materialize", "watch", "shop/clicks/a1")
    assert ok.code == 0
    assert fake.requests[0][1].name == f"{VIEW}/jobs/a1"
    cancelled = run_cli("materialize", "watch", f"{VIEW}/jobs/a1")
    assert cancelled.code == 1
    assert cancelled.err == (
        f"recstack: error: job {VIEW}/jobs/a1 ended CANCELLED: cancelled by user\n"
    )


def test_watch_of_a_stream_that_stops_early_is_an_error(fake):
    fake.streams["WatchJob"] = [updates("a1", Job.STATE_SUCCEEDED)[:2]]
    result = run_cli("materialize", "watch", "shop/clicks/a1")
    assert result.code == 1
    assert "stopped streaming" in result.err
    assert "while it was RUNNING" in result.err


def test_retry_and_publish_wait_and_requests(fake):
    fake.responses["RetryJob"] = [pb.RetryJobResponse(job=job("r2"))]
    fake.responses["PublishTable"] = [pb.PublishTableResponse(job=job("p3"))]
    fake.streams["WatchJob"] = [updates("r2", Job.STATE_SUCCEEDED)]
    retried = run_cli("materialize", "retry", "shop/clicks/f1", "--wait")
    assert retried.code == 0, retried.err
    assert fake.requests[0][1] == pb.RetryJobRequest(name=f"{VIEW}/jobs/f1")
    assert retried.out.startswith("Started 1 job:\n")
    published = run_cli(
        "materialize", "publish", "shop/clicks", "--partition", "2026-04-02",
        "--mode", "incremental", "--no-transform", "-o", "json",
    )  # fmt: skip
    assert published.code == 0
    assert fake.requests[-1][1] == pb.PublishTableRequest(
        feature_view=VIEW,
        partition="2026-04-02",
        mode=pb.PublishTableRequest.MODE_INCREMENTAL,
        transform=False,
    )
    assert json.loads(published.out)["job"]["name"] == f"{VIEW}/jobs/p3"


def test_publish_defaults_to_merge_with_transform(fake):
    fake.responses["PublishTable"] = [pb.PublishTableResponse(job=job("p3"))]
    assert run_cli("materialize", "publish", "shop/clicks", "--partition", "2026-04-02").code == 0
    request = fake.requests[0][1]
    assert (request.mode, request.transform) == (pb.PublishTableRequest.MODE_MERGE, True)


def test_cancel_says_whether_the_job_stopped_or_will_stop(fake):
    fake.responses["CancelJob"] = [
        pb.CancelJobResponse(job=job("a1", Job.STATE_CANCELLED)),
        pb.CancelJobResponse(job=job("a1", Job.STATE_RUNNING)),
    ]
    assert run_cli("materialize", "cancel", "shop/clicks/a1").out == f"Cancelled {VIEW}/jobs/a1.\n"
    assert "stops at its next chunk" in run_cli("materialize", "cancel", "shop/clicks/a1").out


def test_jobs_table_pages_up_to_the_limit(fake):
    failed = job(
        "f1",
        Job.STATE_FAILED,
        progress=progress(1234567, 3, 1234567, 10),
        error_message="boom\n" + "x" * 100,
    )
    failed.stores.append(job_pb2.STORE_ONLINE)
    fake.responses["ListJobs"] = [
        pb.ListJobsResponse(jobs=[failed], next_page_token="1"),
        pb.ListJobsResponse(jobs=[job("a1", Job.STATE_SUCCEEDED)], next_page_token="2"),
    ]
    result = run_cli("materialize", "jobs", "shop/clicks", "--limit", "2")
    assert result.code == 0
    assert [(r.page_size, r.page_token) for _, r in fake.requests] == [(2, ""), (1, "1")]
    header, first, second = result.out.splitlines()
    assert [cell.strip() for cell in header.split("  ") if cell] == [
        *("JOB", "TRIGGER", "STATE", "WINDOW", "STORES"),
        *("ROWS READ", "ROWS OFFLINE", "ROWS ONLINE", "ERROR"),
    ]
    assert first.split()[:3] == ["f1", "BACKFILL", "FAILED"]
    assert "offline,online  1,234,567  1,234,567     10" in first
    assert first.endswith("boom " + "x" * 54 + "…")
    assert second.split()[:3] == ["a1", "BACKFILL", "SUCCEEDED"]


def test_no_jobs(fake):
    fake.responses["ListJobs"] = [pb.ListJobsResponse()]
    assert run_cli("materialize", "jobs", "shop/clicks").out == f"No jobs for {VIEW}.\n"
    assert fake.requests[0][1].page_size == materialize.DEFAULT_JOB_LIMIT


def test_settings_mask_names_exactly_the_options_given(fake):
    answer = materialization_settings_pb2.MaterializationSettings(
        name=f"{VIEW}/materializationSettings", offline_enabled=True, online_enabled=True
    )
    fake.responses["UpdateMaterializationSettings"] = [
        pb.UpdateMaterializationSettingsResponse(settings=answer)
    ]
    result = run_cli("materialize", "settings", "shop/clicks", "--online", "on")
    assert result.code == 0
    request = fake.requests[0][1]
    assert list(request.update_mask.paths) == ["online_enabled"]
    assert request.settings.name == f"{VIEW}/materializationSettings"
    assert request.settings.online_enabled is True
    assert result.out.splitlines() == [
        f"Materialization settings of {VIEW}:",
        "  offline       on",
        "  online        on",
        "  schedule      none",
        "  source delay  0s",
    ]


def parse_settings(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    materialize._add_settings(parser.add_subparsers(), [])
    return parser.parse_args(["settings", "shop/clicks", *args])


def test_settings_schedule_and_delay():
    now = datetime(2026, 4, 2, 13, 47, 12, 5, tzinfo=UTC)
    args = parse_settings(
        "--every", "2", "--unit", "HOUR", "--source-delay", "30m", "--offline", "off"
    )
    settings, paths = materialize.settings_change(args, now)
    assert paths == ["offline_enabled", "recurrence", "source_delay"]
    assert settings.offline_enabled is False
    assert settings.recurrence.interval == 2
    assert settings.recurrence.frequency == materialization_settings_pb2.Recurrence.FREQUENCY_HOUR
    # No --from: the current hour, so the scheduler does not catch up from the epoch.
    assert settings.recurrence.start_time.ToDatetime(tzinfo=UTC) == datetime(
        2026, 4, 2, 13, tzinfo=UTC
    )
    assert settings.source_delay.ToTimedelta() == timedelta(minutes=30)
    given = parse_settings("--every", "1", "--unit", "day", "--from", "2026-04-01T02:00+02:00")
    start = materialize.settings_change(given, now)[0].recurrence.start_time
    assert start.ToDatetime(tzinfo=UTC) == datetime(2026, 4, 1, tzinfo=UTC)
    removed, paths = materialize.settings_change(parse_settings("--no-schedule"), now)
    assert paths == ["recurrence"]
    assert not removed.HasField("recurrence")


def test_render_settings_with_a_schedule():
    settings = materialization_settings_pb2.MaterializationSettings(
        name=f"{VIEW}/materializationSettings", offline_enabled=True
    )
    settings.recurrence.frequency = materialization_settings_pb2.Recurrence.FREQUENCY_MINUTE
    settings.recurrence.interval = 15
    settings.recurrence.start_time.FromDatetime(at(2))
    settings.source_delay.FromTimedelta(timedelta(hours=2))
    lines = materialize.render_settings(settings).splitlines()
    assert lines[2:] == [
        "  online        off",
        "  schedule      every 15 minutes from 2026-04-02T04:00Z",
        "  source delay  2h",
    ]


def test_export_modes_build_one_request_each(fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake.responses["ExportTrainingSet"] = [
        pb.ExportTrainingSetResponse(output_path=str(tmp_path / "t.parquet"), row_count=12345)
    ] * 4
    common = ("materialize", "export", "shop/ranker", "--output-path", "t.parquet")
    result = run_cli(*common, "--entities", "labels.parquet", "--timestamp-column", "ts")
    assert result.code == 0, result.err
    assert result.out == f"Exported 12,345 rows to {tmp_path / 't.parquet'}.\n"
    assert run_cli(*common, "--entity-table", "public.labels").code == 0
    assert run_cli(*common, "--snapshot", "2026-04-02").code == 0
    assert (
        run_cli(*common, "--changes-start", "2026-04-01", "--changes-end", "2026-04-02").code == 0
    )
    entities, table_rows, snapshot, changes = (request for _, request in fake.requests)
    assert entities == pb.ExportTrainingSetRequest(
        model_feature_set="projects/shop/modelFeatureSets/ranker",
        entity_parquet_path=str(tmp_path / "labels.parquet"),
        timestamp_column="ts",
        output_path=str(tmp_path / "t.parquet"),
    )
    assert table_rows.WhichOneof("entity_rows") == "entity_table"
    assert table_rows.entity_table == "public.labels"
    assert snapshot.WhichOneof("entity_rows") is None
    assert snapshot.snapshot_time.ToDatetime(tzinfo=UTC) == datetime(2026, 4, 2, tzinfo=UTC)
    assert changes.changes_window == window(
        datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)
    )
    # An export can outlast the default deadline of one call.
    assert fake.long_calls == ["ExportTrainingSet"] * 4


# --- intervals -------------------------------------------------------------------------------


def test_bar_cells_are_proportional_and_add_up():
    assert materialize.bar_cells([1, 3], 40) == [10, 30]
    assert materialize.bar_cells([1, 1, 1], 10) == [4, 3, 3]
    assert materialize.bar_cells([2, 1], 4) == [3, 1]
    assert sum(materialize.bar_cells([7, 11, 13, 17], 60)) == 60
    assert materialize.bar_cells([], 60) == []


def test_a_short_interval_keeps_one_cell_taken_from_the_widest():
    assert materialize.bar_cells([1_000_000, 1, 1_000_000], 10) == [4, 1, 5]
    many = materialize.bar_cells([1] * 100 + [10_000], 60)
    assert sum(many) == 60  # more intervals than cells: the bar is approximate, never wider


def test_timeline_of_the_issue_example():
    intervals = [
        interval(at(1), at(2), DI.STATUS_NONE),
        interval(at(2), at(2, 12), DI.STATUS_INCOMPLETE, "f1"),
        interval(at(2, 12), at(3), DI.STATUS_COMPLETE, "c2"),
        interval(at(3), at(4), DI.STATUS_NONE),
        interval(at(4), at(5), DI.STATUS_PENDING, "p3"),
    ]
    lines = materialize.render_timeline(intervals, width=48).splitlines()
    # Four days in 48 cells: 12 per day, so 04-02's 8 h INCOMPLETE and 16 h COMPLETE are 4 and 8.
    assert lines[0] == "  " + "·" * 12 + "▒" * 4 + "█" * 8 + "·" * 12 + "…" * 12
    assert lines[1] == "  2026-04-01T04:00Z" + " " * 14 + "2026-04-05T04:00Z"
    assert lines[2] == "  █ complete  ▒ incomplete  … pending  · none"
    assert lines[3] == ""
    assert lines[4].split() == ["START", "END", "LENGTH", "STATUS", "JOB"]
    assert lines[5].split() == ["2026-04-01T04:00Z", "2026-04-02T04:00Z", "1d", "NONE"]
    assert lines[6].split() == ["2026-04-02T04:00Z", "2026-04-02T12:00Z", "8h", "INCOMPLETE", "f1"]
    assert lines[7].split()[2:] == ["16h", "COMPLETE", "c2"]
    assert len(lines) == 10


def test_intervals_command_table_and_json(fake):
    response = pb.ListDataIntervalsResponse(
        data_intervals=[interval(at(1), at(2), DI.STATUS_COMPLETE, "c1")]
    )
    fake.responses["ListDataIntervals"] = [response, response]
    result = run_cli(
        "materialize", "intervals", "shop/clicks", "--store", "online",
        "--start", "2026-04-01T04:00", "--end", "2026-04-02T04:00", "--version", "2",
    )  # fmt: skip
    assert result.code == 0, result.err
    request = fake.requests[0][1]
    assert (request.feature_view, request.store, request.version) == (
        VIEW,
        job_pb2.STORE_ONLINE,
        2,
    )
    assert request.window == window(at(1), at(2))
    assert result.out.startswith(f"Online data intervals of {VIEW} (version 2):\n\n  " + "█" * 60)
    as_json = run_cli("materialize", "intervals", "shop/clicks", "--store", "offline", "-o", "json")
    assert json.loads(as_json.out)["data_intervals"][0]["status"] == "STATUS_COMPLETE"
    assert not fake.requests[1][1].HasField("window")


def test_intervals_of_a_view_never_materialized(fake):
    fake.responses["ListDataIntervals"] = [pb.ListDataIntervalsResponse()]
    result = run_cli("materialize", "intervals", "shop/clicks", "--store", "offline")
    assert (
        result.out
        == f"No offline data intervals for {VIEW} (latest version): never materialized.\n"
    )


# --- progress display ------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_redrawn_in_place():
    out = Terminal()
    ticks = iter([0.0, 1.0, 2.5, 4.0])
    display = materialize.ProgressDisplay(out, clock=lambda: next(ticks))
    running = job("a1", Job.STATE_RUNNING, progress=progress(1200, 1))
    display.update(running)
    display.update(job("a1", Job.STATE_RUNNING, progress=progress(24000, 2)))
    display.finish(job("a1", Job.STATE_FAILED, progress=progress(24000, 2), error_message="x"))
    frames = out.getvalue().split("\r")
    assert frames[0] == ""
    assert frames[1].startswith("⠋ a1  RUNNING    1,200 rows read · 1 chunk · 1.0s")
    assert frames[2].startswith("⠙ a1  RUNNING    24,000 rows read · 2 chunks · 2.5s")
    assert frames[3] == (
        "a1  FAILED     24,000 rows read · written offline 0 · 2 chunks · 4.0s".ljust(
            len(frames[2]) - 2
        )
        + "\n    error: x\n"
    )


def test_watch_on_a_terminal_ends_with_the_outcome_over_the_progress_line(fake):
    fake.streams["WatchJob"] = [updates("a1", Job.STATE_SUCCEEDED)]
    out = Terminal()
    assert main(["materialize", "watch", "shop/clicks/a1"], stdout=out, stderr=io.StringIO()) == 0
    text = out.getvalue()
    assert text.count("\n") == 1
    assert text.endswith("\n")
    frames = text.split("\r")
    assert [frame[2:].split()[1] for frame in frames[1:3]] == ["RUNNING", "RUNNING"]
    assert frames[-1].startswith("a1  SUCCEEDED  1,000 rows read · written offline 1,000")


def test_plain_output_prints_state_changes_and_a_heartbeat():
    out = io.StringIO()
    ticks = iter([0.0, 1.0, 2.0, 13.0, 14.0, 15.0])
    display = materialize.ProgressDisplay(out, clock=lambda: next(ticks))
    display.update(job("a1", Job.STATE_QUEUED))
    for rows in (100, 200, 300):  # at 2 s (new state), 13 s (heartbeat), 14 s (too soon)
        display.update(job("a1", Job.STATE_RUNNING, progress=progress(rows, 1)))
    display.finish(job("a1", Job.STATE_SUCCEEDED, progress=progress(300, 1)))
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["QUEUED", "RUNNING", "RUNNING", "SUCCEEDED"]
    assert lines[2].split()[2] == "200"


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0s"),
        (86_400_000_000, "1d"),
        (151_200_000_000, "1d18h"),
        (5_400_000_000, "1h30m"),
        (90_500_000, "1m30.5s"),
        (250_000, "0.25s"),
    ],
)
def test_interval_lengths_read_like_durations(micros, text):
    assert materialize.format_length(micros) == text
    if "." not in text:
        assert materialize.parse_delay(text) == timedelta(microseconds=micros)


def test_job_duration_comes_from_the_service_when_it_has_both_times():
    ended = job("a1", Job.STATE_SUCCEEDED)
    ended.start_time.FromDatetime(at(1))
    ended.end_time.FromDatetime(at(1) + timedelta(minutes=2, seconds=5))
    assert materialize.outcome_line(ended, 0.0).endswith("· 2m05s")


def test_a_job_that_embedded_text_says_what_it_paid_for():
    ended = job("a1", Job.STATE_SUCCEEDED)
    ended.progress.texts_embedded = 1200
    ended.progress.embedding_calls = 38
    ended.progress.embedding_cache_hits = 800
    ended.progress.embedding_truncations = 3
    assert materialize.outcome_line(ended, 1.0).splitlines()[1] == (
        "    embeddings: 1,200 texts embedded in 38 model calls, 800 from the cache, 3 truncated"
    )
    assert "embeddings" not in materialize.outcome_line(job("a2", Job.STATE_SUCCEEDED), 1.0)


# --- connection ------------------------------------------------------------------------------


def test_address_comes_from_the_flag_then_the_environment(monkeypatch):
    context = Context(CliSettings(), "table", io.StringIO())
    args = argparse.Namespace(materialization=None)
    monkeypatch.setenv("RECSTACK_MATERIALIZATION_ADDR", "mat:7000")
    with materialize.connect(args, context) as connection:
        assert connection.address == "mat:7000"
    with materialize.connect(argparse.Namespace(materialization="flag:1"), context) as connection:
        assert connection.address == "flag:1"
    monkeypatch.delenv("RECSTACK_MATERIALIZATION_ADDR")
    with materialize.connect(args, context) as connection:
        assert connection.address == "127.0.0.1:50052"


def test_long_calls_have_a_deadline_only_when_one_was_set(monkeypatch):
    monkeypatch.delenv("RECSTACK_TIMEOUT_SECONDS", raising=False)
    with Connection(CliSettings(), "a:1", materialize.MATERIALIZATION) as default:
        assert (default._timeout, default._long_timeout) == (30.0, None)
    with Connection(CliSettings(timeout_seconds=5), "a:1", materialize.MATERIALIZATION) as set_:
        assert (set_._timeout, set_._long_timeout) == (5.0, 5.0)


def test_unreachable_service_is_unavailable_with_a_materialization_hint():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    result = run_cli(
        "materialize", "jobs", "shop/clicks", "--materialization", address, "--timeout", "3"
    )
    assert result.code == 1
    assert result.err.startswith("recstack: error: UNAVAILABLE: ")
    assert f"is the materialization service running at {address}?" in result.err
    assert "registry" not in result.err
    assert "Traceback" not in result.err


def test_unreachable_service_while_watching():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    result = run_cli(
        "materialize", "watch", "shop/clicks/a1", "--materialization", address, "--timeout", "3"
    )
    assert result.code == 1
    assert result.err.startswith("recstack: error: UNAVAILABLE: ")
