"""Rendering for people (tables, YAML-like documents) and for programs (proto JSON)."""

from __future__ import annotations

from collections.abc import Sequence

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from cli.friendly import to_friendly
from cli.resources import ResourceType

TABLE = "table"
JSON = "json"
FORMATS = (TABLE, JSON)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, sized to the widest cell; no trailing blanks."""
    cells = [list(map(str, headers))] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def resource_table(rtype: ResourceType, items: Sequence[Message]) -> str:
    return table(
        [column.header for column in rtype.columns],
        [[column.value(item) for column in rtype.columns] for item in items],
    )


def to_json(message: Message) -> str:
    # Field names as in the .proto files, the spelling the YAML definitions use too.
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)


def document(message: Message) -> str:
    """One resource in the spelling of the YAML definitions (short enums, 7d durations)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    friendly = to_friendly(data, message.DESCRIPTOR)
    return yaml.safe_dump(friendly, sort_keys=False, allow_unicode=True).rstrip("\n")
