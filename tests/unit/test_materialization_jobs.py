"""Backfill, retry, cancel, crash reaping, schedules, bootstrap and publish against in-memory
fakes of the repositories, the engine and the stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from services.materialization.intervals import Status, Timeline
from services.materialization.jobs import (
    Frequency,
    JobState,
    Progress,
    PublishMode,
    Recurrence,
    Settings,
    Store,
    Trigger,
    Window,
)
from services.materialization.materializer import Materializer
from services.materialization.runner import JobRunner
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shared.feature_views import Feature, ViewSchema
from shared.values import VT
from tests.fakes.materialization import InMemoryMaterialization
from tests.fakes.offline_store import InMemoryOfflineStore

VIEW = "projects/p/featureViews/clicks"
SCHEMA = ViewSchema(
    "p", "clicks", 1, "user_id", VT.VALUE_TYPE_INT64, (Feature("n", VT.VALUE_TYPE_DOUBLE),)
)
C, INC, N, P = Status.COMPLETE, Status.INCOMPLETE, Status.NONE, Status.PENDING


def day(d, hour=4):
    return datetime(2026, 4, d, hour, tzinfo=UTC)


class _RecordingOffline(InMemoryOfflineStore):
    """The contract-tested in-memory offline store, telling the world what was cleared and
    dropped."""

    def __init__(self, world):
        super().__init__("/offline")
        self.world = world

    def clear_window(self, view, window):
        self.world.cleared.append(window)
        return super().clear_window(view, window)

    def drop(self, view):
        self.world.dropped.append("offline")
        super().drop(view)


class World:
    """Everything a Materializer and a JobRunner need, in memory, with a settable clock."""

    def __init__(self, online=True, offline=True):
        self.memory = InMemoryMaterialization()
        self.now = day(10)
        self.engine_calls = []
        self.fail_with = None
        self.cleared = []
        self.dropped = []
        self.view = SimpleNamespace(
            name=VIEW, version=1, source="events", online_enabled=online, offline_enabled=offline
        )
        definitions = SimpleNamespace(
            feature_view=lambda project, view, version=0: self.view,
            view_schema=lambda project, view, version=0: SCHEMA,
            data_source=lambda project, source: SimpleNamespace(
                WhichOneof=lambda _: "file",
                file=SimpleNamespace(path="/src", format=1, FORMAT_PARQUET=1, partition_column=""),
                event_timestamp_column="ts",
            ),
        )
        offline = _RecordingOffline(self)
        online = SimpleNamespace(
            drop_table=lambda view: self.dropped.append("online"), ensure_table=lambda view: None
        )
        common = {
            "unit_of_work": self.unit_of_work,
            "definitions": definitions,
            "offline_store": offline,
            "online_store": online,
            "clock": lambda: self.now,
        }
        self.materializer = Materializer(**common)
        self.runner = JobRunner(engine=self, lease_seconds=30, **common)

    @property
    def state(self):
        return self.memory.state

    def unit_of_work(self):
        return self.memory.unit_of_work()

    def run(self, task, *, offline_store, online_store, on_chunk):
        self.engine_calls.append(task)
        if self.fail_with:
            raise self.fail_with
        progress = Progress(rows_read=10, chunks_done=1)
        on_chunk(progress)
        return progress

    def timeline(self, store):
        return [
            (i.start, i.end, i.status)
            for i in self.state.timelines.get(("p", "clicks", 1, store), Timeline()).covering()
        ]

    def seed(self, store, *spans):
        timeline = Timeline()
        for start, end, status in spans:
            timeline = timeline.set(Window(start, end), status)
        self.state.timelines[("p", "clicks", 1, store)] = timeline


@pytest.fixture
def world():
    return World(online=False)


def test_the_issue_example_end_to_end(world):
    world.seed(Store.OFFLINE, (day(2), day(3), INC), (day(4), day(5), C))
    jobs = world.materializer.backfill(VIEW, day(2, 12), day(4, 12), [C, INC], [])
    assert [(j.window.start, j.window.end, j.stores) for j in jobs] == [
        (day(2, 12), day(3), (Store.OFFLINE,)),
        (day(4), day(4, 12), (Store.OFFLINE,)),
    ]
    assert world.timeline(Store.OFFLINE)[:2] == [
        (day(2), day(2, 12), INC),
        (day(2, 12), day(3), P),
    ]
    assert world.runner.run_pending() == 2
    assert world.timeline(Store.OFFLINE) == [
        (day(2), day(2, 12), INC),
        (day(2, 12), day(3), C),
        (day(3), day(4), N),
        (day(4), day(5), C),
    ]
    assert {j.state for j in world.state.jobs.values()} == {JobState.SUCCEEDED}
    assert sorted(world.cleared, key=lambda w: w.start) == [
        Window(day(2, 12), day(3)),
        Window(day(4), day(4, 12)),
    ]


def test_a_failed_job_leaves_its_window_incomplete_and_retry_finishes_it(world):
    [job] = world.materializer.backfill(VIEW, day(1), day(2), [], [])
    world.fail_with = OSError("disk full at /srv/recstack/offline/p/clicks")
    with capture_logs() as logs:
        world.runner.run_pending()
    failed = world.materializer.get_job(job.name)
    # The job says where to look, never what broke inside the service (paths, values).
    assert failed.state == JobState.FAILED
    assert failed.error_message.startswith("internal error in the materialization service")
    assert "/srv" not in failed.error_message and "OSError" not in failed.error_message
    [logged] = [entry for entry in logs if entry["event"] == "job_failed"]
    assert logged["reference"] in failed.error_message
    assert world.timeline(Store.OFFLINE) == [(day(1), day(2), INC)]
    world.fail_with = None
    retry = world.materializer.retry(job.name)
    assert (retry.trigger, retry.retry_of, retry.window) == (Trigger.RETRY, job.job_id, job.window)
    world.runner.run_pending()
    assert world.timeline(Store.OFFLINE) == [(day(1), day(2), C)]


def test_retry_is_refused_unless_the_whole_window_is_incomplete(world):
    [job] = world.materializer.backfill(VIEW, day(1), day(3), [], [])
    world.fail_with = OSError("boom")
    world.runner.run_pending()
    world.fail_with = None
    world.materializer.backfill(VIEW, day(2), day(3), [INC], [])
    world.runner.run_pending()
    with pytest.raises(FailedPrecondition, match=r"2026-04-02T04:00:00\+00:00.*COMPLETE"):
        world.materializer.retry(job.name)
    with pytest.raises(FailedPrecondition, match="SUCCEEDED"):
        [succeeded] = [
            j for j in world.materializer.list_jobs(VIEW, 0, "")[0] if j.job_id != job.job_id
        ]
        world.materializer.retry(succeeded.name)


def test_cancelling_a_queued_job_marks_its_window_incomplete(world):
    [job] = world.materializer.backfill(VIEW, day(1), day(2), [], [])
    assert world.materializer.cancel_job(job.name).state is JobState.CANCELLED
    assert world.timeline(Store.OFFLINE) == [(day(1), day(2), INC)]
    assert world.runner.run_pending() == 0
    with pytest.raises(FailedPrecondition):
        world.materializer.cancel_job(job.name)


def test_a_job_whose_runner_died_is_failed_never_complete(world):
    [job] = world.materializer.backfill(VIEW, day(1), day(2), [], [])
    with world.unit_of_work() as uow:
        uow.jobs.claim("dead-runner", world.now)
    world.now += timedelta(seconds=10)
    assert world.runner.reap() == 0
    world.now += timedelta(minutes=5)
    assert world.runner.reap() == 1
    dead = world.materializer.get_job(job.name)
    assert dead.state is JobState.FAILED and "dead-runner" in dead.error_message
    assert world.timeline(Store.OFFLINE) == [(day(1), day(2), INC)]
    world.materializer.retry(job.name)
    world.runner.run_pending()
    assert world.timeline(Store.OFFLINE) == [(day(1), day(2), C)]


def test_a_stopping_runner_ends_its_job_at_the_next_chunk_failed_and_incomplete(world):
    [job] = world.materializer.backfill(VIEW, day(1), day(2), [], [])
    chunks = []

    def run(task, *, offline_store, online_store, on_chunk):
        progress = Progress()
        for chunk in range(1, 6):
            progress.rows_read, progress.chunks_done = progress.rows_read + 10, chunk
            chunks.append(chunk)
            if chunk == 2:
                world.runner.stop(0)  # SIGTERM arrives while chunk 2 is being written
            if not on_chunk(progress):
                return progress
        return progress

    world.run = run
    assert world.runner.run_pending() == 1
    assert chunks == [1, 2]
    stopped = world.materializer.get_job(job.name)
    assert stopped.state is JobState.FAILED
    assert "shut down after 2 chunks" in stopped.error_message
    assert stopped.progress.rows_read == 20
    assert world.timeline(Store.OFFLINE) == [(day(1), day(2), INC)]
    assert world.materializer.retry(job.name).window == job.window


def test_stopped_watches_end_with_a_final_message(world):
    [queued] = world.materializer.backfill(VIEW, day(1), day(2), [], [])
    watch = world.materializer.watch_job(queued.name)
    assert next(watch).state is JobState.QUEUED
    world.materializer.stop_watches()
    # The job as it stands, again, then UNAVAILABLE: it has not ended, another replica may
    # run it and the caller should watch it there.
    assert next(watch).state is JobState.QUEUED
    with pytest.raises(Unavailable, match="shutting down") as caught:
        next(watch)
    assert caught.value.reason == "SHUTTING_DOWN"
    world.materializer.cancel_job(queued.name)
    # A job that has ended: its final state is the last message and the watch ends plainly.
    assert [job.state for job in world.materializer.watch_job(queued.name)] == [JobState.CANCELLED]


def test_backfill_needs_an_enabled_store_and_a_valid_window(world):
    with pytest.raises(FailedPrecondition, match="online materialization is disabled"):
        world.materializer.backfill(VIEW, day(1), day(2), [], [Store.ONLINE])
    with pytest.raises(InvalidArgument) as caught:
        world.materializer.backfill(VIEW, day(1), None, [], [])
    assert caught.value.field == "window"
    with pytest.raises(InvalidArgument):
        world.materializer.backfill("clicks", day(1), day(2), [], [])
    with pytest.raises(NotFound):
        world.materializer.get_job(f"{VIEW}/jobs/nope")


def test_online_enabled_after_offline_bootstraps_from_offline_data():
    world = World(online=False)
    world.materializer.backfill(VIEW, day(1), day(3), [], [])
    world.runner.run_pending()
    assert world.engine_calls[-1].source.path == "/src"
    world.materializer.update_settings(
        Settings("p", "clicks", offline_enabled=True, online_enabled=True), "", ["online_enabled"]
    )
    world.materializer.backfill(VIEW, day(1), day(3), [], [Store.ONLINE])
    world.runner.run_pending()
    bootstrap = world.engine_calls[-1]
    assert bootstrap.source.path == "/offline/p/clicks/v1"
    assert bootstrap.stores == (Store.ONLINE,)
    source_reads = [task for task in world.engine_calls if task.source.path == "/src"]
    assert len(source_reads) == 1


def test_disabling_a_store_resets_its_intervals_and_stops_serving(world):
    world.materializer.backfill(VIEW, day(1), day(2), [], [])
    world.runner.run_pending()
    world.materializer.update_settings(
        Settings("p", "clicks", offline_enabled=False), "", ["offline_enabled"]
    )
    assert world.timeline(Store.OFFLINE) == []
    assert world.dropped == ["offline"]


def test_schedules_catch_up_missed_runs_with_source_delay(world):
    hourly = Recurrence(Frequency.HOUR, 1, day(10, 0))
    world.materializer.update_settings(
        Settings(
            "p",
            "clicks",
            offline_enabled=True,
            recurrence=hourly,
            source_delay=timedelta(minutes=30),
        ),
        "",
        [],
    )
    world.now = day(10, 2) + timedelta(minutes=5)
    assert world.runner.fire_schedules() == 3
    windows = sorted((j.window.start, j.window.end) for j in world.state.jobs.values())
    assert windows[0] == (day(9, 22) + timedelta(minutes=30), day(9, 23) + timedelta(minutes=30))
    assert windows[-1] == (day(10, 0) + timedelta(minutes=30), day(10, 1) + timedelta(minutes=30))
    assert world.runner.fire_schedules() == 0
    world.now = day(10, 3)
    assert world.runner.fire_schedules() == 1


def test_incremental_publish_skips_keys_of_the_previous_partition():
    world = World(online=True)
    job = world.materializer.publish(VIEW, "2026-04-05", PublishMode.INCREMENTAL, True)
    assert job.window == Window(datetime(2026, 4, 5, tzinfo=UTC), datetime(2026, 4, 6, tzinfo=UTC))
    world.runner.run_pending()
    task = world.engine_calls[-1]
    assert task.source.path.endswith("ds=2026-04-05")
    assert task.exclude_keys_from.path.endswith("ds=2026-04-04")
    assert task.stores == (Store.ONLINE,)
    with pytest.raises(InvalidArgument):
        world.materializer.publish(VIEW, "April 5", PublishMode.MERGE, True)


def test_online_bootstrap_follows_the_offline_timeline_row_by_row():
    """The Azure document's online-bootstrap table, one assertion per row: online enabled
    after offline, the online store NONE everywhere, one online backfill over all four days."""
    world = World(online=True, offline=True)
    world.seed(Store.OFFLINE, (day(2), day(3), INC), (day(3), day(4), P), (day(4), day(5), C))
    jobs = world.materializer.backfill(VIEW, day(1), day(5), [], [Store.ONLINE])
    world.runner.run_pending()
    reads = {(t.window.start, t.window.end): t.source.path for t in world.engine_calls}
    # Rows 1-2, offline NONE and INCOMPLETE: computed from the source (one job, adjacent).
    assert reads[(day(1), day(3))] == "/src"
    # Row 3, offline PENDING: no job was submitted, the online store stays NONE there.
    assert not any(j.window.start < day(4) and j.window.end > day(3) for j in jobs)
    # Row 4, offline COMPLETE: copied from the offline store, the source is not read.
    assert reads[(day(4), day(5))] == "/offline/p/clicks/v1"
    assert len(jobs) == 2 and all(j.stores == (Store.ONLINE,) for j in jobs)
    assert world.timeline(Store.ONLINE) == [
        (day(1), day(3), C),
        (day(3), day(4), N),
        (day(4), day(5), C),
    ]


def test_a_schedule_that_cannot_compute_its_window_is_marked_failed_and_the_others_run():
    world = World(online=False, offline=True)
    daily = Recurrence(Frequency.DAY, 1, day(8, 0))
    # Stored before the 100-year bound existed: every window of it is before year 1.
    world.state.settings[("p", "clicks")] = Settings(
        "p", "clicks", offline_enabled=True, recurrence=daily, source_delay=timedelta(days=3652500)
    )
    world.state.settings[("p", "other")] = Settings(
        "p", "other", offline_enabled=True, recurrence=daily
    )
    world.runner.run_pending()
    failed = world.materializer.get_settings(VIEW)
    assert "outside years 1-9999" in failed.schedule_error
    assert failed.schedule_error_time == world.now
    others = [j for j in world.state.jobs.values() if j.feature_view == "other"]
    assert [j.state for j in others] == [JobState.SUCCEEDED] * 3
    assert not [j for j in world.state.jobs.values() if j.feature_view == "clicks"]
    # Skipped from then on, until an update clears it.
    world.now += timedelta(days=1)
    world.runner.run_pending()
    assert not [j for j in world.state.jobs.values() if j.feature_view == "clicks"]
    updated = world.materializer.update_settings(
        Settings("p", "clicks", offline_enabled=True, recurrence=daily), "", ["source_delay"]
    )
    assert updated.schedule_error == "" and updated.schedule_error_time is None
