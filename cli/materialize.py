"""`recstack materialize`: backfills, jobs, data intervals, schedules, publishing and export.

The commands talk to the materialization service, found through --materialization or
RECSTACK_MATERIALIZATION_ADDR; credentials, TLS and the deadline are the registry commands'
settings, so one environment serves both groups.
"""

from __future__ import annotations

import argparse
import itertools
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic_settings import BaseSettings, SettingsConfigDict
from recstack.common.v1 import time_window_pb2
from recstack.materialization.v1 import (
    data_interval_pb2,
    job_pb2,
    materialization_service_pb2_grpc,
    materialization_settings_pb2,
)
from recstack.materialization.v1 import materialization_service_pb2 as pb

from cli import resources
from cli.connection import Connection, Context, Service
from cli.errors import CliError, UsageError
from cli.friendly import (
    UNITS,
    FieldError,
    enum_name,
    parse_duration,
    short_enum,
)
from cli.output import JSON, table, to_json

Job = job_pb2.Job
DataInterval = data_interval_pb2.DataInterval
Settings = materialization_settings_pb2.MaterializationSettings
STATE = Job.State.DESCRIPTOR
TRIGGER = Job.Trigger.DESCRIPTOR
STORE = job_pb2.Store.DESCRIPTOR
STATUS = DataInterval.Status.DESCRIPTOR
MODE = pb.PublishTableRequest.Mode.DESCRIPTOR
FREQUENCY = materialization_settings_pb2.Recurrence.Frequency.DESCRIPTOR
ENDED = frozenset({Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED})

JOB_NAME_SHAPE = "projects/PROJECT/featureViews/VIEW/jobs/JOB_ID"
SETTINGS_SUFFIX = "/materializationSettings"
DEFAULT_JOB_LIMIT = 50  # the service's default page size
MAX_PAGE_SIZE = 1000  # the service's documented maximum
BAR_WIDTH = 60
GLYPHS = {
    DataInterval.STATUS_COMPLETE: "█",
    DataInterval.STATUS_INCOMPLETE: "▒",
    DataInterval.STATUS_PENDING: "…",
    DataInterval.STATUS_NONE: "·",
}
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
# Without a terminal (CI logs, pipes) progress is a line per state change, plus one this often
# while a long job runs, so a log shows it is alive without a line per chunk.
PLAIN_PROGRESS_SECONDS = 10.0
ERROR_WIDTH = 60
PARTITION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# `--from` defaults to now rounded down to the unit: an unset start is the epoch, from which
# the scheduler would catch up decades of missed runs.
FLOOR = {
    "minute": {"second": 0, "microsecond": 0},
    "hour": {"minute": 0, "second": 0, "microsecond": 0},
    "day": {"hour": 0, "minute": 0, "second": 0, "microsecond": 0},
}
EPILOG = """\
examples:
  recstack materialize backfill shop/clicks --start 2026-04-01 --end 2026-04-08 --wait
  recstack materialize backfill shop/clicks --status incomplete --store online
  recstack materialize jobs shop/clicks --limit 10
  recstack materialize watch shop/clicks/3f2a9c1d2e3f4a5b
  recstack materialize intervals shop/clicks --store offline
  recstack materialize settings shop/clicks --online on --every 1 --unit hour --source-delay 30m
  recstack materialize publish shop/item_text --partition 2026-04-02 --mode incremental --wait
  recstack materialize export shop/ranker --entities labels.parquet --output-path train.parquet

times are ISO-8601 dates or date-times (2026-04-02, 2026-04-02T04:00, 2026-04-02T04:00+02:00);
without a zone they are UTC. Durations: 30m, 2h, 1d, 1h30m.

environment:
  RECSTACK_MATERIALIZATION_ADDR  service address (default 127.0.0.1:50052); --materialization
                                 overrides it
  RECSTACK_AUTH_TOKEN, RECSTACK_TLS_CA_FILE, RECSTACK_TIMEOUT_SECONDS, RECSTACK_DEBUG
                                 as for the registry commands (see `recstack --help`); watching
                                 and export have no deadline unless a timeout is set

exit status: 0 success, 1 a failed call or a job that did not succeed, 2 usage error
"""


# --- connection ------------------------------------------------------------------------------


class ServiceAddress(BaseSettings):
    """Where the materialization service listens; the flag overrides the environment."""

    model_config = SettingsConfigDict(env_prefix="RECSTACK_", extra="forbid")

    materialization_addr: str = "127.0.0.1:50052"


MATERIALIZATION = Service(
    "materialization service",
    "--materialization",
    "RECSTACK_MATERIALIZATION_ADDR",
    materialization_service_pb2_grpc.MaterializationServiceStub,
)


def connect(args: argparse.Namespace, context: Context) -> Connection:
    address = args.materialization or ServiceAddress().materialization_addr
    return Connection(context.settings, address, MATERIALIZATION, tls=context.tls)


# --- argument types --------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """An ISO-8601 date or date-time in UTC: a naive time is UTC, a date its midnight UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time; write e.g. 2026-04-02, 2026-04-02T04:00 "
            "or 2026-04-02T04:00+02:00"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_delay(text: str) -> timedelta:
    """A non-negative duration such as `30m`, `2h`, `1d` or `1h30m`."""
    try:
        seconds = parse_duration(text)
    except FieldError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write e.g. 30m, 2h or 1d"
        ) from None
    if seconds.startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    duration = Duration()
    duration.FromJsonString(seconds)
    return duration.ToTimedelta()


def parse_partition(text: str) -> str:
    try:
        if PARTITION.match(text):
            datetime.strptime(text, "%Y-%m-%d")
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a YYYY-MM-DD partition")


def whole_number(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    return parse


def words(enum: EnumDescriptor) -> list[str]:
    """The command-line spellings of an enum: short lower-case names, e.g. `offline`."""
    return [short_enum(value.name, enum).lower() for value in enum.values if value.number != 0]


def enum_number(enum: EnumDescriptor, word: str) -> int:
    return enum.values_by_name[enum_name(word, enum)].number


def enum_word(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    return short_enum(value.name, enum) if value else str(number)


def view_name(reference: str, project: str | None) -> str:
    return resources.parse_reference(resources.FEATURE_VIEW, reference, project)


def job_name(reference: str) -> str:
    """A job's resource name, from itself or from `PROJECT/VIEW/JOB_ID`."""
    parts = reference.split("/")
    if all(parts) and reference.startswith("projects/"):
        if len(parts) == 6 and parts[2] == "featureViews" and parts[4] == "jobs":
            return reference
    elif all(parts) and len(parts) == 3:
        return f"projects/{parts[0]}/featureViews/{parts[1]}/jobs/{parts[2]}"
    raise UsageError(f"give the job as PROJECT/VIEW/JOB_ID or {JOB_NAME_SHAPE}, not {reference!r}")


def _window(start: datetime, end: datetime) -> time_window_pb2.TimeWindow:
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(end)
    return window


def _check_order(start: datetime | None, end: datetime | None, first: str, second: str) -> None:
    if start is not None and end is not None and end <= start:
        raise UsageError(f"{second} must be after {first}")


def _absolute(path: str) -> str:
    # The service opens the path itself, from its own working directory.
    return str(Path(path).expanduser().absolute())


# --- display ---------------------------------------------------------------------------------


def format_time(stamp: Timestamp | datetime) -> str:
    """UTC, ISO-8601 and as short as exact: `2026-04-02T04:00Z`; parse_time reads it back."""
    moment = stamp.ToDatetime(tzinfo=UTC) if isinstance(stamp, Timestamp) else stamp
    moment = moment.astimezone(UTC)
    spec = "minutes" if not (moment.second or moment.microsecond) else "auto"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def format_window(window: time_window_pb2.TimeWindow) -> str:
    return f"[{format_time(window.start_time)}, {format_time(window.end_time)})"


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def format_length(micros: int) -> str:
    """A duration in the units `--source-delay` takes, largest first: `1d18h`, `90m` → `1h30m`."""
    whole, fraction = divmod(micros, 1_000_000)
    parts = []
    for unit, size in UNITS:
        count, whole = divmod(whole, size)
        if unit == "s" and fraction:
            parts.append(f"{count + fraction / 1_000_000:g}s")
        elif count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def job_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _stores(job: Job) -> str:
    return ",".join(enum_word(STORE, store).lower() for store in job.stores)


def _one_line(text: str, width: int = ERROR_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


JOB_COLUMNS: dict[str, Callable[[Job], object]] = {
    "JOB": lambda job: job_id(job.name),
    "TRIGGER": lambda job: enum_word(TRIGGER, job.trigger),
    "STATE": lambda job: enum_word(STATE, job.state),
    "WINDOW": lambda job: format_window(job.window),
    "STORES": _stores,
    "ROWS READ": lambda job: f"{job.progress.rows_read:,}",
    "ROWS OFFLINE": lambda job: f"{job.progress.rows_written_offline:,}",
    "ROWS ONLINE": lambda job: f"{job.progress.rows_written_online:,}",
    "ERROR": lambda job: _one_line(job.error_message),
}
STARTED_COLUMNS = ("JOB", "TRIGGER", "STATE", "WINDOW", "STORES")


def job_table(jobs: Sequence[Job], columns: Sequence[str] = tuple(JOB_COLUMNS)) -> str:
    return table(columns, [[JOB_COLUMNS[column](job) for column in columns] for job in jobs])


def _job_head(job: Job) -> str:
    state = enum_word(STATE, job.state)
    return f"{job_id(job.name)}  {state:<9}  {job.progress.rows_read:,} rows read"


def progress_line(job: Job, elapsed: float) -> str:
    chunks = plural(job.progress.chunks_done, "chunk")
    return f"{_job_head(job)} · {chunks} · {format_seconds(elapsed)}"


def outcome_line(job: Job, elapsed: float) -> str:
    """How a job ended: its rows read and written per store, and how long it ran."""
    progress = job.progress
    written = {
        job_pb2.STORE_OFFLINE: progress.rows_written_offline,
        job_pb2.STORE_ONLINE: progress.rows_written_online,
    }
    stores = ", ".join(f"{enum_word(STORE, s).lower()} {written[s]:,}" for s in job.stores)
    if job.HasField("start_time") and job.HasField("end_time"):
        elapsed = (job.end_time.ToDatetime() - job.start_time.ToDatetime()).total_seconds()
    line = (
        f"{_job_head(job)} · written {stores} · {plural(progress.chunks_done, 'chunk')}"
        f" · {format_seconds(elapsed)}"
    )
    if progress.texts_embedded or progress.embedding_cache_hits:
        line += (
            f"\n    embeddings: {progress.texts_embedded:,} texts embedded in "
            f"{plural(progress.embedding_calls, 'model call')}, "
            f"{progress.embedding_cache_hits:,} from the cache, "
            f"{progress.embedding_truncations:,} truncated"
        )
    return line + (f"\n    error: {job.error_message}" if job.error_message else "")


class ProgressDisplay:
    """A job's progress while it is watched.

    On a terminal, one line redrawn in place with a spinner (the service reports rows and
    chunks, not a total, so there is no percentage to draw). Elsewhere a line per state change
    and one every PLAIN_PROGRESS_SECONDS, since carriage returns garble logs.
    """

    def __init__(
        self,
        out: TextIO,
        prefix: str = "",
        *,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._prefix = prefix
        self._quiet = quiet
        self._tty = _is_tty(out)
        self._clock = clock
        self._start = clock()
        self._frames = itertools.cycle(SPINNER)
        self._drawn = 0
        self._last: tuple[int, float] | None = None

    def update(self, job: Job) -> None:
        if self._quiet or job.state in ENDED:
            return  # `finish` shows the end
        now = self._clock()
        line = self._prefix + progress_line(job, now - self._start)
        if self._tty:
            self._redraw(f"{next(self._frames)} {line}")
        elif self._plain_due(job.state, now):
            print(line, file=self._out)
            self._last = (job.state, now)

    def finish(self, job: Job) -> None:
        if self._quiet:
            return
        line, _, error = outcome_line(job, self._clock() - self._start).partition("\n")
        if self._tty:
            self._redraw(self._prefix + line)
            self.close()
        else:
            print(self._prefix + line, file=self._out)
        if error:
            print(error, file=self._out)

    def close(self) -> None:
        """End a line left half-drawn (e.g. by Ctrl-C) so the shell prompt starts clean."""
        if self._drawn:
            self._out.write("\n")
            self._out.flush()
            self._drawn = 0

    def _plain_due(self, state: int, now: float) -> bool:
        if self._last is None or self._last[0] != state:
            return True
        return now - self._last[1] >= PLAIN_PROGRESS_SECONDS

    def _redraw(self, line: str) -> None:
        # Pad over the previous line's tail instead of relying on terminal escape codes.
        self._out.write("\r" + line.ljust(self._drawn))
        self._out.flush()
        self._drawn = len(line)


def _is_tty(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def bar_cells(lengths: Sequence[int], width: int) -> list[int]:
    """Cells of a `width`-cell bar per interval length, adding up to `width`.

    Proportional by the largest-remainder method in exact integer arithmetic; then, when
    there are no more intervals than cells, every interval gets at least one cell (taken from
    the widest), so a short gap between long runs never disappears from the bar.
    """
    total = sum(lengths)
    if total <= 0 or width <= 0:
        return [0] * len(lengths)
    cells = [length * width // total for length in lengths]
    remainders = [length * width % total for length in lengths]
    largest_first = sorted(range(len(lengths)), key=lambda i: (-remainders[i], i))
    for index in largest_first[: width - sum(cells)]:
        cells[index] += 1
    if len(lengths) <= width:
        for index in [i for i, count in enumerate(cells) if count == 0 and lengths[i] > 0]:
            widest = max(range(len(cells)), key=lambda i: cells[i])
            cells[widest] -= 1
            cells[index] += 1
    return cells


def render_timeline(intervals: Sequence[DataInterval], width: int = BAR_WIDTH) -> str:
    """A proportional bar across the span, its ends, a legend, then one line per interval."""
    lengths = [_micros(i.window.end_time) - _micros(i.window.start_time) for i in intervals]
    cells = bar_cells(lengths, width)
    bar = "".join(GLYPHS.get(i.status, "?") * n for i, n in zip(intervals, cells, strict=True))
    start = format_time(intervals[0].window.start_time)
    end = format_time(intervals[-1].window.end_time)
    ends = start + end.rjust(max(len(bar) - len(start), len(end) + 2))
    legend = "  ".join(f"{glyph} {enum_word(STATUS, s).lower()}" for s, glyph in GLYPHS.items())
    rows = [_interval_row(i, length) for i, length in zip(intervals, lengths, strict=True)]
    listing = table(["START", "END", "LENGTH", "STATUS", "JOB"], rows)
    return _indent(f"{bar}\n{ends}\n{legend}\n\n{listing}")


def _interval_row(interval: DataInterval, length: int) -> list[str]:
    return [
        format_time(interval.window.start_time),
        format_time(interval.window.end_time),
        format_length(length),
        enum_word(STATUS, interval.status),
        job_id(interval.job) if interval.job else "",
    ]


def _micros(stamp: Timestamp) -> int:
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else line for line in text.splitlines())


def render_settings(settings: Settings) -> str:
    recurrence = settings.recurrence
    schedule = "none"
    if settings.HasField("recurrence"):
        unit = enum_word(FREQUENCY, recurrence.frequency).lower()
        plural = "s" if recurrence.interval != 1 else ""
        schedule = (
            f"every {recurrence.interval} {unit}{plural} from {format_time(recurrence.start_time)}"
        )
    rows = [
        ["offline", "on" if settings.offline_enabled else "off"],
        ["online", "on" if settings.online_enabled else "off"],
        ["schedule", schedule],
        ["source delay", format_length(settings.source_delay.ToMicroseconds())],
    ]
    name = settings.name.removesuffix(SETTINGS_SUFFIX)
    return f"Materialization settings of {name}:\n" + "\n".join(
        f"  {key:<13} {value}" for key, value in rows
    )


# --- parser ----------------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `recstack materialize COMMAND …` to the top-level parser."""
    group = commands.add_parser(
        "materialize",
        help="backfill, watch and inspect materialization jobs; intervals, publish, export",
        description="Materialize feature views into the offline and online stores, inspect "
        "jobs and data intervals, publish partitions online and export training sets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    parents = [common, _service_options()]
    for add in (
        _add_backfill,
        _add_job_commands,
        _add_jobs,
        _add_intervals,
        _add_settings,
        _add_publish,
        _add_export,
    ):
        add(subcommands, parents)


def _service_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--materialization",
        metavar="HOST:PORT",
        help="materialization service address (default: RECSTACK_MATERIALIZATION_ADDR "
        "or 127.0.0.1:50052)",
    )
    return options


def _command(
    subcommands: argparse._SubParsersAction,
    parents: list[argparse.ArgumentParser],
    name: str,
    handler: Callable[[argparse.Namespace, Context], int],
    summary: str,
) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(
        name, parents=parents, help=summary, description=f"{summary[0].upper()}{summary[1:]}."
    )
    parser.set_defaults(handler=handler)
    return parser


def _add_view(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("view", metavar="PROJECT/VIEW", help="feature view, e.g. shop/clicks")
    parser.add_argument("--project", help="project id when PROJECT/VIEW gives only the VIEW")


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="show progress until the job ends; exit 1 unless it succeeds",
    )


def _add_backfill(subcommands: argparse._SubParsersAction, parents: list) -> None:
    parser = _command(
        subcommands,
        parents,
        "backfill",
        _backfill,
        "start one job per data interval with the given statuses, clipped to the window",
    )
    _add_view(parser)
    parser.add_argument(
        "--start", type=parse_time, metavar="TIME", help="default: start of the materialized range"
    )
    parser.add_argument(
        "--end", type=parse_time, metavar="TIME", help="default: end of the materialized range"
    )
    parser.add_argument(
        "--status",
        nargs="+",
        action="extend",
        type=str.lower,
        choices=words(STATUS),
        metavar="STATUS",
        help=f"interval statuses to fill, from {', '.join(words(STATUS))} (default: none)",
    )
    parser.add_argument(
        "--store",
        nargs="+",
        action="extend",
        type=str.lower,
        choices=words(STORE),
        metavar="STORE",
        help="offline and/or online (default: every enabled store)",
    )
    _add_wait(parser)


def _add_job_commands(subcommands: argparse._SubParsersAction, parents: list) -> None:
    for name, handler, summary in (
        ("retry", _retry, "re-run a failed or cancelled job's window"),
        ("cancel", _cancel, "cancel a queued or running job (it stops at the next chunk)"),
        ("watch", _watch, "show a job's progress until it ends; exit 0 only if it succeeds"),
    ):
        parser = _command(subcommands, parents, name, handler, summary)
        parser.add_argument(
            "job", metavar="JOB", help=f"PROJECT/VIEW/JOB_ID or the full name {JOB_NAME_SHAPE}"
        )
        if name == "retry":
            _add_wait(parser)


def _add_jobs(subcommands: argparse._SubParsersAction, parents: list) -> None:
    parser = _command(
        subcommands, parents, "jobs", _jobs, "list a feature view's jobs, newest first"
    )
    _add_view(parser)
    parser.add_argument(
        "--limit",
        type=whole_number(1),
        default=DEFAULT_JOB_LIMIT,
        help=f"show at most N jobs (default {DEFAULT_JOB_LIMIT})",
    )


def _add_intervals(subcommands: argparse._SubParsersAction, parents: list) -> None:
    parser = _command(
        subcommands,
        parents,
        "intervals",
        _intervals,
        "show a view's data intervals of one store as a timeline, NONE gaps included",
    )
    _add_view(parser)
    parser.add_argument(
        "--store", required=True, type=str.lower, choices=words(STORE), help="offline or online"
    )
    parser.add_argument("--start", type=parse_time, metavar="TIME", help="clip to a window …")
    parser.add_argument("--end", type=parse_time, metavar="TIME", help="… with --start")
    parser.add_argument(
        "--version", type=whole_number(1), help="feature view version (default latest)"
    )


def _add_settings(subcommands: argparse._SubParsersAction, parents: list) -> None:
    parser = _command(
        subcommands,
        parents,
        "settings",
        _settings,
        "change which stores a view materializes into and its schedule; only the options "
        "given change",
    )
    _add_view(parser)
    parser.add_argument("--offline", choices=("on", "off"), help="materialize offline")
    parser.add_argument("--online", choices=("on", "off"), help="materialize online")
    schedule = parser.add_mutually_exclusive_group()
    schedule.add_argument(
        "--every", type=whole_number(1), metavar="N", help="run every N units (with --unit)"
    )
    schedule.add_argument("--no-schedule", action="store_true", help="remove the schedule")
    parser.add_argument("--unit", type=str.lower, choices=words(FREQUENCY), help="unit of --every")
    parser.add_argument(
        "--from",
        dest="start",
        type=parse_time,
        metavar="TIME",
        help="first run (default: now, rounded down to the unit)",
    )
    parser.add_argument(
        "--source-delay",
        type=parse_delay,
        metavar="DURATION",
        help="how late source data lands, e.g. 30m: a run at t covers "
        "[t - delay - interval, t - delay)",
    )


def _add_publish(subcommands: argparse._SubParsersAction, parents: list) -> None:
    parser = _command(
        subcommands, parents, "publish", _publish, "sync one offline partition to the online store"
    )
    _add_view(parser)
    parser.add_argument("--partition", required=True, type=parse_partition, metavar="YYYY-MM-DD")
    parser.add_argument(
        "--mode",
        type=str.lower,
        choices=words(MODE),
        default="merge",
        help="merge: upsert every key; overwrite: replace the table; incremental: only keys "
        "absent from the previous day's partition (default merge)",
    )
    parser.add_argument(
        "--no-transform",
        action="store_true",
        help="rows already carry produced fields (e.g. pre-computed embeddings)",
    )
    _add_wait(parser)


def _add_export(subcommands: argparse._SubParsersAction, parents: list) -> None:
    parser = _command(
        subcommands, parents, "export", _export, "export a point-in-time correct training set"
    )
    parser.add_argument(
        "feature_set", metavar="PROJECT/ID", help="model feature set, e.g. shop/ranker"
    )
    parser.add_argument("--project", help="project id when PROJECT/ID gives only the ID")
    # Not --output: that is the common table|json option.
    parser.add_argument(
        "--output-path", required=True, metavar="PATH", help="Parquet file to write"
    )
    rows = parser.add_mutually_exclusive_group(required=True)
    rows.add_argument("--entities", metavar="PARQUET", help="labelled entity rows (Parquet)")
    rows.add_argument("--entity-table", metavar="TABLE", help="labelled entity rows (PostgreSQL)")
    rows.add_argument("--snapshot", type=parse_time, metavar="TIME", help="every key as of TIME")
    rows.add_argument(
        "--changes-start", type=parse_time, metavar="TIME", help="every change from TIME …"
    )
    parser.add_argument("--changes-end", type=parse_time, metavar="TIME", help="… until TIME")
    parser.add_argument(
        "--timestamp-column",
        metavar="COLUMN",
        help="event time column of the entity rows (default event_ts)",
    )


# --- handlers --------------------------------------------------------------------------------


def _backfill(args: argparse.Namespace, context: Context) -> int:
    _check_order(args.start, args.end, "--start", "--end")
    request = pb.BackfillRequest(
        feature_view=view_name(args.view, args.project),
        statuses=[enum_number(STATUS, word) for word in args.status or ()],
        stores=[enum_number(STORE, word) for word in args.store or ()],
    )
    if args.start:
        request.window.start_time.FromDatetime(args.start)
    if args.end:
        request.window.end_time.FromDatetime(args.end)
    with connect(args, context) as connection:
        jobs = list(connection.call("Backfill", request).jobs)
        if not jobs and context.output != JSON:
            context.echo(
                "Nothing to backfill: no interval in the window has the statuses asked for."
            )
            return 0
        return _follow(context, connection, jobs, args.wait, lambda j: pb.BackfillResponse(jobs=j))


def _retry(args: argparse.Namespace, context: Context) -> int:
    request = pb.RetryJobRequest(name=job_name(args.job))
    with connect(args, context) as connection:
        job = connection.call("RetryJob", request).job
        return _follow(
            context, connection, [job], args.wait, lambda j: pb.RetryJobResponse(job=j[0])
        )


def _cancel(args: argparse.Namespace, context: Context) -> int:
    name = job_name(args.job)
    with connect(args, context) as connection:
        response = connection.call("CancelJob", pb.CancelJobRequest(name=name))
    if context.output == JSON:
        context.echo(to_json(response))
    elif response.job.state == Job.STATE_CANCELLED:
        context.echo(f"Cancelled {name}.")
    else:
        context.echo(f"Cancel requested: {name} stops at its next chunk.")
    return 0


def _watch(args: argparse.Namespace, context: Context) -> int:
    name = job_name(args.job)
    with connect(args, context) as connection:
        job = watch(context, connection, Job(name=name))
    if context.output == JSON:
        context.echo(to_json(pb.WatchJobResponse(job=job)))
    _require_success([job])
    return 0


def _jobs(args: argparse.Namespace, context: Context) -> int:
    parent = view_name(args.view, args.project)
    with connect(args, context) as connection:
        jobs = list_jobs(connection, parent, args.limit)
    if context.output == JSON:
        context.echo(to_json(pb.ListJobsResponse(jobs=jobs)))
    elif jobs:
        context.echo(job_table(jobs))
    else:
        context.echo(f"No jobs for {parent}.")
    return 0


def list_jobs(connection: Connection, parent: str, limit: int) -> list[Job]:
    """Every page of ListJobs, up to `limit` jobs."""
    jobs: list[Job] = []
    token = ""
    while True:
        size = min(MAX_PAGE_SIZE, limit - len(jobs))
        request = pb.ListJobsRequest(parent=parent, page_size=size, page_token=token)
        response = connection.call("ListJobs", request)
        jobs += response.jobs
        token = response.next_page_token
        if not token or len(jobs) >= limit:
            return jobs[:limit]


def _intervals(args: argparse.Namespace, context: Context) -> int:
    name = view_name(args.view, args.project)
    request = pb.ListDataIntervalsRequest(
        feature_view=name, version=args.version or 0, store=enum_number(STORE, args.store)
    )
    if (args.start is None) != (args.end is None):
        raise UsageError("give --start and --end together")
    if args.start is not None:
        _check_order(args.start, args.end, "--start", "--end")
        request.window.CopyFrom(_window(args.start, args.end))
    with connect(args, context) as connection:
        response = connection.call("ListDataIntervals", request)
    if context.output == JSON:
        context.echo(to_json(response))
        return 0
    version = f"version {args.version}" if args.version else "latest version"
    if not response.data_intervals:
        context.echo(f"No {args.store} data intervals for {name} ({version}): never materialized.")
        return 0
    context.echo(f"{args.store.capitalize()} data intervals of {name} ({version}):\n")
    context.echo(render_timeline(response.data_intervals))
    return 0


def _settings(args: argparse.Namespace, context: Context) -> int:
    settings, paths = settings_change(args, datetime.now(UTC))
    request = pb.UpdateMaterializationSettingsRequest(
        settings=settings, update_mask=FieldMask(paths=paths)
    )
    with connect(args, context) as connection:
        response = connection.call("UpdateMaterializationSettings", request)
    context.echo(
        to_json(response) if context.output == JSON else render_settings(response.settings)
    )
    return 0


def settings_change(args: argparse.Namespace, now: datetime) -> tuple[Settings, list[str]]:
    """The settings message and an update mask naming exactly the options given.

    An empty mask would make the service replace every field, so no options is a usage error.
    """
    settings = Settings(name=view_name(args.view, args.project) + SETTINGS_SUFFIX)
    paths = []
    for store in ("offline", "online"):
        if getattr(args, store) is not None:
            setattr(settings, f"{store}_enabled", getattr(args, store) == "on")
            paths.append(f"{store}_enabled")
    if args.every is None and (args.unit or args.start):
        raise UsageError("--unit and --from set a schedule: give --every N too")
    if args.every is not None:
        if args.unit is None:
            raise UsageError("--every needs --unit minute, hour or day")
        recurrence = settings.recurrence
        recurrence.frequency = enum_number(FREQUENCY, args.unit)
        recurrence.interval = args.every
        recurrence.start_time.FromDatetime(args.start or now.replace(**FLOOR[args.unit]))
    if args.every is not None or args.no_schedule:
        paths.append("recurrence")
    if args.source_delay is not None:
        settings.source_delay.FromTimedelta(args.source_delay)
        paths.append("source_delay")
    if not paths:
        raise UsageError(
            "nothing to change: give --offline, --online, --every/--unit, --no-schedule "
            "or --source-delay"
        )
    return settings, paths


def _publish(args: argparse.Namespace, context: Context) -> int:
    request = pb.PublishTableRequest(
        feature_view=view_name(args.view, args.project),
        partition=args.partition,
        mode=enum_number(MODE, args.mode),
        transform=not args.no_transform,
    )
    with connect(args, context) as connection:
        job = connection.call("PublishTable", request).job
        return _follow(
            context, connection, [job], args.wait, lambda j: pb.PublishTableResponse(job=j[0])
        )


def _export(args: argparse.Namespace, context: Context) -> int:
    request = export_request(args)
    with connect(args, context) as connection:
        response = connection.call("ExportTrainingSet", request, long=True)
    if context.output == JSON:
        context.echo(to_json(response))
    else:
        context.echo(f"Exported {response.row_count:,} rows to {response.output_path}.")
    return 0


def export_request(args: argparse.Namespace) -> pb.ExportTrainingSetRequest:
    if (args.changes_start is None) != (args.changes_end is None):
        raise UsageError("give --changes-start and --changes-end together")
    if args.timestamp_column and not (args.entities or args.entity_table):
        raise UsageError("--timestamp-column applies to --entities and --entity-table")
    request = pb.ExportTrainingSetRequest(
        model_feature_set=resources.parse_reference(
            resources.MODEL_FEATURE_SET, args.feature_set, args.project
        ),
        output_path=_absolute(args.output_path),
        timestamp_column=args.timestamp_column or "",
    )
    if args.entities:
        request.entity_parquet_path = _absolute(args.entities)
    elif args.entity_table:
        request.entity_table = args.entity_table
    elif args.snapshot:
        request.snapshot_time.FromDatetime(args.snapshot)
    else:
        _check_order(args.changes_start, args.changes_end, "--changes-start", "--changes-end")
        request.changes_window.CopyFrom(_window(args.changes_start, args.changes_end))
    return request


# --- following jobs --------------------------------------------------------------------------


def _follow(
    context: Context,
    connection: Connection,
    jobs: list[Job],
    wait: bool,
    response: Callable[[list[Job]], Message],
) -> int:
    """Show the jobs just started; with `wait`, watch each to its end and fail unless all
    succeeded. JSON output is one response message, with the final states when waiting."""
    if context.output != JSON:
        context.echo(
            f"Started {plural(len(jobs), 'job')}:\n" + _indent(job_table(jobs, STARTED_COLUMNS))
        )
    if wait:
        total = len(jobs)
        prefix = (lambda n: f"[{n}/{total}] ") if total > 1 else (lambda n: "")
        jobs = [watch(context, connection, job, prefix(n)) for n, job in enumerate(jobs, 1)]
    if context.output == JSON:
        context.echo(to_json(response(jobs)))
    if wait:
        _require_success(jobs)
    return 0


def watch(context: Context, connection: Connection, job: Job, prefix: str = "") -> Job:
    """Follow WatchJob to the job's end; returns the job as it ended."""
    display = ProgressDisplay(context.out, prefix, quiet=context.output == JSON)
    last = job
    try:
        for update in connection.stream("WatchJob", pb.WatchJobRequest(name=job.name)):
            last = update.job
            display.update(last)
        if last.state in ENDED:
            display.finish(last)  # drawn over the progress line
    finally:
        display.close()
    if last.state not in ENDED:
        raise CliError(
            f"the service stopped streaming {job.name} while it was "
            f"{enum_word(STATE, last.state)}; run `recstack materialize watch` again"
        )
    return last


def _require_success(jobs: Sequence[Job]) -> None:
    failed = [job for job in jobs if job.state != Job.STATE_SUCCEEDED]
    if not failed:
        return
    if len(jobs) == 1:
        job = jobs[0]
        reason = f": {job.error_message}" if job.error_message else ""
        raise CliError(f"job {job.name} ended {enum_word(STATE, job.state)}{reason}")
    ended = ", ".join(f"{job_id(job.name)} {enum_word(STATE, job.state)}" for job in failed)
    raise CliError(f"{len(failed)} of {len(jobs)} jobs did not succeed: {ended}")
