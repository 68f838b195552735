"""gRPC edge of materialization: protobuf ↔ domain jobs around `Materializer`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from recstack.common.v1 import time_window_pb2
from recstack.materialization.v1 import job_pb2, materialization_service_pb2_grpc
from recstack.materialization.v1 import materialization_service_pb2 as pb

from services.materialization.jobs import Job, Store, Window
from services.materialization.materializer import Materializer


def _window(message: time_window_pb2.TimeWindow, present: bool) -> Window | None:
    if not present:
        return None
    return Window(
        message.start_time.ToDatetime(tzinfo=UTC), message.end_time.ToDatetime(tzinfo=UTC)
    )


def _timestamp(moment: object) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)  # type: ignore[arg-type]
    return stamp


def job_to_proto(job: Job) -> job_pb2.Job:
    window = time_window_pb2.TimeWindow(
        start_time=_timestamp(job.window.start), end_time=_timestamp(job.window.end)
    )
    return job_pb2.Job(
        name=job.name,
        feature_view_version=job.feature_view_version,
        window=window,
        stores=[job_pb2.Store.Value(f"STORE_{store.value}") for store in job.stores],
        state=job_pb2.Job.State.Value(f"STATE_{job.state.value}"),
        trigger=job_pb2.Job.Trigger.Value(f"TRIGGER_{job.trigger.value}"),
        progress=job_pb2.JobProgress(
            rows_read=job.progress.rows_read,
            rows_written_offline=job.progress.rows_written_offline,
            rows_written_online=job.progress.rows_written_online,
            chunks_done=job.progress.chunks_done,
        ),
        error_message=job.error_message,
        retry_of=job.retry_of,
        create_time=_timestamp(job.create_time),
        start_time=_timestamp(job.start_time),
        end_time=_timestamp(job.end_time),
    )


class MaterializationServicer(materialization_service_pb2_grpc.MaterializationServiceServicer):
    def __init__(self, materializer: Materializer) -> None:
        self._materializer = materializer

    def Backfill(
        self, request: pb.BackfillRequest, context: grpc.ServicerContext
    ) -> pb.BackfillResponse:
        stores = [
            Store(job_pb2.Store.Name(store).removeprefix("STORE_")) for store in request.stores
        ]
        jobs = self._materializer.backfill(
            request.feature_view, _window(request.window, request.HasField("window")), stores
        )
        return pb.BackfillResponse(jobs=[job_to_proto(job) for job in jobs])

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
