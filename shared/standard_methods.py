"""The parts of the standard methods (AIP-131..135) every service that stores resources shares:
page sizes, opaque page tokens, etags, update masks and list filters, written once.

Page tokens are one scheme for every List RPC: the position after a page's last item, bound to
the list it came from (collection, parent and filter) and signed with an HMAC, so a token is
opaque to callers, and a foreign, edited or truncated one (or one from another list) is a clear
INVALID_ARGUMENT rather than a position the storage layer would misread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from shared.errors import Aborted, InvalidArgument, quoted

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Replicas of a service must accept each other's tokens; a deployment may set its own key
# (`RECSTACK_PAGE_TOKEN_KEY`). The position in a token is no secret: the signature makes a
# token tamper-evident, it does not hide it.
DEFAULT_TOKEN_KEY = b"recstack page token v1"
_SIGNATURE_BYTES = 12


def page_size(requested: int, field: str = "page_size") -> int:
    """The effective page size: default 50 for 0, at most 1000; negative is INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument(field, "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class PageTokens:
    """Issues and checks page tokens signed with `key`."""

    def __init__(self, key: bytes = DEFAULT_TOKEN_KEY) -> None:
        self._key = key

    def issue(self, scope: str, position: str) -> str:
        payload = json.dumps([scope, position], separators=(",", ":")).encode()
        signature = hmac.new(self._key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
        return base64.urlsafe_b64encode(signature + payload).decode().rstrip("=")

    def position(self, token: str, scope: str, field: str = "page_token") -> str | None:
        """The position a token of this list names; None for no token (the first page)."""
        if not token:
            return None
        foreign = InvalidArgument(
            field,
            "is not a token this server issued for this list: pass the `next_page_token` of "
            "the previous page unchanged, with the same parent and filter",
            reason="INVALID_PAGE_TOKEN",
        )
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise foreign from None
        signature, payload = raw[:_SIGNATURE_BYTES], raw[_SIGNATURE_BYTES:]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
        if not hmac.compare_digest(signature, expected):
            raise foreign
        issued_scope, position = json.loads(payload)
        if issued_scope != scope:
            raise foreign
        return str(position)


@dataclass(frozen=True)
class Page:
    items: list[Message]
    next_page_token: str


def list_page(
    fetch: Callable[[str | None, int], Sequence[T]],
    position_of: Callable[[T], str],
    *,
    scope: str,
    size: int,
    token: str,
    tokens: PageTokens,
) -> tuple[list[T], str]:
    """One page: `fetch(after, limit)` returns items after a position in list order; one
    more than the page is asked for, to know whether another page follows."""
    after = tokens.position(token, scope)
    found = list(fetch(after, size + 1))
    page, more = found[:size], len(found) > size
    return page, tokens.issue(scope, position_of(page[-1])) if more else ""


def check_etag(current: str, given: str, field: str, *, required: bool = False) -> None:
    """`given` must be the current etag (ABORTED otherwise); empty skips the check unless
    `required`."""
    if not given:
        if required:
            raise InvalidArgument(
                f"{field}.etag", "is required: send the etag of the version you read"
            )
        return
    if given != current:
        raise Aborted(
            f"{field}.etag {quoted(given)} is stale (current {quoted(current)}): read it again "
            "and retry",
            reason="ETAG_MISMATCH",
        )


def update_paths(
    descriptor: Descriptor, mask_paths: Sequence[str], output_only: frozenset[str], resource: str
) -> list[str]:
    """The top-level fields an update writes: the mask's, or every writable field when the
    mask is empty (a full replace). Unknown or output-only paths are INVALID_ARGUMENT."""
    fields = {field.name for field in descriptor.fields}
    paths = list(mask_paths) or sorted(fields - output_only)
    for path in paths:
        top = path.split(".")[0]
        if top not in fields:
            raise InvalidArgument(
                "update_mask", f"{resource} has no field {quoted(path)}; use {sorted(fields)}"
            )
        if top in output_only:
            raise InvalidArgument("update_mask", f"{quoted(path)} is output only")
    return paths


def copy_fields(source: Message, target: Message, paths: Sequence[str]) -> None:
    """Set each masked top-level field of `target` to `source`'s value (messages and repeated
    fields are replaced whole, an unset message clears it)."""
    for path in paths:
        top = path.split(".")[0]
        descriptor = source.DESCRIPTOR.fields_by_name[top]
        if descriptor.is_repeated:
            target.ClearField(top)
            getattr(target, top).MergeFrom(getattr(source, top))
        elif descriptor.message_type is not None:
            target.ClearField(top)
            if source.HasField(top):
                getattr(target, top).CopyFrom(getattr(source, top))
        else:
            setattr(target, top, getattr(source, top))


# --- filters (AIP-160, a small subset) -----------------------------------------------------

TERM = re.compile(
    r'\s*([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_-]+)?)\s*(!=|=|:)\s*("(?:[^"\\]|\\.)*"|\S+)\s*'
)
AND = re.compile(r"\s+AND\s+")
MAX_TERMS = 10


@dataclass(frozen=True)
class Condition:
    """One filter term: a field path (a top-level scalar, or one key of a map), `=`, `!=` or
    `:` (substring), and the value."""

    path: tuple[str, ...]
    operator: str
    value: str


def parse_filter(text: str, descriptor: Descriptor) -> list[Condition]:
    """`field=value`, `field!=value`, `field:text` joined by AND; enums by name, booleans as
    `true`/`false`, values bare or "quoted"."""
    if not text.strip():
        return []
    terms = AND.split(text.strip())
    if len(terms) > MAX_TERMS:
        raise InvalidArgument("filter", f"at most {MAX_TERMS} terms joined by AND")
    return [_condition(term, descriptor) for term in terms]


def _condition(term: str, descriptor: Descriptor) -> Condition:
    match = TERM.fullmatch(term)
    if match is None:
        raise InvalidArgument(
            "filter", f"{quoted(term)} is not `field=value`, `field!=value` or `field:text`"
        )
    path_text, operator, value = match.groups()
    path = tuple(path_text.split("."))
    _check_path(path, descriptor)
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise InvalidArgument("filter", f"{quoted(value)} is missing its closing quote")
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
