"""List filters: `field=value`, `field!=value`, `field:text` (substring), joined by AND.

Fields are top-level scalar fields of the resource (`description`, `type`, `online_enabled`)
or one key of a map field (`tags.team`). Values are bare words or "quoted strings"; enums
are compared by name (`type=TYPE_BATCH`), booleans as `true`/`false`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from shared.errors import InvalidArgument, quoted

TERM = re.compile(
    r'^\s*([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_-]+)?)\s*(!=|=|:)\s*("(?:[^"\\]|\\.)*"|\S+)\s*$'
)
AND = re.compile(r"\s+AND\s+")
MAX_TERMS = 10


@dataclass(frozen=True)
class Condition:
    path: tuple[str, ...]
    operator: str
    value: str


def parse_filter(text: str, descriptor: Descriptor) -> list[Condition]:
    if not text.strip():
        return []
    terms = AND.split(text.strip())
    if len(terms) > MAX_TERMS:
        raise InvalidArgument("filter", f"at most {MAX_TERMS} terms joined by AND")
    return [_condition(term, descriptor) for term in terms]


def _condition(term: str, descriptor: Descriptor) -> Condition:
    match = TERM.match(term)
    if match is None:
        raise InvalidArgument(
            "filter", f"{quoted(term)} is not `field=value`, `field!=value` or `field:text`"
        )
    path_text, operator, value = match.groups()
    path = tuple(path_text.split("."))
    _check_path(path, descriptor)
    if value.startswith('"'):
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return Condition(path, operator, value)


def _check_path(path: tuple[str, ...], descriptor: Descriptor) -> None:
    field = descriptor.fields_by_name.get(path[0])
    if field is None:
        raise InvalidArgument("filter", f"{descriptor.name} has no field {quoted(path[0])}")
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    if len(path) == 2 and not is_map:
        raise InvalidArgument(
            "filter", f"{quoted(path[0])} is not a map field; use {path[0]}=value"
        )
    if len(path) == 1 and (field.is_repeated or field.type == FieldDescriptor.TYPE_MESSAGE):
        raise InvalidArgument("filter", f"{quoted(path[0])} is not a scalar field")
