"""The online store: latest feature row per entity key, read in batches on the hot path."""

from shared.online_store.base import OnlineStore, Scan, ViewColumns, WriteResult

__all__ = ["OnlineStore", "Scan", "ViewColumns", "WriteResult"]
