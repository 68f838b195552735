"""Where the rank stage reads one user's features (the serving service, in production)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class UserFeatureReader(Protocol):
    def read(self, project: str, refs: Sequence[str], key: Any, key_type: int) -> dict[str, Any]:
        """Values of `view:feature` refs for one entity key of type `key_type`.

        A ref the entity has no (fresh) value for maps to None. Raises Unavailable when the
        source cannot be reached.
        """
        ...
