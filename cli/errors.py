"""Failures the CLI reports as one message on stderr with an exit status, never a traceback."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Maps a request field path (e.g. `definitions[3].id`) to where the user wrote it, or None.
Locator = Callable[[str], str | None]

EXIT_ERROR = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A failure the user can act on; `exit_code` is the process status."""

    exit_code = EXIT_ERROR


class UsageError(CliError):
    """The command line itself is wrong (same status as argparse's own usage errors)."""

    exit_code = EXIT_USAGE


class DefinitionError(CliError):
    """A YAML definition that cannot become a resource; the text says where it is."""

    def __init__(self, location: str, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location


class RpcFailed(CliError):
    """A call answered with an error status."""

    def __init__(
        self,
        error: grpc.RpcError,
        address: str,
        locate: Locator | None = None,
        service: ServiceHint | None = None,
    ) -> None:
        super().__init__(describe_rpc_error(error, address, locate, service))
        self.code: grpc.StatusCode = error.code()


class ServiceHint(Protocol):
    """How to point the CLI at a service (cli.connection.Service)."""

    label: str
    flag: str
    env: str


def describe_rpc_error(
    error: grpc.RpcError,
    address: str,
    locate: Locator | None = None,
    service: ServiceHint | None = None,
) -> str:
    """`CODE: message`, then the BadRequest fields and ErrorInfo reason when the status has them."""
    code: grpc.StatusCode = error.code()
    lines = [f"{code.name}: {error.details()}"]
    for detail in _details(error):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            lines += _field_lines(detail, locate)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason and info.reason != code.name:
                lines.append(f"  reason: {info.reason}")
    if code == grpc.StatusCode.UNAVAILABLE:
        label, flag, env = (
            (service.label, service.flag, service.env)
            if service
            else ("registry", "--registry", "RECSTACK_REGISTRY_ADDR")
        )
        lines.append(f"  hint: is the {label} running at {address}? Set {flag} or {env}.")
    return "\n".join(lines)


def _details(error: grpc.RpcError) -> list[any_pb2.Any]:
    # Errors raised by the channel itself (connection refused, deadline) carry no rich status;
    # a status whose code disagrees with the call's makes from_call raise ValueError.
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):
        return []
    return list(status.details) if status is not None else []


def _field_lines(detail: any_pb2.Any, locate: Locator | None) -> list[str]:
    request = error_details_pb2.BadRequest()
    detail.Unpack(request)
    lines = []
    for violation in request.field_violations:
        where = locate(violation.field) if locate else None
        suffix = f" (in {where})" if where else ""
        lines.append(f"  field: {violation.field}{suffix}")
    return lines


def definition_index(field_path: str) -> int | None:
    """The N of a `definitions[N]…` field path from an Apply error, if it has one."""
    match = re.match(r"definitions\[(\d+)\]", field_path)
    return int(match.group(1)) if match else None
