"""The console's materialization page in a real browser (Debian's Chromium, headless), on
intervals and jobs built through the real services: the seed document's worked example."""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from recstack.common.v1 import value_pb2
from recstack.materialization.v1 import (
    data_interval_pb2,
    job_pb2,
    materialization_service_pb2_grpc,
)
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.registry.v1 import (
    data_source_pb2,
    embedding_model_pb2,
    entity_pb2,
    feature_view_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb

from infra.local.ports import free_port
from services.console.app import create_app
from services.console.clients import Clients
from services.console.timeline import STATUS_COLOURS
from tests.materialization import backfill, register_clicks, wait_job
from tests.openai_api import Reply
from tests.plugins.console import ConsoleServer, artifact, console_settings, sign_in

VT = value_pb2.ValueType
DI = data_interval_pb2.DataInterval
Job = job_pb2.Job


def day(d: int, hour: int = 4) -> datetime:
    return datetime(2023, 4, d, hour, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# The seed's five daily intervals, and the six after the backfill of [COMPLETE, INCOMPLETE]
# over [04-02T12:00, 04-04T12:00).
BEFORE = [
    (day(1), day(2), "NONE"),
    (day(2), day(3), "INCOMPLETE"),
    (day(3), day(4), "NONE"),
    (day(4), day(5), "COMPLETE"),
    (day(5), day(6), "NONE"),
]
AFTER = [
    (day(1), day(2), "NONE"),
    (day(2), day(2, 12), "INCOMPLETE"),
    (day(2, 12), day(3), "COMPLETE"),
    (day(3), day(4), "NONE"),
    (day(4), day(5), "COMPLETE"),
    (day(5), day(6), "NONE"),
]
EXPECTED_JOBS = [(day(2, 12), day(3)), (day(4), day(4, 12))]


@pytest.fixture(scope="module")
def stubs(registry_address, materialization_address, connect):
    return (
        registry_service_pb2_grpc.RegistryServiceStub(connect(registry_address)),
        materialization_service_pb2_grpc.MaterializationServiceStub(
            connect(materialization_address)
        ),
    )


def _write_source(path: Path, rows_per_day: int = 40) -> None:
    rng = np.random.default_rng(3)
    times = [
        day(d, 0) + timedelta(seconds=int(s))
        for d in range(1, 7)
        for s in rng.integers(0, 86400, rows_per_day)
    ]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(rng.integers(1, 30, len(times)), pa.int64()),
                "clicks": pa.array(rng.random(len(times))),
                "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )


def _windows(jobs) -> list[tuple[datetime, datetime]]:
    return sorted(
        (j.window.start_time.ToDatetime(tzinfo=UTC), j.window.end_time.ToDatetime(tzinfo=UTC))
        for j in jobs
    )


def _seed_view(stubs, tmp_path: Path) -> str:
    """The seed's five intervals: 04-02 INCOMPLETE (its job fails: the source is missing),
    04-04 COMPLETE, NONE around them."""
    registry, materialization = stubs
    source = tmp_path / "events.parquet"
    _write_source(source)
    view = register_clicks(registry, f"c_{uuid.uuid4().hex[:8]}", source)
    source.rename(tmp_path / "hidden.parquet")
    [failed] = backfill(materialization, view, day(2), day(3), [DI.STATUS_NONE])
    assert failed.state == Job.STATE_FAILED
    (tmp_path / "hidden.parquet").rename(source)
    [done] = backfill(materialization, view, day(4), day(5), [DI.STATUS_NONE])
    assert done.state == Job.STATE_SUCCEEDED
    return view


def _page_path(view: str) -> str:
    """The view's page over the seed's five days."""
    _, project, _, name = view.split("/")
    return f"/materialization/{project}/{name}?start={iso(day(1))}&end={iso(day(6))}"


def _shown_intervals(page) -> list[tuple[str, str, str]]:
    rows = page.locator("#timeline tr.interval[data-store=offline]")
    return [
        (
            row.get_attribute("data-start"),
            row.get_attribute("data-end"),
            row.get_attribute("data-status"),
        )
        for row in rows.all()
    ]


def _as_text(intervals) -> list[tuple[str, str, str]]:
    return [(iso(start), iso(end), status) for start, end, status in intervals]


def _chart_bars(page) -> list[dict]:
    """The chart's offline bars as drawn (SVG paths): label, fill colour and box."""
    page.wait_for_selector(".timeline-chart[data-ready='1']")
    return page.evaluate(
        """() => [...document.querySelectorAll('.timeline-chart .mark-rect path')]
            .map(p => ({label: p.getAttribute('aria-label') || '', fill: p.getAttribute('fill'),
                        box: p.getBoundingClientRect().toJSON()}))
            .filter(b => b.label.includes('offline'))"""
    )


def _pixel_colours(page, png: bytes, points: list[tuple[float, float]]) -> list[str]:
    """The screenshot's colour at each point, read back through a canvas in the page."""
    import base64

    return page.evaluate(
        """async ([data, points]) => {
            const image = new Image();
            image.src = 'data:image/png;base64,' + data;
            await image.decode();
            const canvas = document.createElement('canvas');
            canvas.width = image.width; canvas.height = image.height;
            const context = canvas.getContext('2d');
            context.drawImage(image, 0, 0);
            return points.map(([x, y]) => {
                const [r, g, b] = context.getImageData(Math.round(x), Math.round(y), 1, 1).data;
                return '#' + [r, g, b].map(v => v.toString(16).padStart(2, '0')).join('');
            });
        }""",
        [base64.b64encode(png).decode(), points],
    )


def test_the_seed_example_shows_six_intervals_in_their_colours_and_the_two_jobs(
    stubs, console_page, tmp_path
):
    _, materialization = stubs
    view = _seed_view(stubs, tmp_path)
    page = console_page
    page.goto(_page_path(view))
    assert _shown_intervals(page) == _as_text(BEFORE)

    jobs = backfill(
        materialization, view, day(2, 12), day(4, 12), [DI.STATUS_COMPLETE, DI.STATUS_INCOMPLETE]
    )
    assert _windows(jobs) == EXPECTED_JOBS
    page.goto(_page_path(view))
    assert _shown_intervals(page) == _as_text(AFTER)

    bars = _chart_bars(page)
    assert len(bars) == len(AFTER)
    drawn = sorted(bars, key=lambda bar: bar["box"]["x"])
    for bar, (start, end, status) in zip(drawn, AFTER, strict=True):
        assert bar["fill"].lower() == STATUS_COLOURS[status]
        assert f"offline {status} {iso(start)} to {iso(end)}" in bar["label"]
    # Left to right, each bar ends where the next begins: the chart has no gaps or overlaps.
    for left, right in itertools.pairwise(drawn):
        assert abs(left["box"]["x"] + left["box"]["width"] - right["box"]["x"]) < 2.5

    png = page.screenshot(path=str(artifact("materialization-seed-example.png")), full_page=True)
    centres = [
        (bar["box"]["x"] + bar["box"]["width"] / 2, bar["box"]["y"] + bar["box"]["height"] / 2)
        for bar in drawn
    ]
    assert _pixel_colours(page, png, centres) == [STATUS_COLOURS[s] for *_, s in AFTER]

    # Hovering a bar shows its exact bounds.
    page.mouse.move(*centres[2])
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible")
    assert iso(day(2, 12)) in tooltip.inner_text()
    assert iso(day(3)) in tooltip.inner_text()

    listed = page.locator("#jobs tr.job")
    rows = {
        (row.get_attribute("data-start"), row.get_attribute("data-end")): row.get_attribute(
            "data-state"
        )
        for row in listed.all()
    }
    for start, end in EXPECTED_JOBS:
        assert rows[(iso(start), iso(end))] == "SUCCEEDED"
    # The two seed jobs overlap the window too: the failed one offers a retry.
    assert rows[(iso(day(2)), iso(day(3)))] == "FAILED"
    assert page.locator("#jobs tr.job[data-state=FAILED] button.retry").count() == 1


def test_a_backfill_from_the_page_starts_the_jobs_the_api_would(stubs, console_page, tmp_path):
    _registry, materialization = stubs
    view = _seed_view(stubs, tmp_path)
    page = console_page
    page.goto(_page_path(view))
    form = page.locator("#backfill-form")
    form.locator("input[name=start]").fill("2023-04-02T12:00:00")
    form.locator("input[name=end]").fill("2023-04-04T12:00:00")
    form.locator("input[name=status][value=COMPLETE]").check()
    form.locator("input[name=status][value=INCOMPLETE]").check()
    page.evaluate("window.notReloaded = true")
    form.locator("button[type=submit]").click()
    page.locator("#action-result .done").wait_for()
    assert "Started 2 job(s)" in page.locator("#action-result").inner_text()

    started = [
        j
        for j in materialization.ListJobs(mpb.ListJobsRequest(parent=view)).jobs
        if j.trigger == Job.TRIGGER_BACKFILL and j.state != Job.STATE_FAILED
    ]
    assert _windows(started[:2]) == EXPECTED_JOBS
    for job in started[:2]:
        wait_job(materialization, job.name)
    # The timeline refreshes itself once the jobs end: the six intervals, without a reload.
    page.wait_for_function(
        "() => document.querySelectorAll('#timeline tr.interval[data-store=offline]').length === 6"
    )
    assert _shown_intervals(page) == _as_text(AFTER)
    assert page.evaluate("window.notReloaded") is True


EMBEDDING_ROWS = 3 * 4096  # three chunks: a view with embedded fields runs 4,096 rows a chunk


def _slow_embedding_view(registry, embedding_api, tmp_path: Path) -> str:
    """A view whose review texts are embedded by the session's OpenAI-compatible API, which
    answers slowly for the job's first requests: the job runs for seconds, chunk by chunk."""
    project = f"c_{uuid.uuid4().hex[:8]}"
    source = tmp_path / "reviews.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array(range(EMBEDDING_ROWS), pa.int64()),
                "review_text": pa.array([f"{project} review {i}" for i in range(EMBEDDING_ROWS)]),
                "ts": pa.array([day(5, 6)] * EMBEDDING_ROWS, pa.timestamp("us", tz="UTC")),
            }
        ),
        source,
    )
    model = embedding_model_pb2.EmbeddingModel(
        model_type=embedding_model_pb2.EmbeddingModel.MODEL_TYPE_TEXT_EMBEDDING,
        provider=embedding_model_pb2.EmbeddingModel.PROVIDER_OPENAI_COMPATIBLE,
        model_name="text-embedding-v4",
        dimension=8,
        batch_size=2048,
        concurrency=1,
        endpoint=f"{embedding_api.url}/bound",
        credential="test_api_key",
    )
    field = feature_view_pb2.FeatureField
    production = feature_view_pb2.FeatureProduction(
        transform=feature_view_pb2.FeatureProduction.TRANSFORM_LLM_EMBEDDING,
        input_field="review_text",
        embedding_model="reviewer",
    )
    registry.Apply(
        rpb.ApplyRequest(
            parent=f"projects/{project}",
            definitions=[
                rpb.Definition(
                    id="item",
                    entity=entity_pb2.Entity(join_key="item_id", key_type=VT.VALUE_TYPE_INT64),
                ),
                rpb.Definition(id="reviewer", embedding_model=model),
                rpb.Definition(
                    id="review_rows",
                    data_source=data_source_pb2.DataSource(
                        file=data_source_pb2.FileSource(
                            path=str(source), format=data_source_pb2.FileSource.FORMAT_PARQUET
                        ),
                        event_timestamp_column="ts",
                    ),
                ),
                rpb.Definition(
                    id="reviews",
                    feature_view=feature_view_pb2.FeatureView(
                        entity="item",
                        source="review_rows",
                        type=feature_view_pb2.FeatureView.TYPE_BATCH,
                        offline_enabled=True,
                        fields=[
                            field(name="item_id", value_type=VT.VALUE_TYPE_INT64),
                            field(name="review_text", value_type=VT.VALUE_TYPE_STRING),
                            field(
                                name="review_text_embedding",
                                value_type=VT.VALUE_TYPE_FLOAT_LIST,
                                production=production,
                            ),
                        ],
                    ),
                ),
            ],
        )
    )
    return f"projects/{project}/featureViews/reviews"


def test_a_running_jobs_progress_updates_without_a_reload(
    stubs, console_page, tmp_path, embedding_api
):
    registry, materialization = stubs
    view = _slow_embedding_view(registry, embedding_api, tmp_path)
    # Two requests a chunk, each answered after 0.8 s: about 1.6 s a chunk.
    embedding_api.script = [Reply(200, delay_s=0.8)] * 6
    console_page.goto(_page_path(view))
    try:
        _watch_progress(console_page, materialization, view)
    finally:
        embedding_api.script = []  # the API is the session's: leave it answering at once


def _watch_progress(page, materialization, view: str) -> None:
    page.evaluate("window.notReloaded = true")
    page.locator("#backfill-form input[name=start]").fill("2023-04-05T04:00:00")
    page.locator("#backfill-form input[name=end]").fill("2023-04-06T04:00:00")
    page.locator("#backfill-form button[type=submit]").click()
    page.locator("#action-result .done").wait_for()
    text = page.locator("#action-result").inner_text()
    job_id = re.search(r"Started 1 job\(s\): (\S+)", text)[1]
    # Every (state, rows read) the job's row shows, sampled in the page as htmx swaps the list.
    page.evaluate(
        f"""() => {{
            window.seen = [];
            setInterval(() => {{
                const row = document.querySelector("#jobs tr.job[data-job='{job_id}']");
                if (!row) return;
                const now = row.dataset.state + ' ' + row.querySelector('td.rows').dataset.rowsRead;
                if (window.seen.at(-1) !== now) window.seen.push(now);
            }}, 20);
        }}"""
    )
    # The sampler itself reaches the end: the job's row follows it to SUCCEEDED on its own.
    page.wait_for_function(
        "() => (window.seen.at(-1) || '').startsWith('SUCCEEDED')", timeout=90_000
    )
    final = wait_job(materialization, f"{view}/jobs/{job_id}")
    assert final.progress.rows_read == EMBEDDING_ROWS
    assert final.progress.chunks_done == 3
    seen = page.evaluate("window.seen")
    assert seen[-1] == f"SUCCEEDED {EMBEDDING_ROWS}"
    # The row moved through the job's chunks while it ran: some rows read, not yet all.
    running = [int(entry.split()[1]) for entry in seen if entry.startswith("RUNNING")]
    assert any(0 < rows < EMBEDDING_ROWS for rows in running), seen
    assert page.evaluate("window.notReloaded") is True


def test_a_bad_backfill_shows_the_apis_message(stubs, console_page, tmp_path):
    registry, _ = stubs
    source = tmp_path / "events.parquet"
    _write_source(source)
    view = register_clicks(registry, f"c_{uuid.uuid4().hex[:8]}", source)
    page = console_page
    page.goto(_page_path(view))
    page.locator("#backfill-form button[type=submit]").click()
    error = page.locator("#action-result .api-error")
    error.wait_for()
    text = error.inner_text()
    assert "INVALID_ARGUMENT" in text
    assert "window" in text


def test_a_service_down_is_named_on_the_page(
    browser, registry_address, serving_address, recommend_address, stack_security
):
    # A console whose materialization address has nothing listening: its pages say so.
    addresses = {
        "registry": registry_address,
        "materialization": f"127.0.0.1:{free_port()}",
        "serving": serving_address,
        "recommend": recommend_address,
    }
    settings = console_settings(addresses, stack_security)
    clients = Clients(settings.addresses(), settings.client)
    server = ConsoleServer(create_app(settings, clients), free_port())
    server.start()
    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        if stack_security.enabled:
            sign_in(page, stack_security.token)
        response = page.goto("/materialization/any_project/any_view")
        assert response.status == 503
        error = page.locator(".service-error")
        assert error.get_attribute("data-service") == "materialization"
        assert "The materialization service is unavailable" in error.inner_text()
    finally:
        context.close()
        server.stop()
        clients.close()


def test_retry_from_the_page_and_the_apis_refusal_when_the_window_changed(
    stubs, console_page, tmp_path
):
    _, materialization = stubs
    view = _seed_view(stubs, tmp_path)
    page = console_page
    page.goto(_page_path(view))
    failed = page.locator("#jobs tr.job[data-state=FAILED]")
    failed_id = failed.get_attribute("data-job")
    failed.locator("button.retry").click()
    page.locator("#action-result .done").wait_for()
    retry_id = re.search(r"Started (\S+)\.", page.locator("#action-result").inner_text())[1]
    retried = wait_job(materialization, f"{view}/jobs/{retry_id}")
    assert retried.retry_of.endswith(failed_id)
    assert retried.state == Job.STATE_SUCCEEDED
    page.wait_for_function(
        """() => [...document.querySelectorAll('#timeline tr.interval[data-store=offline]')]
            .some(r => r.dataset.start === '2023-04-02T04:00:00Z'
                       && r.dataset.status === 'COMPLETE')"""
    )
    assert (
        page.locator(f"#jobs tr.job[data-job='{retry_id}'] td")
        .nth(1)
        .inner_text()
        .startswith("RETRY")
    )

    # The failed job's window is COMPLETE now: a second retry is refused, as the API words it.
    page.locator(f"#jobs tr.job[data-job='{failed_id}'] button.retry").click()
    error = page.locator("#action-result .api-error")
    error.wait_for()
    assert "FAILED_PRECONDITION" in error.inner_text()
    with pytest.raises(grpc.RpcError) as caught:
        materialization.RetryJob(mpb.RetryJobRequest(name=f"{view}/jobs/{failed_id}"))
    assert caught.value.details() in error.inner_text()


def test_enabling_and_disabling_a_store_from_the_page(stubs, console_page, tmp_path):
    _, materialization = stubs
    view = _seed_view(stubs, tmp_path)
    page = console_page
    page.goto(_page_path(view))
    online = page.locator("#stores .store-state[data-store=online]")
    assert online.get_attribute("data-enabled") == "false"
    page.locator("#stores form:has(.store-state[data-store=online]) button").click()
    page.wait_for_selector("#stores .store-state[data-store=online][data-enabled=true]")
    name = f"{view}/materializationSettings"
    settings = materialization.GetMaterializationSettings(
        mpb.GetMaterializationSettingsRequest(name=name)
    ).settings
    assert settings.online_enabled and settings.offline_enabled

    # Disabling asks first (its intervals reset to NONE), then the offline timeline is NONE.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#stores form:has(.store-state[data-store=offline]) button").click()
    page.wait_for_selector("#stores .store-state[data-store=offline][data-enabled=false]")
    page.wait_for_function(
        """() => [...document.querySelectorAll('#timeline tr.interval[data-store=offline]')]
            .every(r => r.dataset.status === 'NONE')"""
    )


def test_a_post_without_the_csrf_token_is_refused(console_page, tmp_path, stubs):
    registry, _ = stubs
    source = tmp_path / "events.parquet"
    _write_source(source)
    view = register_clicks(registry, f"c_{uuid.uuid4().hex[:8]}", source)
    _, project, _, name = view.split("/")
    page = console_page
    page.goto(_page_path(view))
    # The page's own cookies, but no token: what a form on another site could send.
    response = page.request.post(
        f"/materialization/{project}/{name}/backfill",
        form={"start": "2023-04-01T00:00", "end": "2023-04-02T00:00", "status": "NONE"},
    )
    assert response.status == 403
    jobs = stubs[1].ListJobs(mpb.ListJobsRequest(parent=view)).jobs
    assert list(jobs) == []


def test_drag_zoom_and_pan_pick_the_window_shown(stubs, console_page, tmp_path):
    view = _seed_view(stubs, tmp_path)
    page = console_page
    page.goto(_page_path(view))
    page.evaluate("window.notReloaded = true")
    bars = sorted(_chart_bars(page), key=lambda bar: bar["box"]["x"])
    # Drag along the offline row from the middle of 04-02 to the middle of 04-04.
    y = bars[0]["box"]["y"] + bars[0]["box"]["height"] / 2
    start_x = bars[1]["box"]["x"] + bars[1]["box"]["width"] / 2
    end_x = bars[3]["box"]["x"] + bars[3]["box"]["width"] / 2
    page.mouse.move(start_x, y)
    page.mouse.down()
    page.mouse.move((start_x + end_x) / 2, y, steps=5)
    page.mouse.move(end_x, y, steps=5)
    page.mouse.up()
    page.wait_for_function(
        f"() => document.querySelector('#timeline').dataset.windowStart !== '{iso(day(1))}'"
    )
    timeline = page.locator("#timeline")
    picked_start = datetime.fromisoformat(timeline.get_attribute("data-window-start"))
    picked_end = datetime.fromisoformat(timeline.get_attribute("data-window-end"))
    assert abs(picked_start - day(2, 16)) < timedelta(hours=2)
    assert abs(picked_end - day(4, 16)) < timedelta(hours=2)
    assert "start=" in page.url and iso(picked_start) in page.url
    shown = _shown_intervals(page)
    assert [status for *_, status in shown] == ["INCOMPLETE", "NONE", "COMPLETE"]
    assert shown[0][0] == iso(picked_start)

    page.locator("#window-view a.zoom-out").click()
    page.wait_for_function(
        f"() => document.querySelector('#timeline').dataset.windowStart !== '{iso(picked_start)}'"
    )
    span = picked_end - picked_start
    assert timeline.get_attribute("data-window-start") == iso(picked_start - span / 2)
    before = timeline.get_attribute("data-window-start")
    page.locator("#window-view a.pan-left").click()
    page.wait_for_function(
        f"() => document.querySelector('#timeline').dataset.windowStart !== '{before}'"
    )
    assert timeline.get_attribute("data-window-start") == iso(picked_start - span * 3 / 2)
    assert page.evaluate("window.notReloaded") is True
