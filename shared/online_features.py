"""What an online-feature read means, for every reader of the online store.

Serving's `GetOnlineFeatures` and the recommend service's direct user-feature read both parse
`view:feature` refs and decide a row's status the same way, from here, so the two readers can
never disagree on what is fresh.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.errors import InvalidArgument, quoted
from shared.feature_views import ViewSchema

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)


class Status(enum.IntEnum):
    PRESENT = 1
    NOT_FOUND = 2
    OUTSIDE_TTL = 3


@dataclass(frozen=True)
class FeatureRef:
    view: str
    version: int
    feature: str

    @classmethod
    def parse(cls, text: str, field: str) -> FeatureRef:
        view_part, separator, feature = text.partition(":")
        view, _, version = view_part.partition("@")
        if not separator or not view or not feature or (version and not version.isdigit()):
            raise InvalidArgument(
                field, f"{quoted(text)} is not `view:feature`, `view:*` or `view@N:f`"
            )
        return cls(view, int(version or 0), feature)

    @property
    def view_label(self) -> str:
        """How the ref named its view: `view`, or `view@N` when it pinned a version."""
        return f"{self.view}@{self.version}" if self.version else self.view


def micros(moment: datetime | None) -> int | None:
    """Microseconds since the Unix epoch (None stays None: the view has no row)."""
    return None if moment is None else (moment - EPOCH) // ONE_MICROSECOND


def now_micros(now: datetime | None = None) -> int:
    return ((now or datetime.now(UTC)) - EPOCH) // ONE_MICROSECOND


def statuses(view: ViewSchema, event_micros: list[int | None], now_us: int) -> list[Status]:
    """NOT_FOUND without a row; OUTSIDE_TTL when older than the view's TTL (0: no TTL)."""
    present, missing, stale = Status.PRESENT, Status.NOT_FOUND, Status.OUTSIDE_TTL
    if not view.ttl_seconds:
        return [missing if m is None else present for m in event_micros]
    cutoff = now_us - round(view.ttl_seconds * 1_000_000)
    return [missing if m is None else stale if m < cutoff else present for m in event_micros]
