"""gRPC edge of materialization: protobuf ↔ domain objects around the Materializer."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from recstack.common.v1 import time_window_pb2
from recstack.materialization.v1 import (
    data_interval_pb2,
    job_pb2,
    materialization_service_pb2_grpc,
    materialization_settings_pb2,
)
from recstack.materialization.v1 import materialization_service_pb2 as pb

from services.materialization.export import ExportRequest, TrainingSetExporter
from services.materialization.intervals import Interval, Status
from services.materialization.jobs import (
    Frequency,
    Job,
    PublishMode,
    Recurrence,
    Settings,
    Store,
    Window,
)
from services.materialization.materializer import Materializer, parse_view_name
from shared.errors import InvalidArgument

SETTINGS_SUFFIX = "/materializationSettings"


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _window_proto(window: Window) -> time_window_pb2.TimeWindow:
    return time_window_pb2.TimeWindow(
        start_time=_timestamp(window.start), end_time=_timestamp(window.end)
    )


def _store(value: int) -> Store:
    return Store(job_pb2.Store.Name(value).removeprefix("STORE_"))


def _store_proto(store: Store) -> int:
    return job_pb2.Store.Value(f"STORE_{store.value}")


def job_to_proto(job: Job) -> job_pb2.Job:
    return job_pb2.Job(
        name=job.name,
        feature_view_version=job.feature_view_version,
        window=_window_proto(job.window),
        stores=[_store_proto(store) for store in job.stores],
        state=job_pb2.Job.State.Value(f"STATE_{job.state.value}"),
        trigger=job_pb2.Job.Trigger.Value(f"TRIGGER_{job.trigger.value}"),
        # The domain counters and the message's fields share their names.
        progress=job_pb2.JobProgress(**dataclasses.asdict(job.progress)),
        error_message=job.error_message,
        retry_of=job.retry_of,
        create_time=_timestamp(job.create_time),
        start_time=_timestamp(job.start_time),
        end_time=_timestamp(job.end_time),
    )


def _interval_proto(
    interval: Interval, store: Store, parent: str
) -> data_interval_pb2.DataInterval:
    return data_interval_pb2.DataInterval(
        window=_window_proto(interval.window),
        store=_store_proto(store),
        status=data_interval_pb2.DataInterval.Status.Value(f"STATUS_{interval.status.value}"),
        job=f"{parent}/jobs/{interval.job_id}" if interval.job_id else "",
    )


def _settings_view(name: str, field: str) -> str:
    """The feature view name of a settings name."""
    if not name.endswith(SETTINGS_SUFFIX):
        raise InvalidArgument(
            field, "must be `projects/{project}/featureViews/{view}/materializationSettings`"
        )
    return name.removesuffix(SETTINGS_SUFFIX)


def _settings(message: materialization_settings_pb2.MaterializationSettings) -> Settings:
    project, view = parse_view_name(_settings_view(message.name, "settings.name"), "settings.name")
    recurrence = None
    if message.HasField("recurrence"):
        frequency = message.recurrence.frequency
        if frequency == materialization_settings_pb2.Recurrence.FREQUENCY_UNSPECIFIED:
            raise InvalidArgument("settings.recurrence.frequency", "must be MINUTE, HOUR or DAY")
        recurrence = Recurrence(
            Frequency(
                materialization_settings_pb2.Recurrence.Frequency.Name(frequency).removeprefix(
                    "FREQUENCY_"
                )
            ),
            message.recurrence.interval,
            _time(message.recurrence.start_time),
        )
    return Settings(
        project,
        view,
        offline_enabled=message.offline_enabled,
        online_enabled=message.online_enabled,
        recurrence=recurrence,
        source_delay=message.source_delay.ToTimedelta()
        if message.HasField("source_delay")
        else timedelta(0),
    )


def _settings_proto(settings: Settings) -> materialization_settings_pb2.MaterializationSettings:
    message = materialization_settings_pb2.MaterializationSettings(
        name=settings.name,
        offline_enabled=settings.offline_enabled,
        online_enabled=settings.online_enabled,
        etag=settings.etag,
        schedule_error=settings.schedule_error,
        schedule_error_time=_timestamp(settings.schedule_error_time),
    )
    message.source_delay.FromTimedelta(settings.source_delay)
    if settings.recurrence is not None:
        message.recurrence.frequency = materialization_settings_pb2.Recurrence.Frequency.Value(
            f"FREQUENCY_{settings.recurrence.frequency.value}"
        )
        message.recurrence.interval = settings.recurrence.interval
        message.recurrence.start_time.FromDatetime(settings.recurrence.start_time)
    return message


class MaterializationServicer(materialization_service_pb2_grpc.MaterializationServiceServicer):
    def __init__(self, materializer: Materializer, exporter: TrainingSetExporter) -> None:
        self._materializer = materializer
        self._exporter = exporter

    def Backfill(
        self, request: pb.BackfillRequest, context: grpc.ServicerContext
    ) -> pb.BackfillResponse:
        window = request.window
        jobs = self._materializer.backfill(
            request.feature_view,
            _time(window.start_time) if window.HasField("start_time") else None,
            _time(window.end_time) if window.HasField("end_time") else None,
            [
                Status(data_interval_pb2.DataInterval.Status.Name(s).removeprefix("STATUS_"))
                for s in request.statuses
                if s != data_interval_pb2.DataInterval.STATUS_UNSPECIFIED
            ],
            [_store(store) for store in request.stores if store != job_pb2.STORE_UNSPECIFIED],
        )
        return pb.BackfillResponse(jobs=[job_to_proto(job) for job in jobs])

    def RetryJob(
        self, request: pb.RetryJobRequest, context: grpc.ServicerContext
    ) -> pb.RetryJobResponse:
        return pb.RetryJobResponse(job=job_to_proto(self._materializer.retry(request.name)))

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=job_to_proto(self._materializer.get_job(request.name)))

    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        jobs, token = self._materializer.list_jobs(
            request.parent, request.page_size, request.page_token
        )
        return pb.ListJobsResponse(jobs=[job_to_proto(job) for job in jobs], next_page_token=token)

    def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.ServicerContext
    ) -> pb.CancelJobResponse:
        return pb.CancelJobResponse(job=job_to_proto(self._materializer.cancel_job(request.name)))

    def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchJobResponse]:
        for job in self._materializer.watch_job(request.name):
            yield pb.WatchJobResponse(job=job_to_proto(job))

    def ListDataIntervals(
        self, request: pb.ListDataIntervalsRequest, context: grpc.ServicerContext
    ) -> pb.ListDataIntervalsResponse:
        store = None if request.store == job_pb2.STORE_UNSPECIFIED else _store(request.store)
        window = None
        if request.HasField("window"):
            window = Window(_time(request.window.start_time), _time(request.window.end_time))
        intervals = self._materializer.list_intervals(
            request.feature_view, request.version, store, window
        )
        assert store is not None
        return pb.ListDataIntervalsResponse(
            data_intervals=[_interval_proto(i, store, request.feature_view) for i in intervals]
        )

    def GetMaterializationSettings(
        self, request: pb.GetMaterializationSettingsRequest, context: grpc.ServicerContext
    ) -> pb.GetMaterializationSettingsResponse:
        settings = self._materializer.get_settings(_settings_view(request.name, "name"))
        return pb.GetMaterializationSettingsResponse(settings=_settings_proto(settings))

    def UpdateMaterializationSettings(
        self, request: pb.UpdateMaterializationSettingsRequest, context: grpc.ServicerContext
    ) -> pb.UpdateMaterializationSettingsResponse:
        settings = self._materializer.update_settings(
            _settings(request.settings), request.settings.etag, list(request.update_mask.paths)
        )
        return pb.UpdateMaterializationSettingsResponse(settings=_settings_proto(settings))

    def PublishTable(
        self, request: pb.PublishTableRequest, context: grpc.ServicerContext
    ) -> pb.PublishTableResponse:
        mode = pb.PublishTableRequest.Mode.Name(request.mode).removeprefix("MODE_")
        job = self._materializer.publish(
            request.feature_view,
            request.partition,
            PublishMode.MERGE if mode == "UNSPECIFIED" else PublishMode(mode),
            request.transform,
        )
        return pb.PublishTableResponse(job=job_to_proto(job))

    def ExportTrainingSet(
        self, request: pb.ExportTrainingSetRequest, context: grpc.ServicerContext
    ) -> pb.ExportTrainingSetResponse:
        changes = None
        if request.HasField("changes_window"):
            window = request.changes_window
            changes = Window(_time(window.start_time), _time(window.end_time))
        result = self._exporter.export(
            ExportRequest(
                model_feature_set=request.model_feature_set,
                output_path=request.output_path,
                entity_parquet_path=request.entity_parquet_path,
                entity_table=request.entity_table,
                timestamp_column=request.timestamp_column,
                snapshot_time=_time(request.snapshot_time)
                if request.HasField("snapshot_time")
                else None,
                changes_window=changes,
            )
        )
        return pb.ExportTrainingSetResponse(
            output_path=result.output_path, row_count=result.row_count
        )
