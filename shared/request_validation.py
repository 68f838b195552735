"""Every request checked before any work, against rules derived from the contract.

Two sources of rules, both read from the message descriptors (never written per RPC):
- what a field's type implies: strings without NUL (PostgreSQL cannot store one) and of
  bounded length; enum numbers that have a name; Timestamps that are real instants (years
  1-9999, nanos in [0, 1e9)); Durations and TimeWindows of at most 100 years, a window's end
  after its start; bounded repeated and map fields; Struct values JSON can carry (finite
  numbers, no NUL, bounded depth);
- the `recstack.common.v1.rules` option of a field (protos/recstack/common/v1/field_rules.proto):
  integer bounds (a version stored in an int32 column), a pattern the whole string must match
  (ids), other size limits.

A violation is `InvalidArgument` naming the field path (`definitions[2].feature_view.ttl`),
which the shared interceptor answers as INVALID_ARGUMENT with a BadRequest. Checks are
compiled once per message type, so a request costs one pass over its set fields.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import methodcaller
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from recstack.common.v1 import field_rules_pb2

from shared.errors import InvalidArgument, quoted

MAX_STRING_CHARS = 65_536
MAX_ITEMS = 100_000
MAX_STRUCT_DEPTH = 32
# 100 years of 365.25 days: the longest duration, window or schedule period accepted.
MAX_SPAN_SECONDS = 100 * 36525 * 864
# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range of RFC 3339 (and of Python's
# datetime, which every service converts Timestamps to).
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
NANOS_PER_SECOND = 1_000_000_000

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
STRUCT = "google.protobuf.Struct"
FIELD_MASK = "google.protobuf.FieldMask"
TIME_WINDOW = "recstack.common.v1.TimeWindow"
VALUE = "recstack.common.v1.Value"

Check = Callable[[Any, str], None]


class RequestRejected(InvalidArgument):
    """A request that broke a rule of the contract (before any work was done)."""


@dataclass(frozen=True)
class _FieldCheck:
    name: str
    repeated: bool
    is_map: bool
    check: Check
    max_items: int
    # For repeated fields: True when every item passes, found in one sweep at C speed (no
    # per-item call or path); None when items are checked one by one.
    all_pass: Callable[[Any], bool] | None = None


def validate(message: Message, path: str = "") -> None:
    """Raise `InvalidArgument` naming the first field of `message` that breaks a rule."""
    _validator(message.DESCRIPTOR)(message, path)


# --- compiling a descriptor into checks --------------------------------------------------

_compiled: dict[str, Callable[[Message, str], None]] = {}
_lock = threading.Lock()


def _validator(descriptor: Descriptor) -> Callable[[Message, str], None]:
    found = _compiled.get(descriptor.full_name)
    if found is not None:
        return found
    with _lock:
        # A placeholder first: recursive message types refer to themselves while compiling.
        checks: dict[str, _FieldCheck] = {}
        whole = _WHOLE.get(descriptor.full_name)

        def run(message: Message, path: str) -> None:
            if whole is not None:
                whole(message, path)
            for field, value in message.ListFields():
                check = checks.get(field.name)
                if check is not None:
                    _run_field(check, value, _join(path, field.name))

        _compiled[descriptor.full_name] = run
        for field in descriptor.fields:
            check = _field_check(field)
            if check is not None:
                checks[field.name] = check
    return run


def _run_field(check: _FieldCheck, value: Any, path: str) -> None:
    if check.is_map:
        if len(value) > check.max_items:
            raise RequestRejected(path, f"at most {check.max_items} entries, got {len(value)}")
        for key in value:
            _check_string(key, f"{path} key", MAX_STRING_CHARS, None)
            check.check(value[key], f"{path}[{quoted(key, 40)}]")
        return
    if check.repeated:
        if len(value) > check.max_items:
            raise RequestRejected(path, f"at most {check.max_items} entries, got {len(value)}")
        if check.all_pass is not None and check.all_pass(value):
            return
        # Some item fails (or there is no sweep): find the first, with its path.
        for index, item in enumerate(value):
            check.check(item, f"{path}[{index}]")
        return
    check.check(value, path)


def _field_check(field: FieldDescriptor) -> _FieldCheck | None:
    rules = _rules(field)
    is_map = _is_map(field)
    target = field.message_type.fields_by_name["value"] if is_map else field
    check = _value_check(target, rules)
    if check is None and not (field.is_repeated or is_map):
        return None
    max_items = rules.max_items or MAX_ITEMS
    all_pass = _sweep(target, rules) if field.is_repeated and not is_map else None
    return _FieldCheck(
        field.name, field.is_repeated, is_map, check or _no_check, max_items, all_pass
    )


def _sweep(
    field: FieldDescriptor, rules: field_rules_pb2.FieldRules
) -> Callable[[Any], bool] | None:
    """A whole-list test equivalent to checking each item, for the item kinds requests carry
    by the hundred (strings such as feature refs, feature values such as entity keys)."""
    if field.type == FieldDescriptor.TYPE_STRING:
        limit = rules.max_chars or MAX_STRING_CHARS
        pattern = re.compile(rules.pattern) if rules.pattern else None

        def strings(values: Any) -> bool:
            items = list(values)  # each read of a protobuf container makes new str objects
            if "\x00" in "".join(items) or max(map(len, items), default=0) > limit:
                return False
            return pattern is None or all(map(pattern.fullmatch, filter(None, items)))

        return strings
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == VALUE:
        kind = methodcaller("WhichOneof", "kind")
        return lambda values: _TEXT_ARMS.isdisjoint(map(kind, values))
    return None


def _value_check(field: FieldDescriptor, rules: field_rules_pb2.FieldRules) -> Check | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        pattern = re.compile(rules.pattern) if rules.pattern else None
        limit = rules.max_chars or MAX_STRING_CHARS
        return lambda value, path: _check_string(value, path, limit, pattern)
    if field.type == FieldDescriptor.TYPE_BYTES:
        limit = rules.max_chars
        return (lambda value, path: _check_length(value, path, limit)) if limit else None
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_check(field)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message_check(field.message_type)
    if field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64):
        low = rules.min if rules.HasField("min") else None
        high = rules.max if rules.HasField("max") else None
        if low is None and high is None:
            return None
        return lambda value, path: _check_int(value, path, low, high)
    return None


def _message_check(descriptor: Descriptor) -> Check:
    special = _SPECIAL.get(descriptor.full_name)
    if special is not None:
        return special
    return lambda value, path: _validator(descriptor)(value, path)


def _rules(field: FieldDescriptor) -> field_rules_pb2.FieldRules:
    options = field.GetOptions()
    if options.HasExtension(field_rules_pb2.rules):
        return options.Extensions[field_rules_pb2.rules]
    return field_rules_pb2.FieldRules()


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return bool(field.is_repeated and message is not None and message.GetOptions().map_entry)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _no_check(_value: Any, _path: str) -> None:
    return None


# --- the checks ---------------------------------------------------------------------------


def _check_string(value: str, path: str, limit: int, pattern: re.Pattern[str] | None) -> None:
    if "\x00" in value:
        raise RequestRejected(path, "must not contain NUL characters (\\x00)")
    if len(value) > limit:
        raise RequestRejected(path, f"at most {limit} characters, got {len(value)}")
    if pattern is not None and value and not pattern.fullmatch(value):
        raise RequestRejected(path, f"{quoted(value)} must match {pattern.pattern}")


def _check_length(value: bytes, path: str, limit: int) -> None:
    if len(value) > limit:
        raise RequestRejected(path, f"at most {limit} bytes, got {len(value)}")


def _check_int(value: int, path: str, low: int | None, high: int | None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{'' if low is None else low}..{'' if high is None else high}"
        raise RequestRejected(path, f"{value} is outside {bounds}")


def _enum_check(field: FieldDescriptor) -> Check:
    enum = field.enum_type
    names = enum.values_by_number

    def check(value: int, path: str) -> None:
        if value not in names:
            known = ", ".join(v.name for v in enum.values)
            raise RequestRejected(path, f"{value} is not a {enum.name} value; use one of {known}")

    return check


def _check_timestamp(value: Message, path: str) -> None:
    seconds, nanos = value.seconds, value.nanos  # type: ignore[attr-defined]
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        raise RequestRejected(
            path, f"seconds {seconds} is outside years 0001-9999 (RFC 3339 timestamps)"
        )
    if not 0 <= nanos < NANOS_PER_SECOND:
        raise RequestRejected(path, f"nanos {nanos} must be in [0, 999999999]")


def _check_duration(value: Message, path: str) -> None:
    seconds, nanos = value.seconds, value.nanos  # type: ignore[attr-defined]
    if not -NANOS_PER_SECOND < nanos < NANOS_PER_SECOND or (seconds * nanos < 0):
        raise RequestRejected(path, f"nanos {nanos} must be within ±999999999, signed as seconds")
    if abs(seconds) > MAX_SPAN_SECONDS:
        raise RequestRejected(path, f"{seconds}s is longer than 100 years")


def _check_window(value: Message, path: str) -> None:
    start, end = value.start_time, value.end_time  # type: ignore[attr-defined]
    has_start, has_end = value.HasField("start_time"), value.HasField("end_time")
    if has_start:
        _check_timestamp(start, f"{path}.start_time")
    if has_end:
        _check_timestamp(end, f"{path}.end_time")
    if has_start and has_end:
        if (end.seconds, end.nanos) <= (start.seconds, start.nanos):
            raise RequestRejected(f"{path}.end_time", "must be after start_time")
        if end.seconds - start.seconds > MAX_SPAN_SECONDS:
            raise RequestRejected(path, "spans more than 100 years")


def _check_field_mask(value: Message, path: str) -> None:
    paths = value.paths  # type: ignore[attr-defined]
    if len(paths) > 1000:
        raise RequestRejected(f"{path}.paths", "at most 1000 paths")
    for index, item in enumerate(paths):
        _check_string(item, f"{path}.paths[{index}]", 256, None)


def _check_struct(value: Message, path: str) -> None:
    for key, item in _struct_items(value, path):
        _check_json_value(item, f"{path}.{key}" if len(key) < 64 else path, 1)


def _struct_items(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if len(value.fields) > MAX_ITEMS:
        raise RequestRejected(path, f"at most {MAX_ITEMS} entries")
    for key, item in value.fields.items():
        _check_string(key, f"{path} key", MAX_STRING_CHARS, None)
        yield key, item


def _check_json_value(value: Any, path: str, depth: int) -> None:
    if depth > MAX_STRUCT_DEPTH:
        raise RequestRejected(path, f"nests deeper than {MAX_STRUCT_DEPTH} levels")
    kind = value.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(value.number_value):
        raise RequestRejected(path, f"{value.number_value} is not a finite number (JSON has none)")
    if kind == "string_value":
        _check_string(value.string_value, path, MAX_STRING_CHARS, None)
    elif kind == "struct_value":
        for key, item in _struct_items(value.struct_value, path):
            _check_json_value(item, f"{path}.{key}" if len(key) < 64 else path, depth + 1)
    elif kind == "list_value":
        items = value.list_value.values
        if len(items) > MAX_ITEMS:
            raise RequestRejected(path, f"at most {MAX_ITEMS} entries")
        for index, item in enumerate(items):
            _check_json_value(item, f"{path}[{index}]", depth + 1)


# Feature values are the bulk of serving requests (1,000 keys, 10,000 rows): only the arms
# that can carry text need a look.
_TEXT_ARMS = frozenset(
    {"string_value", "string_list_value", "string_string_map_value", "string_double_map_value"}
)


def _check_value(value: Any, path: str) -> None:
    if value.WhichOneof("kind") in _TEXT_ARMS:
        _validator(value.DESCRIPTOR)(value, path)


_SPECIAL: dict[str, Check] = {
    VALUE: _check_value,
    TIMESTAMP: _check_timestamp,
    DURATION: _check_duration,
    STRUCT: _check_struct,
    FIELD_MASK: _check_field_mask,
}
# Checks of a whole message on top of its fields' own.
_WHOLE: dict[str, Callable[[Message, str], None]] = {TIME_WINDOW: _check_window}
