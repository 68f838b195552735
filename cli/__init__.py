"""The `recstack` command line: declarative apply and reads of the registry over gRPC."""

from cli.app import main

__all__ = ["main"]
