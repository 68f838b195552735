"""Hypothesis strategies for any protobuf message, built from its descriptor, and every RPC of
every recstack service, discovered from the generated modules.

Each field may be unset or take an ordinary or an edge value: empty, huge and NUL-bearing
strings, non-BMP text, trailing newlines, extreme and negative integers, NaN and infinities,
enum numbers with no name, Timestamps outside years 1-9999 or with nanos outside [0, 1e9),
Durations of millennia. Messages nest (oneofs, maps and repeated fields included) down to a
bounded depth. Strings are drawn partly from resource-shaped values (`projects/fuzz/...`) so
requests get past name parsing into the code behind it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import recstack
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MAX_DEPTH = 4
FUZZ_PROJECT = "fuzz"
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
EDGE_INTEGERS = [0, 1, -1, 2, 7, 1000, 2**31 - 1, 2**31, -(2**31), 2**53, 2**63 - 1, -(2**63)]
EDGE_STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "fuzz\n",
    "fuzz",
    "p1",
    "user_id",
    "x" * 70_000,
    "\U0001f600\U0001d518",
    "\ud7ff",
    " ",
    "*",
    "a:b",
    "a:*",
    "v@99999999999999999999:f",
    "2026-04-02",
    "2026-13-45",
    "0001-01-01",
    "9999-12-31",
    "99999999999999999999999",
    "-1",
    "state=STATE_FAILED",
    'description:"x',
    f"projects/{FUZZ_PROJECT}",
    f"projects/{FUZZ_PROJECT}/featureViews/v",
    f"projects/{FUZZ_PROJECT}/featureViews/v/jobs/0123456789abcdef",
    f"projects/{FUZZ_PROJECT}/featureViews/v/materializationSettings",
    f"projects/{FUZZ_PROJECT}/models/m",
    f"projects/{FUZZ_PROJECT}/models/m/versions/1",
    f"projects/{FUZZ_PROJECT}/models/m/versions/99999999999999999",
    f"projects/{FUZZ_PROJECT}/entities/e",
    f"projects/{FUZZ_PROJECT}/modelFeatureSets/s",
    "projects/fuzz\n",
    "scenes/s",
    "experiments/x",
    "/etc/passwd",
    "../../x",
    "SELECT 1",
]
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
EDGE_SECONDS = [MIN_SECONDS - 1, MIN_SECONDS, 0, 1_775_000_000, MAX_SECONDS, MAX_SECONDS + 1]
EDGE_SECONDS += [-(2**62), 2**62, 315_576_000_001, -315_576_000_001]
EDGE_NANOS = [0, 1, 999_999_999, 1_000_000_000, -1, -999_999_999, 2**31 - 1]


@dataclass(frozen=True)
class Rpc:
    """One method of a service, as the fuzz tests call it."""

    service: str
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def request_class(self) -> type[Message]:
        return GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return GetMessageClass(self.method.output_type)

    def __str__(self) -> str:
        return f"{self.service.split('.')[1]}.{self.method.name}"


def every_rpc() -> list[Rpc]:
    """Every method of every service in the generated `recstack` packages."""
    rpcs = []
    for module in _service_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            rpcs += [Rpc(service.full_name, method) for method in service.methods]
    return sorted(rpcs, key=str)


def _service_modules() -> Iterator[object]:
    # The generated packages are namespace packages (no __init__.py): found by file name.
    for root in map(Path, recstack.__path__):
        for path in sorted(root.rglob("*_pb2.py")):
            name = ".".join(("recstack", *path.relative_to(root).with_suffix("").parts))
            module = importlib.import_module(name)
            if module.DESCRIPTOR.services_by_name:  # type: ignore[attr-defined]
                yield module


@cache
def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with any subset of fields set to any value."""
    special = _SPECIAL.get(descriptor.full_name)
    if special is not None:
        return special()
    cls = GetMessageClass(descriptor)
    fields = {
        field.name: st.none() | _field_values(field, depth)
        for field in descriptor.fields
        if depth < MAX_DEPTH or field.type != FieldDescriptor.TYPE_MESSAGE
    }
    return st.fixed_dictionaries(fields).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict[str, object]) -> Message:
    message = cls()
    for name, value in values.items():
        if value is None:
            continue
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():  # type: ignore[attr-defined]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:  # type: ignore[attr-defined]
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[object]:
    if _is_map(field):
        entry = field.message_type
        keys = _scalar(entry.fields_by_name["key"], depth)
        return st.dictionaries(keys, _single(entry.fields_by_name["value"], depth), max_size=3)
    single = _single(field, depth)
    if field.is_repeated:
        # Past the 1,000 most RPCs allow: one value repeated (drawing 1,001 costs too much).
        return st.lists(single, max_size=3) | single.map(lambda value: [value] * 1001)
    return single


def _single(field: FieldDescriptor, depth: int) -> st.SearchStrategy[object]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return st.deferred(lambda: messages(field.message_type, depth + 1))
    return _scalar(field, depth)


def _scalar(field: FieldDescriptor, _depth: int) -> st.SearchStrategy[object]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return st.sampled_from(EDGE_STRINGS) | st.text(max_size=12) | _ids()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = [value.number for value in field.enum_type.values]
        return st.sampled_from([*numbers, 99, -7])
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.floats(width=width) | st.sampled_from([0.0, -1.0, 1e300, 5.5])
    low, high = _integer_range(field)
    edges = [value for value in EDGE_INTEGERS if low <= value <= high]
    return st.sampled_from(edges) | st.integers(low, high)


def _ids() -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


def _integer_range(field: FieldDescriptor) -> tuple[int, int]:
    if field.cpp_type == FieldDescriptor.CPPTYPE_INT32:
        return INT32
    if field.cpp_type == FieldDescriptor.CPPTYPE_UINT32:
        return 0, 2**32 - 1
    if field.cpp_type == FieldDescriptor.CPPTYPE_UINT64:
        return 0, 2**64 - 1
    return INT64


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return bool(field.is_repeated and message is not None and message.GetOptions().map_entry)


def _time_like(full_name: str) -> st.SearchStrategy[Message]:
    from google.protobuf import duration_pb2, timestamp_pb2

    cls = timestamp_pb2.Timestamp if full_name.endswith("Timestamp") else duration_pb2.Duration
    seconds = st.sampled_from(EDGE_SECONDS) | st.integers(MIN_SECONDS, MAX_SECONDS)
    nanos = st.sampled_from(EDGE_NANOS) | st.integers(0, 999_999_999)
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)


def _json_values() -> st.SearchStrategy[object]:
    scalars = (
        st.none()
        | st.booleans()
        | st.floats()
        | st.sampled_from(EDGE_STRINGS[:12])
        | st.text(max_size=8)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=8,
    )


def _structs() -> st.SearchStrategy[Message]:
    from google.protobuf import struct_pb2

    def build(values: dict[str, object]) -> Message:
        struct = struct_pb2.Struct()
        struct.update(values)
        return struct

    return st.dictionaries(
        st.sampled_from(["features", "a", "\x00", "x"]) | st.text(max_size=6),
        _json_values(),
        max_size=3,
    ).map(build)


def _field_masks() -> st.SearchStrategy[Message]:
    from google.protobuf import field_mask_pb2

    paths = st.sampled_from(["description", "name", "etag", "nope", "a.b", "", "tags", "\x00"])
    return st.lists(paths, max_size=3).map(lambda p: field_mask_pb2.FieldMask(paths=p))


_SPECIAL = {
    "google.protobuf.Timestamp": lambda: _time_like("Timestamp"),
    "google.protobuf.Duration": lambda: _time_like("Duration"),
    "google.protobuf.Struct": _structs,
    "google.protobuf.FieldMask": _field_masks,
}
