"""`python -m shared.healthcheck HOST:PORT [SERVICE]`: exit 0 when the server says SERVING.

Used by container health checks and `make status`; Kubernetes uses its native gRPC probe.
Health checks need no token; with TLS on, the channel takes the service's own client settings
(`RECSTACK_CLIENT__TLS_CA_FILE`, `RECSTACK_CLIENT__TLS_SERVER_NAME`).
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.channels import ClientSettings, open_channel


class HealthcheckSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSTACK_", env_nested_delimiter="__")

    client: ClientSettings = ClientSettings()


def check(
    address: str, service: str = "", timeout_s: float = 2.0, client: ClientSettings | None = None
) -> str:
    """The health status name (`SERVING`, `NOT_SERVING`, ...), or `UNREACHABLE`."""
    # One attempt: a probe reports what it sees now; its caller polls.
    settings = (client or ClientSettings()).model_copy(
        update={"token_file": None, "max_attempts": 1}
    )
    with open_channel(address, settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m shared.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    client = HealthcheckSettings().client
    status = check(args[0], args[1] if len(args) > 1 else "", client=client)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
