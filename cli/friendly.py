"""Friendly spellings in YAML definitions and human output, translated to and from proto JSON.

People write `type: BATCH`, `value_type: ARRAY<FLOAT>` and `ttl: 7d`; `json_format.ParseDict`
wants `TYPE_BATCH`, `VALUE_TYPE_FLOAT_LIST` and `"604800s"`. The translation walks the message
descriptor alongside the document, so it covers every enum and Duration wherever it is nested
without a table of YAML keys, and an unknown key is reported with its full path.
"""

from __future__ import annotations

import difflib
import re
from decimal import Decimal
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

DURATION = "google.protobuf.Duration"
FREE_FORM = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
# The type names of the design doc, for the one enum whose proto names read differently.
TYPE_ALIASES: dict[str, dict[str, str]] = {
    "recstack.common.v1.ValueType": {
        "ARRAY<FLOAT>": "VALUE_TYPE_FLOAT_LIST",
        "ARRAY<DOUBLE>": "VALUE_TYPE_DOUBLE_LIST",
        "ARRAY<INT64>": "VALUE_TYPE_INT64_LIST",
        "ARRAY<STRING>": "VALUE_TYPE_STRING_LIST",
        "MAP<STRING,STRING>": "VALUE_TYPE_STRING_STRING_MAP",
        "MAP<STRING,DOUBLE>": "VALUE_TYPE_STRING_DOUBLE_MAP",
    }
}
UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION = re.compile(
    r"^(?P<sign>-?)(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)
_PROTO_DURATION = re.compile(r"^(-?\d+)(?:\.(\d+))?s$")
_INT64_TYPES = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
_WHOLE = ("a whole number", (int, str))
_NUMBER = ("a number", (int, float, str))
_SCALARS: dict[int, tuple[str, tuple[type, ...]]] = {
    FieldDescriptor.CPPTYPE_STRING: ("a string (quote values such as 123 or yes)", (str,)),
    FieldDescriptor.CPPTYPE_BOOL: ("true or false", (bool,)),
    FieldDescriptor.CPPTYPE_INT32: _WHOLE,
    FieldDescriptor.CPPTYPE_INT64: _WHOLE,
    FieldDescriptor.CPPTYPE_UINT32: _WHOLE,
    FieldDescriptor.CPPTYPE_UINT64: _WHOLE,
    FieldDescriptor.CPPTYPE_FLOAT: _NUMBER,
    FieldDescriptor.CPPTYPE_DOUBLE: _NUMBER,
}


class FieldError(ValueError):
    """A value at `path` (dotted, with [i] for list items) that cannot be translated."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


# --- YAML → proto JSON -----------------------------------------------------------------------


def to_proto_json(document: Any, descriptor: Descriptor, path: str = "") -> dict[str, Any]:
    """`document` with friendly spellings replaced and keys checked against `descriptor`."""
    if not isinstance(document, dict):
        raise FieldError(path, f"expected a mapping of {descriptor.name} fields")
    converted: dict[str, Any] = {}
    for key, value in document.items():
        field = _field(descriptor, key, path)
        converted[field.name] = _field_value(value, field, _join(path, field.name))
    return converted


def _field(descriptor: Descriptor, key: object, path: str) -> FieldDescriptor:
    names = {field.name: field for field in descriptor.fields}
    names.update({field.json_name: field for field in descriptor.fields})
    if isinstance(key, str) and key in names:
        return names[key]
    close = difflib.get_close_matches(str(key), [f.name for f in descriptor.fields], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise FieldError(_join(path, str(key)), f"unknown field of {descriptor.name}{hint}")


def _field_value(value: Any, field: FieldDescriptor, path: str) -> Any:
    if _is_map(field):
        return _map_value(value, field, path)
    if field.is_repeated:
        if not isinstance(value, list):
            raise FieldError(path, "expected a list")
        return [_single_value(item, field, f"{path}[{index}]") for index, item in enumerate(value)]
    return _single_value(value, field, path)


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry


def _map_value(value: Any, field: FieldDescriptor, path: str) -> Any:
    value_field = field.message_type.fields_by_name["value"]
    if not isinstance(value, dict) or value_field.message_type is None:
        return value
    return {key: _single_value(item, value_field, f"{path}.{key}") for key, item in value.items()}


def _single_value(value: Any, field: FieldDescriptor, path: str) -> Any:
    if field.enum_type is not None:
        return enum_name(value, field.enum_type, path)
    if field.message_type is None:
        return _scalar(value, field, path)
    if field.message_type.full_name == DURATION:
        return parse_duration(value, path)
    if field.message_type.full_name in FREE_FORM:
        return value  # a stage's params or a variant's overrides: any JSON, as written
    return to_proto_json(value, field.message_type, path)


def _scalar(value: Any, field: FieldDescriptor, path: str) -> Any:
    """Reject YAML values of the wrong kind here, where the full path is known.

    Strings for numbers stay allowed (proto JSON writes 64-bit integers as strings) and go on
    to ParseDict, which checks their contents.
    """
    expected, kinds = _SCALARS[field.cpp_type]
    # bool is an int subclass in Python, so `true` must be kept out of numbers explicitly.
    wants_bool = kinds == (bool,)
    if isinstance(value, bool) != wants_bool or not isinstance(value, kinds):
        raise FieldError(path, f"expected {expected}, got {value!r}")
    return value


def enum_name(value: Any, enum: EnumDescriptor, path: str = "") -> Any:
    """The proto name for a short or aliased spelling; other values go on to ParseDict."""
    if not isinstance(value, str):
        return value
    spelled = re.sub(r"\s+", "", value).upper()
    aliases = TYPE_ALIASES.get(enum.full_name, {})
    prefix = _prefix(enum)
    for candidate in (aliases.get(spelled), spelled.replace("-", "_")):
        if candidate is None:
            continue
        for name in (candidate, prefix + candidate):
            if name in enum.values_by_name and not name.endswith("_UNSPECIFIED"):
                return name
    choices = ", ".join(short_enum(v.name, enum) for v in enum.values if v.number != 0)
    raise FieldError(path, f"{value!r} is not one of {choices}")


def _prefix(enum: EnumDescriptor) -> str:
    # buf STANDARD lint makes every zero value `<PREFIX>_UNSPECIFIED`.
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def parse_duration(value: Any, path: str = "") -> str:
    """`7d`, `24h`, `1h30m`, `45s` or `0` as the proto JSON `"<seconds>s"` form."""
    text = value.strip() if isinstance(value, str) else ""
    if text == "0":
        return "0s"
    match = _DURATION.match(text)
    if match is None or not any(match.group(unit) for unit, _ in UNITS):
        raise FieldError(path, f"{value!r} is not a duration; write e.g. 7d, 24h, 30m or 45s")
    seconds = sum(Decimal(match.group(unit) or 0) * size for unit, size in UNITS)
    return f"{match.group('sign')}{seconds}s"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --- proto JSON → human ----------------------------------------------------------------------


def to_friendly(data: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """The inverse for display: short enum names, type aliases and durations in days/hours."""
    fields = descriptor.fields_by_name
    return {key: _friendly_field(value, fields.get(key)) for key, value in data.items()}


def _friendly_field(value: Any, field: FieldDescriptor | None) -> Any:
    if field is None or _is_map(field):
        return value
    if isinstance(value, list):
        return [_friendly_single(item, field) for item in value]
    return _friendly_single(value, field)


def _friendly_single(value: Any, field: FieldDescriptor) -> Any:
    if field.enum_type is not None and isinstance(value, str):
        return short_enum(value, field.enum_type)
    if field.cpp_type in _INT64_TYPES and isinstance(value, str):
        return int(value)  # proto JSON quotes 64-bit integers; YAML has no such limit
    if field.message_type is None or not isinstance(value, (dict, str)):
        return value
    if field.message_type.full_name == DURATION:
        return format_duration(value)
    return to_friendly(value, field.message_type) if isinstance(value, dict) else value


def short_enum(name: str, enum: EnumDescriptor) -> str:
    """`VALUE_TYPE_FLOAT_LIST` → `ARRAY<FLOAT>`, `TYPE_BATCH` → `BATCH`."""
    for alias, full in TYPE_ALIASES.get(enum.full_name, {}).items():
        if full == name:
            return alias
    return name.removeprefix(_prefix(enum))


def format_duration(text: str) -> str:
    """Proto JSON `"604800s"` as `7d`: the largest unit that divides it exactly."""
    match = _PROTO_DURATION.match(text)
    if match is None or (match.group(2) and match.group(2).strip("0")):
        return text
    seconds = int(match.group(1))
    if seconds == 0:
        return "0s"
    unit, size = next((unit, size) for unit, size in UNITS if seconds % size == 0)
    return f"{seconds // size}{unit}"
