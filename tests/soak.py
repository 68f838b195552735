"""`make soak`: mixed load on every service through failures, then a check of what survived.

    python -m tests.soak [--phase-seconds 60]

Everything runs on loopback and is started here: an embedded PostgreSQL of its own (never a
shared server), tritonserver on free ports, and the four services as processes, two
materialization replicas among them. Load threads call every service (registry writes and
reads, feature writes and reads, pushes whose text Triton embeds, backfills and job reads on
both replicas, scene writes and recommendations) while the phases go by:

  baseline · postgres_restart · triton_restart · replica_killed (kill -9 of one
  materialization replica) · drain (load stopped, every job ends) · retry (failed jobs retried)

Afterwards: every acknowledged write is still there (entities, feature rows at or past the
value acknowledged, pushed vectors, scenes, jobs), every job is SUCCEEDED or was retried to
SUCCEEDED, and every data interval agrees with its job's state. It prints each phase's calls
by operation and status code, and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recstack.common.v1 import time_window_pb2, value_pb2
from recstack.materialization.v1 import data_interval_pb2, job_pb2
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.materialization.v1 import materialization_service_pb2_grpc as mgrpc
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.recommend.v1 import recommend_service_pb2_grpc as cgrpc
from recstack.recommend.v1 import scene_pb2
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
)
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.registry.v1 import registry_service_pb2_grpc as rgrpc
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc as sgrpc

from infra.local.ports import free_port
from infra.local.postgres import temporary_embedded_server
from infra.local.tritonserver import DEFAULT_MODEL_REPOSITORY, TritonServer
from shared.channels import ClientSettings, open_channel
from shared.db import to_libpq

REPO = Path(__file__).resolve().parents[1]
VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
Field = feature_view_pb2.FeatureField
DI = data_interval_pb2.DataInterval
JOB = job_pb2.Job
PROJECT = "soak"
DAY0 = datetime(2026, 4, 1, tzinfo=UTC)
# Backfills ask for distinct windows of WINDOW_DAYS (a failed job's window stays INCOMPLETE
# until its retry), each a few seconds of chunks, so both replicas are mid-job most of the time.
SOURCE_DAYS = 1000
WINDOW_DAYS = 5
EVENTS_PER_DAY = 4_000
USERS = 400
ITEMS = 200
RANK_FEATURES = 8
CALL_TIMEOUT_S = 5.0
# Pauses between one load thread's calls: a steady load two shared cores can carry.
PAUSE_S = 0.05
DRAIN_TIMEOUT_S = 180.0
JOB_WORKERS = 2
DOWN_SECONDS = 5.0


# --- the stack ----------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        module = self.name.split("-")[0]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{module}.server"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_serving(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        with open_channel(self.address, ClientSettings(max_attempts=1)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited; see {self.log}")
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not SERVING after {timeout_s:.0f}s; see {self.log}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class Stack:
    work: Path
    database_url: str
    triton: TritonServer
    services: dict[str, Service] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return self.services[name].address


def _service_env(stack: Stack, ports: dict[str, int], name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONUNBUFFERED="1",
        RECSTACK_DATABASE_URL=stack.database_url,
        RECSTACK_GRPC_PORT=str(ports[name]),
        RECSTACK_RUN_DIR=str(stack.work / "run"),
        RECSTACK_OFFLINE_STORE_URI=str(stack.work / "offline"),
        RECSTACK_FILES__ROOTS=json.dumps({"*": [str(stack.work / "data")]}),
        RECSTACK_TRITON_ADDR=stack.triton.grpc_address,
        RECSTACK_REGISTRY_ADDR=f"127.0.0.1:{ports['registry']}",
        RECSTACK_SERVING_ADDR=f"127.0.0.1:{ports['serving']}",
        RECSTACK_MATERIALIZATION_ADDR=f"127.0.0.1:{ports['materialization-a']}",
        RECSTACK_LOG_LEVEL="WARNING",
        # Reaped soon after a kill -9, so the drain phase sees the dead replica's jobs end.
        RECSTACK_JOB_LEASE_SECONDS="5",
        RECSTACK_JOB_POLL_SECONDS="0.2",
        RECSTACK_JOB_CHUNK_ROWS="250",
        RECSTACK_JOB_WORKERS=str(JOB_WORKERS),
        RECSTACK_REGISTRY_CACHE_SECONDS="1",
    )
    return env


@contextmanager
def running_stack(work: Path) -> Iterator[tuple[Stack, Any]]:
    """The embedded PostgreSQL, Triton and the services; on exit the services stop first."""
    with temporary_embedded_server() as postgres, ExitStack() as stack_exit:
        url = postgres.start()
        triton = TritonServer(
            [DEFAULT_MODEL_REPOSITORY], models=["ranker", "minilm"], log_path=work / "triton.log"
        )
        triton.start()
        stack_exit.callback(triton.stop)
        triton.wait_ready(120)
        stack = Stack(work, url, triton)
        names = ["registry", "serving", "materialization-a", "materialization-b", "recommend"]
        ports = {name: free_port() for name in names}
        for name in names:
            service = Service(
                name, ports[name], _service_env(stack, ports, name), work / f"{name}.log"
            )
            stack.services[name] = service
            service.start()
            stack_exit.callback(service.stop)
            # Each after the ones it calls: the registry migrates first, and so on.
            service.wait_serving()
        yield stack, postgres


# --- the load -----------------------------------------------------------------------------


@dataclass
class Ledger:
    """What every call answered, per phase, and every write that was acknowledged."""

    phase: str = "setup"
    counts: dict[str, Counter[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    entities: list[str] = field(default_factory=list)
    feature_values: dict[int, int] = field(default_factory=dict)
    pushed: list[int] = field(default_factory=list)
    scenes: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    degraded: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, operation: str, send: Callable[[], Any]) -> Any:
        phase = self.phase
        try:
            answer = send()
            code = "OK"
        except grpc.RpcError as error:
            answer, code = None, error.code().name
        with self.lock:
            self.counts[phase][(operation, code)] += 1
        return answer


class Load:
    def __init__(self, stack: Stack, ledger: Ledger) -> None:
        self.ledger = ledger
        self.stop = threading.Event()
        settings = ClientSettings(max_attempts=1)
        self.channels = {
            name: open_channel(s.address, settings) for name, s in stack.services.items()
        }
        self.registry = rgrpc.RegistryServiceStub(self.channels["registry"])
        self.serving = sgrpc.FeatureServingServiceStub(self.channels["serving"])
        self.recommend = cgrpc.RecommendServiceStub(self.channels["recommend"])
        # A load balancer's view: the live replicas, each call to the next one.
        self.replicas = [
            mgrpc.MaterializationServiceStub(self.channels[name])
            for name in ("materialization-a", "materialization-b")
        ]
        self._next_day = iter(range(0, SOURCE_DAYS, WINDOW_DAYS))
        self._sequence = iter(range(1, 10**9))
        self._threads: list[threading.Thread] = []

    def replica(self) -> mgrpc.MaterializationServiceStub:
        return self.replicas[next(self._sequence) % len(self.replicas)]

    def start(self) -> None:
        for loop in (
            self.registry_load,
            self.feature_writes,
            self.feature_reads,
            self.embedding_pushes,
            self.backfills,
            self.job_reads,
            self.scene_writes,
            self.recommendations,
        ):
            thread = threading.Thread(target=self._repeat, args=(loop,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)
        for channel in self.channels.values():
            channel.close()

    def _repeat(self, step: Callable[[], None]) -> None:
        while not self.stop.is_set():
            step()
            self.stop.wait(PAUSE_S)

    # Each step is one call (or two), recorded in the ledger; acknowledged writes are kept.

    def registry_load(self) -> None:
        entity_id = f"e_{uuid.uuid4().hex[:10]}"
        request = rpb.CreateEntityRequest(
            parent=f"projects/{PROJECT}",
            entity_id=entity_id,
            entity=entity_pb2.Entity(join_key="k", key_type=VT.VALUE_TYPE_STRING),
        )
        if self.ledger.call(
            "registry.CreateEntity",
            lambda: self.registry.CreateEntity(request, timeout=CALL_TIMEOUT_S),
        ):
            with self.ledger.lock:
                self.ledger.entities.append(entity_id)
        listing = rpb.ListFeatureViewsRequest(parent=f"projects/{PROJECT}", page_size=10)
        self.ledger.call(
            "registry.ListFeatureViews",
            lambda: self.registry.ListFeatureViews(listing, timeout=CALL_TIMEOUT_S),
        )

    def feature_writes(self) -> None:
        sequence = next(self._sequence)
        item = sequence % ITEMS + 1
        row = _catalog_row(item, float(sequence))
        request = spb.WriteFeaturesRequest(project=PROJECT, feature_view="catalog", rows=[row])
        if self.ledger.call(
            "serving.WriteFeatures",
            lambda: self.serving.WriteFeatures(request, timeout=CALL_TIMEOUT_S),
        ):
            with self.ledger.lock:
                self.ledger.feature_values[item] = max(
                    self.ledger.feature_values.get(item, 0), sequence
                )

    def feature_reads(self) -> None:
        keys = [value_pb2.Value(int64_value=k) for k in range(1, 21)]
        request = spb.GetOnlineFeaturesRequest(
            project=PROJECT, features=["catalog:popularity", "catalog:x0"], entity_keys=keys
        )
        self.ledger.call(
            "serving.GetOnlineFeatures",
            lambda: self.serving.GetOnlineFeatures(request, timeout=CALL_TIMEOUT_S),
        )

    def embedding_pushes(self) -> None:
        key = next(self._sequence)
        row = spb.FeatureRow(
            values={
                "item_id": value_pb2.Value(int64_value=key),
                # A text never sent before: the embedding cache cannot answer, Triton must.
                "review_text": value_pb2.Value(string_value=f"review {key}: {uuid.uuid4().hex}"),
            }
        )
        row.event_time.GetCurrentTime()
        batch = spb.PushFeaturesRequest(project=PROJECT, feature_view="reviews", rows=[row])
        answer = self.ledger.call(
            "serving.PushFeatures(embedding)",
            lambda: self.serving.PushFeatures(iter([batch]), timeout=CALL_TIMEOUT_S),
        )
        if answer is not None and answer.rows_written == 1:
            with self.ledger.lock:
                self.ledger.pushed.append(key)
        self.stop.wait(0.5)

    def backfills(self) -> None:
        day = next(self._next_day, None)
        if day is None:
            return
        request = mpb.BackfillRequest(
            feature_view=f"projects/{PROJECT}/featureViews/clicks",
            window=_window(DAY0 + timedelta(days=day), DAY0 + timedelta(days=day + WINDOW_DAYS)),
        )
        replica = self.replica()
        answer = self.ledger.call(
            "materialization.Backfill", lambda: replica.Backfill(request, timeout=CALL_TIMEOUT_S)
        )
        if answer is not None:
            with self.ledger.lock:
                self.ledger.jobs += [job.name for job in answer.jobs]
        self.stop.wait(1.5)

    def job_reads(self) -> None:
        with self.ledger.lock:
            name = self.ledger.jobs[-1] if self.ledger.jobs else ""
        replica = self.replica()
        if name:
            self.ledger.call(
                "materialization.GetJob",
                lambda: replica.GetJob(mpb.GetJobRequest(name=name), timeout=CALL_TIMEOUT_S),
            )
        intervals = mpb.ListDataIntervalsRequest(
            feature_view=f"projects/{PROJECT}/featureViews/clicks", store=job_pb2.STORE_OFFLINE
        )
        self.ledger.call(
            "materialization.ListDataIntervals",
            lambda: replica.ListDataIntervals(intervals, timeout=CALL_TIMEOUT_S),
        )

    def scene_writes(self) -> None:
        scene_id = f"s_{uuid.uuid4().hex[:10]}"
        request = cpb.CreateSceneRequest(scene_id=scene_id, scene=_scene(with_rank=False))
        if self.ledger.call(
            "recommend.CreateScene",
            lambda: self.recommend.CreateScene(request, timeout=CALL_TIMEOUT_S),
        ):
            with self.ledger.lock:
                self.ledger.scenes.append(scene_id)
        self.stop.wait(0.5)

    def recommendations(self) -> None:
        user = next(self._sequence) % USERS + 1
        request = cpb.RecommendRequest(scene="home", user_id=str(user))
        answer = self.ledger.call(
            "recommend.Recommend", lambda: self.recommend.Recommend(request, timeout=CALL_TIMEOUT_S)
        )
        if answer is not None and answer.degraded:
            with self.ledger.lock:
                self.ledger.degraded[self.ledger.phase] += 1


def _window(start: datetime, end: datetime) -> time_window_pb2.TimeWindow:
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(end)
    return window


def _catalog_row(item: int, popularity: float) -> spb.FeatureRow:
    values = {
        "item_id": value_pb2.Value(int64_value=item),
        "popularity": value_pb2.Value(double_value=popularity),
        **{
            f"x{i}": value_pb2.Value(double_value=(item * (i + 1)) % 7 / 7)
            for i in range(RANK_FEATURES)
        },
    }
    row = spb.FeatureRow(values=values)
    row.event_time.GetCurrentTime()
    return row


def _scene(*, with_rank: bool) -> scene_pb2.Scene:
    scene = scene_pb2.Scene(
        project=PROJECT,
        user_entity="user",
        item_entity="item",
        recalls=[
            scene_pb2.StageConfig(
                type="popularity",
                quota=100,
                params=_struct(feature_view="catalog", feature="popularity"),
            )
        ],
        reranks=[scene_pb2.StageConfig(type="top_n")],
        top_n=10,
    )
    if with_rank:
        scene.rank.CopyFrom(
            scene_pb2.RankConfig(
                model_name="ranker",
                features=[f"catalog:x{i}" for i in range(RANK_FEATURES)],
                score_output="probs_ctr",
            )
        )
    return scene


def _struct(**values: Any) -> struct_pb2.Struct:
    found = struct_pb2.Struct()
    found.update(values)
    return found


# --- setup ---------------------------------------------------------------------------------


def write_source(path: Path) -> None:
    rng = np.random.default_rng(7)
    rows = SOURCE_DAYS * EVENTS_PER_DAY
    offsets = np.repeat(np.arange(SOURCE_DAYS), EVENTS_PER_DAY) * 86_400 + rng.integers(
        0, 86_400, rows
    )
    times = pa.array((DAY0.timestamp() + offsets) * 1_000_000, pa.int64()).cast(
        pa.timestamp("us", tz="UTC")
    )
    table = pa.table(
        {
            "user_id": pa.array(rng.integers(1, USERS + 1, rows), pa.int64()),
            "clicks": pa.array(rng.random(rows)),
            "ts": times,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def define(stack: Stack, source: Path) -> None:
    """The soak project: entities, push views for the catalog and reviews (embedded by
    minilm on Triton), a batch view over a Parquet file, and the `home` scene."""
    item_fields = [
        Field(name="item_id", value_type=VT.VALUE_TYPE_INT64),
        Field(name="popularity", value_type=VT.VALUE_TYPE_DOUBLE),
        *(Field(name=f"x{i}", value_type=VT.VALUE_TYPE_DOUBLE) for i in range(RANK_FEATURES)),
    ]
    review_fields = [
        Field(name="item_id", value_type=VT.VALUE_TYPE_INT64),
        Field(name="review_text", value_type=VT.VALUE_TYPE_STRING),
    ]
    production = feature_view_pb2.FeatureProduction(
        transform=feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING,
        input_field="review_text",
        embedding_model="minilm",
    )
    em = embedding_model_pb2.EmbeddingModel
    definitions = [
        rpb.Definition(
            id="user", entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64)
        ),
        rpb.Definition(
            id="item", entity=entity_pb2.Entity(join_key="item_id", key_type=VT.VALUE_TYPE_INT64)
        ),
        rpb.Definition(
            id="catalog_push",
            data_source=data_source_pb2.DataSource(
                push=data_source_pb2.PushSource(schema=item_fields)
            ),
        ),
        rpb.Definition(
            id="catalog",
            feature_view=FV(
                entity="item",
                source="catalog_push",
                type=FV.TYPE_REAL_TIME,
                online_enabled=True,
                fields=item_fields,
            ),
        ),
        rpb.Definition(
            id="minilm",
            embedding_model=em(
                model_type=em.MODEL_TYPE_TEXT_EMBEDDING,
                provider=em.PROVIDER_TRITON,
                model_name="minilm",
                dimension=384,
                max_input_tokens=256,
                batch_size=8,
                concurrency=1,
            ),
        ),
        rpb.Definition(
            id="review_push",
            data_source=data_source_pb2.DataSource(
                push=data_source_pb2.PushSource(schema=review_fields)
            ),
        ),
        rpb.Definition(
            id="reviews",
            feature_view=FV(
                entity="item",
                source="review_push",
                type=FV.TYPE_REAL_TIME,
                online_enabled=True,
                fields=[
                    *review_fields,
                    Field(
                        name="review_text_embedding",
                        value_type=VT.VALUE_TYPE_FLOAT_LIST,
                        production=production,
                    ),
                ],
            ),
        ),
        rpb.Definition(
            id="events",
            data_source=data_source_pb2.DataSource(
                file=data_source_pb2.FileSource(
                    path=str(source), format=data_source_pb2.FileSource.FORMAT_PARQUET
                ),
                event_timestamp_column="ts",
            ),
        ),
        rpb.Definition(
            id="clicks",
            feature_view=FV(
                entity="user",
                source="events",
                type=FV.TYPE_BATCH,
                offline_enabled=True,
                online_enabled=True,
                fields=[
                    Field(name="user_id", value_type=VT.VALUE_TYPE_INT64),
                    Field(name="clicks", value_type=VT.VALUE_TYPE_DOUBLE),
                ],
            ),
        ),
    ]
    with open_channel(stack.address("registry")) as channel:
        rgrpc.RegistryServiceStub(channel).Apply(
            rpb.ApplyRequest(parent=f"projects/{PROJECT}", definitions=definitions), timeout=30
        )
    with open_channel(stack.address("serving")) as channel:
        rows = [_catalog_row(item, 0.0) for item in range(1, ITEMS + 1)]
        sgrpc.FeatureServingServiceStub(channel).WriteFeatures(
            spb.WriteFeaturesRequest(project=PROJECT, feature_view="catalog", rows=rows), timeout=30
        )
    with open_channel(stack.address("recommend")) as channel:
        cgrpc.RecommendServiceStub(channel).CreateScene(
            cpb.CreateSceneRequest(scene_id="home", scene=_scene(with_rank=True)), timeout=30
        )


# --- the run -------------------------------------------------------------------------------


def run_phases(stack: Stack, postgres: Any, ledger: Ledger, load: Load, seconds: float) -> None:
    def phase(name: str) -> None:
        ledger.phase = name
        print(f"[{time.strftime('%H:%M:%S')}] phase {name}", flush=True)

    phase("baseline")
    time.sleep(seconds)
    phase("postgres_restart")
    postgres.stop()
    time.sleep(DOWN_SECONDS)
    postgres.start()
    time.sleep(seconds)
    phase("triton_restart")
    stack.triton.stop()
    time.sleep(DOWN_SECONDS)
    stack.triton.start()
    stack.triton.wait_ready(120)
    time.sleep(seconds)
    phase("replica_killed")
    _wait_until_both_replicas_run_jobs(stack.database_url)
    victim = stack.services["materialization-b"]
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    # The load balancer notices: later calls go to the live replica only.
    load.replicas = load.replicas[:1]
    time.sleep(seconds)
    phase("drain")
    load.finish()


def _wait_until_both_replicas_run_jobs(database_url: str, timeout_s: float = 30.0) -> None:
    """Jobs RUNNING under two runner ids: the victim is mid-job when it is killed."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(to_libpq(database_url), autocommit=True) as connection:
        while time.monotonic() < deadline:
            row = connection.execute(
                "SELECT count(DISTINCT runner_id) FROM materialization.jobs WHERE state = 'RUNNING'"
            ).fetchone()
            if row is not None and row[0] >= 2:
                return
            time.sleep(0.2)
    print("warning: no moment with both replicas mid-job; killing anyway", flush=True)


def drain_and_retry(stack: Stack, ledger: Ledger) -> dict[str, Any]:
    """Wait for every acknowledged job to end, retry the failed ones, and wait again."""
    with open_channel(
        stack.address("materialization-a"), ClientSettings(max_attempts=3)
    ) as channel:
        materialization = mgrpc.MaterializationServiceStub(channel)
        final = _wait_all(materialization, ledger.jobs)
        failed = [name for name, job in final.items() if job.state != JOB.STATE_SUCCEEDED]
        ledger.phase = "retry"
        retries = {}
        for name in failed:
            retry = ledger.call(
                "materialization.RetryJob",
                lambda name=name: materialization.RetryJob(
                    mpb.RetryJobRequest(name=name), timeout=CALL_TIMEOUT_S
                ),
            )
            if retry is not None:
                retries[name] = retry.job.name
        retried = _wait_all(materialization, list(retries.values()))
        intervals = {
            store: list(
                materialization.ListDataIntervals(
                    mpb.ListDataIntervalsRequest(
                        feature_view=f"projects/{PROJECT}/featureViews/clicks", store=store
                    ),
                    timeout=30,
                ).data_intervals
            )
            for store in (job_pb2.STORE_OFFLINE, job_pb2.STORE_ONLINE)
        }
    return {
        "final": final,
        "failed": failed,
        "retries": retries,
        "retried": retried,
        "intervals": intervals,
    }


def _wait_all(
    materialization: mgrpc.MaterializationServiceStub, names: list[str]
) -> dict[str, Any]:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    jobs: dict[str, Any] = {}
    pending = list(names)
    while pending and time.monotonic() < deadline:
        still = []
        for name in pending:
            job = materialization.GetJob(mpb.GetJobRequest(name=name), timeout=10).job
            jobs[name] = job
            if job.state in (JOB.STATE_QUEUED, JOB.STATE_RUNNING):
                still.append(name)
        pending = still
        if pending:
            time.sleep(1.0)
    return jobs


def verify(stack: Stack, ledger: Ledger, outcome: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    settings = ClientSettings(max_attempts=3)
    with open_channel(stack.address("registry"), settings) as channel:
        registry = rgrpc.RegistryServiceStub(channel)
        for entity_id in ledger.entities:
            try:
                registry.GetEntity(
                    rpb.GetEntityRequest(name=f"projects/{PROJECT}/entities/{entity_id}"),
                    timeout=10,
                )
            except grpc.RpcError as error:
                problems.append(f"acknowledged entity {entity_id}: {error.code().name}")
    with open_channel(stack.address("serving"), settings) as channel:
        serving = sgrpc.FeatureServingServiceStub(channel)
        items = sorted(ledger.feature_values)
        response = serving.GetOnlineFeatures(
            spb.GetOnlineFeaturesRequest(
                project=PROJECT,
                features=["catalog:popularity"],
                entity_keys=[value_pb2.Value(int64_value=k) for k in items],
            ),
            timeout=30,
        )
        for item, value in zip(items, response.columns[0].values, strict=True):
            acknowledged = ledger.feature_values[item]
            if value.double_value < acknowledged:
                problems.append(f"item {item}: {value.double_value} < acknowledged {acknowledged}")
        for start in range(0, len(ledger.pushed), 200):
            keys = ledger.pushed[start : start + 200]
            response = serving.GetOnlineFeatures(
                spb.GetOnlineFeaturesRequest(
                    project=PROJECT,
                    features=["reviews:review_text_embedding"],
                    entity_keys=[value_pb2.Value(int64_value=k) for k in keys],
                ),
                timeout=30,
            )
            column = response.columns[0]
            for key, value, status in zip(keys, column.values, column.statuses, strict=True):
                if (
                    status != spb.FEATURE_STATUS_PRESENT
                    or len(value.float_list_value.values) != 384
                ):
                    problems.append(f"acknowledged push of item {key}: no 384-d vector")
    with open_channel(stack.address("recommend"), settings) as channel:
        recommend = cgrpc.RecommendServiceStub(channel)
        for scene_id in ledger.scenes:
            try:
                recommend.GetScene(cpb.GetSceneRequest(name=f"scenes/{scene_id}"), timeout=10)
            except grpc.RpcError as error:
                problems.append(f"acknowledged scene {scene_id}: {error.code().name}")
    problems += _check_jobs(ledger, outcome)
    return problems


def _check_jobs(ledger: Ledger, outcome: dict[str, Any]) -> list[str]:
    problems = []
    final, retries, retried = outcome["final"], outcome["retries"], outcome["retried"]
    missing = [name for name in ledger.jobs if name not in final]
    problems += [f"acknowledged job {name} not found" for name in missing]
    states: dict[str, int] = {}
    for name, job in final.items():
        states[name] = job.state
        if job.state in (JOB.STATE_QUEUED, JOB.STATE_RUNNING):
            problems.append(f"{name} still {JOB.State.Name(job.state)} after the drain")
        elif job.state != JOB.STATE_SUCCEEDED:
            retry = retried.get(retries.get(name, ""))
            if retry is None or retry.state != JOB.STATE_SUCCEEDED:
                problems.append(
                    f"{name} ended {JOB.State.Name(job.state)} and its retry did not succeed"
                )
    for name, job in retried.items():
        states[name] = job.state
    for store, intervals in outcome["intervals"].items():
        for interval in intervals:
            state = states.get(interval.job)
            expected = {
                DI.STATUS_COMPLETE: {JOB.STATE_SUCCEEDED},
                DI.STATUS_INCOMPLETE: {JOB.STATE_FAILED, JOB.STATE_CANCELLED},
            }.get(interval.status)
            if interval.status == DI.STATUS_PENDING or (
                expected is not None and state not in expected
            ):
                start = interval.window.start_time.ToJsonString()
                problems.append(
                    f"{job_pb2.Store.Name(store)} interval from {start} is "
                    f"{DI.Status.Name(interval.status)}, its job {interval.job} "
                    f"{JOB.State.Name(state or 0)}"
                )
    return problems


def report(ledger: Ledger, outcome: dict[str, Any], problems: list[str]) -> None:
    print("\ncalls per phase (operation: status counts)")
    for phase, counts in ledger.counts.items():
        total = sum(counts.values())
        errors = sum(n for (_, code), n in counts.items() if code != "OK")
        degraded = ledger.degraded[phase]
        print(f"  {phase}: {total} calls, {errors} errors; {degraded} degraded recommendations")
        operations = sorted({operation for operation, _ in counts})
        for operation in operations:
            codes = {code: n for (op, code), n in counts.items() if op == operation}
            text = ", ".join(f"{code} {n}" for code, n in sorted(codes.items()))
            print(f"    {operation:<36} {text}")
    final = outcome["final"]
    by_state = Counter(JOB.State.Name(job.state) for job in final.values())
    # The reaper's message: "the materialization service running it (runner …) stopped".
    reaped = sum(1 for job in final.values() if "stopped" in job.error_message)
    retried_ok = sum(1 for j in outcome["retried"].values() if j.state == JOB.STATE_SUCCEEDED)
    print(
        f"\njobs: {len(ledger.jobs)} acknowledged, ended {dict(by_state)}; {reaped} reaped "
        f"after the kill; {len(outcome['retries'])} retried, {retried_ok} of them SUCCEEDED"
    )
    print(
        f"acknowledged writes checked: {len(ledger.entities)} entities, "
        f"{len(ledger.feature_values)} feature keys, {len(ledger.pushed)} embedded pushes, "
        f"{len(ledger.scenes)} scenes"
    )
    if problems:
        print(f"\nFAILED: {len(problems)} problems")
        for problem in problems[:50]:
            print(f"  {problem}")
    else:
        print(
            "\nOK: no acknowledged write is missing; every job SUCCEEDED or was retried to "
            "SUCCEEDED; every interval agrees with its job"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--phase-seconds", type=float, default=60.0, help="load time of each phase (default 60)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="recstack-soak-") as directory:
        work = Path(directory)
        source = work / "data" / "events.parquet"
        write_source(source)
        with running_stack(work) as (stack, postgres):
            print(f"stack up in {time.monotonic() - started:.0f}s (logs in {work})", flush=True)
            define(stack, source)
            ledger = Ledger()
            load = Load(stack, ledger)
            load.start()
            run_phases(stack, postgres, ledger, load, args.phase_seconds)
            outcome = drain_and_retry(stack, ledger)
            problems = verify(stack, ledger, outcome)
            report(ledger, outcome, problems)
            if problems:
                for name in stack.services:
                    tail = (work / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
                    print(f"--- {name}.log\n" + "\n".join(tail))
    print(f"soak took {time.monotonic() - started:.0f}s")
    return 1 if problems else 0


# This process forks pg_ctl and tritonserver while its gRPC threads run: with gRPC's fork
# handlers on, a child can abort in them before it execs ("Check failed ... KICKED").
FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"

if __name__ == "__main__":
    if os.environ.get(FORK_SUPPORT) != "false":
        # The setting is read when grpc is imported: start again with it in place.
        os.execve(
            sys.executable,
            [sys.executable, "-m", "tests.soak", *sys.argv[1:]],
            {**os.environ, FORK_SUPPORT: "false"},
        )
    raise SystemExit(main())
