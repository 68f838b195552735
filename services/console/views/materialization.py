"""The materialization page: a feature view's data intervals of both stores over a window
(zoom, pan, drag to pick), the jobs overlapping it with live progress, and the actions
(backfill by status, retry, cancel, enable/disable a store), each one materialization call.

GETs are plain functions (Starlette runs them on its thread pool: the stubs block); POSTs
read the form, then call on the thread pool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import field_mask_pb2
from recstack.materialization.v1 import (
    data_interval_pb2,
    job_pb2,
    materialization_settings_pb2,
)
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.registry.v1 import registry_service_pb2 as rpb
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.console import timeline
from services.console.clients import MATERIALIZATION, REGISTRY, ServiceError
from services.console.timeline import Window
from services.console.views.common import BadInput, call, list_all, list_projects, render

DI = data_interval_pb2.DataInterval
STATUS_CHOICES = ("NONE", "INCOMPLETE", "COMPLETE")
STORE_CHOICES = {"offline": job_pb2.STORE_OFFLINE, "online": job_pb2.STORE_ONLINE}
# The jobs listed are the view's newest this many: enough for any window a person looks at.
JOBS_LIMIT = 1000
ZOOM = 2.0
PAN = 0.5


def routes() -> list[Route]:
    base = "/materialization/{project}/{view}"
    return [
        Route("/materialization", index),
        Route(base, view_page),
        Route(f"{base}/timeline", timeline_fragment),
        Route(f"{base}/jobs", jobs_fragment),
        Route(f"{base}/backfill", backfill, methods=["POST"]),
        Route(f"{base}/jobs/{{job}}/retry", retry, methods=["POST"]),
        Route(f"{base}/jobs/{{job}}/cancel", cancel, methods=["POST"]),
        Route(f"{base}/stores", stores_fragment, methods=["GET"]),
        Route(f"{base}/stores", set_store, methods=["POST"]),
    ]


def index(request: Request) -> Response:
    projects = list_projects(request)
    views = {
        project.name: list_all(
            request,
            REGISTRY,
            "ListFeatureViews",
            lambda token, p=project.name: rpb.ListFeatureViewsRequest(
                parent=p, page_size=1000, page_token=token
            ),
            "feature_views",
        )
        for project in projects
    }
    return render(request, "materialization_index.html", {"projects": projects, "views": views})


def view_page(request: Request) -> Response:
    project, view = _path(request)
    name = _view_name(project, view)
    try:
        window = _window(request.query_params, lambda: _default_window(request, name))
    except BadInput as problem:
        window, bad_window = _default_window(request, name), str(problem)
    else:
        bad_window = ""
    context = {
        **_window_context(request, project, view, window),
        "bad_window": bad_window,
        "settings": _settings(request, name),
    }
    template = "window_view.html" if request.headers.get("hx-target") else "materialization.html"
    return render(request, template, context)


def timeline_fragment(request: Request) -> Response:
    project, view = _path(request)
    window = _window(request.query_params, None)
    return render(request, "timeline.html", _timeline_context(request, project, view, window))


def jobs_fragment(request: Request) -> Response:
    project, view = _path(request)
    window = _window(request.query_params, None)
    return render(request, "jobs.html", _jobs_context(request, project, view, window))


def stores_fragment(request: Request) -> Response:
    project, view = _path(request)
    context = {
        "project": project,
        "view": view,
        "settings": _settings(request, _view_name(project, view)),
        "store_choices": list(STORE_CHOICES),
    }
    return render(request, "stores.html", context)


async def backfill(request: Request) -> Response:
    project, view = _path(request)
    form = await request.form()
    try:
        message = _backfill_request(_view_name(project, view), form)
    except BadInput as problem:
        return _result(request, error=str(problem))
    return await _act(request, "Backfill", message, _started)


async def retry(request: Request) -> Response:
    message = mpb.RetryJobRequest(name=_job_name(request))
    return await _act(request, "RetryJob", message, lambda r: f"Started {_short(r.job.name)}.")


async def cancel(request: Request) -> Response:
    message = mpb.CancelJobRequest(name=_job_name(request))
    return await _act(
        request, "CancelJob", message, lambda r: f"Cancel requested for {_short(r.job.name)}."
    )


async def set_store(request: Request) -> Response:
    project, view = _path(request)
    form = await request.form()
    store, enabled, etag = str(form.get("store", "")), form.get("enabled") == "true", ""
    if store not in STORE_CHOICES:
        return _result(request, error=f"store: {store!r} is not offline or online")
    etag = str(form.get("etag", ""))
    settings = materialization_settings_pb2.MaterializationSettings(
        name=f"{_view_name(project, view)}/materializationSettings", etag=etag
    )
    setattr(settings, f"{store}_enabled", enabled)
    message = mpb.UpdateMaterializationSettingsRequest(
        settings=settings, update_mask=field_mask_pb2.FieldMask(paths=[f"{store}_enabled"])
    )
    verb = "enabled" if enabled else "disabled"
    return await _act(
        request, "UpdateMaterializationSettings", message, lambda _: f"The {store} store {verb}."
    )


# --- helpers ---------------------------------------------------------------------------


async def _act(request: Request, method: str, message: Any, describe: Any) -> Response:
    """One materialization call; the result panel shows what it did or the API's refusal,
    and tells the timeline and the jobs to refresh."""
    try:
        response = await run_in_threadpool(call, request, MATERIALIZATION, method, message)
    except ServiceError as error:
        if error.unauthenticated or error.unreachable:
            raise
        return _result(request, error=f"{error.service} refused ({error.code_name}): {error}")
    result = _result(request, done=describe(response))
    result.headers["HX-Trigger"] = "refresh"
    return result


def _result(request: Request, *, done: str = "", error: str = "") -> Response:
    # 200 either way: htmx swaps the panel in, and the message is the answer.
    return render(request, "action_result.html", {"done": done, "error": error.strip()})


def _started(response: mpb.BackfillResponse) -> str:
    if not response.jobs:
        return "No interval matches: no job started."
    listed = ", ".join(
        f"{_short(job.name)} [{_ts(job.window.start_time)}, {_ts(job.window.end_time)})"
        for job in response.jobs
    )
    return f"Started {len(response.jobs)} job(s): {listed}."


def _backfill_request(name: str, form: FormData) -> mpb.BackfillRequest:
    statuses = [str(s) for s in form.getlist("status")]
    stores = [str(s) for s in form.getlist("store")]
    unknown = [s for s in statuses if s not in STATUS_CHOICES] + [
        s for s in stores if s not in STORE_CHOICES
    ]
    if unknown:
        raise BadInput(f"not a status or store: {', '.join(unknown)}")
    message = mpb.BackfillRequest(
        feature_view=name,
        statuses=[DI.Status.Value(f"STATUS_{s}") for s in statuses],
        stores=[STORE_CHOICES[s] for s in stores],
    )
    # Either bound may be left empty: the API then takes the materialized range's edge.
    start, end = _moment(form.get("start"), "start"), _moment(form.get("end"), "end")
    if start is not None:
        message.window.start_time.FromDatetime(start)
    if end is not None:
        message.window.end_time.FromDatetime(end)
    return message


def _window_context(request: Request, project: str, view: str, window: Window) -> dict[str, Any]:
    return {
        **_timeline_context(request, project, view, window),
        **_jobs_context(request, project, view, window),
        "zoom_in": window.zoomed(1 / ZOOM),
        "zoom_out": window.zoomed(ZOOM),
        "pan_left": window.panned(-PAN),
        "pan_right": window.panned(PAN),
        "status_choices": STATUS_CHOICES,
        "store_choices": list(STORE_CHOICES),
    }


def _timeline_context(request: Request, project: str, view: str, window: Window) -> dict[str, Any]:
    name = _view_name(project, view)
    intervals = [
        interval
        for store in STORE_CHOICES.values()
        for interval in timeline.intervals_of(_intervals(request, name, store, window))
    ]
    return {
        "project": project,
        "view": view,
        "window": window,
        "intervals": intervals,
        "spec": timeline.chart_spec(intervals, window),
        "pending": any(i.status == "PENDING" for i in intervals),
    }


def _jobs_context(request: Request, project: str, view: str, window: Window) -> dict[str, Any]:
    name = _view_name(project, view)
    jobs = list_all(
        request,
        MATERIALIZATION,
        "ListJobs",
        lambda token: mpb.ListJobsRequest(parent=name, page_size=JOBS_LIMIT, page_token=token),
        "jobs",
        limit=JOBS_LIMIT,
    )
    shown = timeline.overlapping_jobs(jobs, window)
    return {
        "project": project,
        "view": view,
        "window": window,
        "jobs": shown,
        "active": any(job.state in timeline.ACTIVE_STATES for job in shown),
        "active_states": timeline.ACTIVE_STATES,
        "retryable_states": timeline.RETRYABLE_STATES,
        "state_name": lambda state: job_pb2.Job.State.Name(state).removeprefix("STATE_"),
        "trigger_name": lambda t: job_pb2.Job.Trigger.Name(t).removeprefix("TRIGGER_"),
        "store_names": lambda stores: ", ".join(timeline.STORES.get(s, "?") for s in stores),
        "short": _short,
    }


def _intervals(request: Request, name: str, store: int, window: Window | None) -> list[Any]:
    message = mpb.ListDataIntervalsRequest(feature_view=name, store=store)
    if window is not None:
        message.window.start_time.FromDatetime(window.start)
        message.window.end_time.FromDatetime(window.end)
    return list(call(request, MATERIALIZATION, "ListDataIntervals", message).data_intervals)


def _settings(request: Request, name: str) -> materialization_settings_pb2.MaterializationSettings:
    message = mpb.GetMaterializationSettingsRequest(name=f"{name}/materializationSettings")
    return call(request, MATERIALIZATION, "GetMaterializationSettings", message).settings


def _default_window(request: Request, name: str) -> Window:
    known = [
        interval
        for store in STORE_CHOICES.values()
        for interval in timeline.intervals_of(_intervals(request, name, store, None))
    ]
    return timeline.default_window(known, datetime.now(UTC))


def _window(params: QueryParams, default: Any) -> Window:
    start, end = _moment(params.get("start"), "start"), _moment(params.get("end"), "end")
    if start is None or end is None:
        if default is None:
            raise BadInput("start and end are required")
        return default()
    try:
        return Window(start, end)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _moment(value: object, field: str) -> datetime | None:
    """A form's time (`2023-04-02T12:00`, seconds and `Z` optional) as UTC; None if empty."""
    text = str(value or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        raise BadInput(f"{field}: {text!r} is not a time like 2023-04-02T12:00") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _path(request: Request) -> tuple[str, str]:
    return request.path_params["project"], request.path_params["view"]


def _view_name(project: str, view: str) -> str:
    return f"projects/{project}/featureViews/{view}"


def _job_name(request: Request) -> str:
    project, view = _path(request)
    return f"{_view_name(project, view)}/jobs/{request.path_params['job']}"


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _ts(value: Any) -> str:
    return timeline.iso(timeline.to_utc(value))
