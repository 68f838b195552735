"""Materialization's repositories (jobs, data intervals, settings) in memory.

`InMemoryMaterialization.unit_of_work` works on a copy of the state and keeps it only when
its block succeeds, as the PostgreSQL unit of work commits or rolls back.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from services.materialization.intervals import Timeline
from services.materialization.jobs import Job, JobState, Settings, Store


@dataclass
class State:
    jobs: dict[str, Job] = field(default_factory=dict)
    timelines: dict[tuple[str, str, int, Store], Timeline] = field(default_factory=dict)
    settings: dict[tuple[str, str], Settings] = field(default_factory=dict)


class Jobs:
    def __init__(self, state: State) -> None:
        self.s = state

    def insert(self, job: Job) -> None:
        self.s.jobs[job.job_id] = copy.deepcopy(job)

    def save(self, job: Job) -> None:
        if job.job_id in self.s.jobs:
            self.s.jobs[job.job_id] = copy.deepcopy(job)

    def get(self, project: str, view: str, job_id: str) -> Job | None:
        job = self.s.jobs.get(job_id)
        if job is None or (job.project, job.feature_view) != (project, view):
            return None
        return copy.deepcopy(job)

    def list(self, project: str, view: str, offset: int, limit: int) -> list[Job]:
        mine = [j for j in self.s.jobs.values() if (j.project, j.feature_view) == (project, view)]
        # Newest first, ties by id, as the real repository orders them.
        mine.sort(key=lambda j: j.job_id)
        mine.sort(key=lambda j: j.create_time, reverse=True)
        return [copy.deepcopy(job) for job in mine[offset : offset + limit]]

    def claim(self, runner_id: str, now: datetime) -> Job | None:
        queued = [j for j in self.s.jobs.values() if j.state is JobState.QUEUED]
        if not queued:
            return None
        job = min(queued, key=lambda j: (j.create_time, j.job_id))
        job.state, job.runner_id, job.start_time, job.heartbeat_time = (
            JobState.RUNNING,
            runner_id,
            now,
            now,
        )
        return copy.deepcopy(job)

    def stale(self, before: datetime) -> list[Job]:
        return [
            copy.deepcopy(j)
            for j in self.s.jobs.values()
            if j.state is JobState.RUNNING
            and j.heartbeat_time is not None
            and j.heartbeat_time < before
        ]


class Intervals:
    def __init__(self, state: State) -> None:
        self.s = state

    def lock(self, project: str, view: str, version: int) -> None:
        """One unit of work at a time here: nothing to serialise."""

    def load(self, project: str, view: str, version: int, store: Store) -> Timeline:
        return self.s.timelines.get((project, view, version, store), Timeline())

    def save(self, project: str, view: str, version: int, store: Store, timeline: Timeline) -> None:
        self.s.timelines[(project, view, version, store)] = timeline


class SettingsRepo:
    def __init__(self, state: State) -> None:
        self.s = state

    def get(self, project: str, view: str) -> Settings | None:
        return copy.deepcopy(self.s.settings.get((project, view)))

    def save(self, settings: Settings) -> None:
        self.s.settings[(settings.project, settings.feature_view)] = copy.deepcopy(settings)

    def due(self, now: datetime) -> list[Settings]:
        return [
            copy.deepcopy(s)
            for s in self.s.settings.values()
            if s.recurrence and s.recurrence.start_time <= now and not s.schedule_error
        ]


class InMemoryMaterialization:
    """The state, and the unit-of-work factory the Materializer and the JobRunner take."""

    def __init__(self) -> None:
        self.state = State()

    @contextmanager
    def unit_of_work(self) -> Iterator[Any]:
        working = copy.deepcopy(self.state)
        yield SimpleNamespace(
            jobs=Jobs(working), intervals=Intervals(working), settings=SettingsRepo(working)
        )
        self.state = working
