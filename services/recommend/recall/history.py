"""The user's recent items, as the personal recalls read them from a user feature."""

from __future__ import annotations

from collections.abc import Sequence

from services.recommend.pipeline import StageRequest
from shared.errors import FailedPrecondition


def recent_items(request: StageRequest, ref: str) -> list[str]:
    """The item ids of the user's history feature `ref` (an ARRAY<INT64|STRING>, newest first
    as LAST_N writes it), as item-table ids; empty for a user the view does not know."""
    value = request.user.get(ref)
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise FailedPrecondition(
            f"user feature {ref} is {type(value).__name__}, not a list of item ids "
            "(ARRAY<INT64> or ARRAY<STRING>)",
            reason="FEATURE_NOT_A_LIST",
        )
    return [str(item) for item in value if item is not None]
