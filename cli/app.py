"""`recstack`: the parser, the command groups and the one place errors become exit statuses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO

import pydantic

from cli import fg, materialize, models, registry, train
from cli.connection import CliSettings, Context
from cli.errors import EXIT_ERROR, EXIT_USAGE, CliError, UsageError
from cli.output import FORMATS, TABLE

# Each group adds its commands with `register(commands, common)`; a `materialize` group goes
# beside `registry` here.
COMMAND_GROUPS = (registry, materialize, train, models, fg)
EPILOG = """\
examples:
  recstack plan examples/feature_repo
  recstack apply examples/feature_repo --prune
  recstack list feature-views --project shop
  recstack get feature-view shop/user_profile --version 1 --output json
  recstack delete entity shop/user --etag 3f2a...
  recstack model activate shop/ranker 3

environment:
  RECSTACK_REGISTRY_ADDR    registry address (default 127.0.0.1:50051); --registry overrides it
  RECSTACK_AUTH_TOKEN       bearer token for services that require authentication
  RECSTACK_AUTH_TOKEN_FILE  or a file whose first non-empty line is that token
  RECSTACK_TLS_CA_FILE      CA bundle: connect with TLS and verify the server against it
  RECSTACK_TLS_SERVER_NAME  the name the server's certificate must carry (default: its host)
  RECSTACK_TIMEOUT_SECONDS  deadline of each call (default 30); --timeout overrides it
  RECSTACK_DEBUG            1 shows the traceback of an unexpected error

exit status: 0 success, 1 invalid definitions or a failed call, 2 usage error
"""


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run one command and return its exit status (never raises SystemExit).

    `stdout`/`stderr` default to the process's; tests pass their own so that nothing else
    writing to the process streams (an in-process server's logs) mixes into the output.
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help (0) and on usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    debug = False
    try:
        context = _context(args, out)
        debug = context.settings.debug
        return args.handler(args, context)
    except CliError as error:
        print(f"recstack: error: {error}", file=err)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if debug:
            raise
        print(
            f"recstack: unexpected error: {type(error).__name__}: {error}\n"
            "  (set RECSTACK_DEBUG=1 for the traceback)",
            file=err,
        )
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recstack",
        description="Define and inspect recstack feature-store resources in the registry.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    common = _common_options()
    for group in COMMAND_GROUPS:
        group.register(commands, common)
    return parser


def _common_options() -> argparse.ArgumentParser:
    # A parent parser, so the options go after the command: `recstack list … -o json`.
    common = argparse.ArgumentParser(add_help=False)
    options = common.add_argument_group("connection and output")
    options.add_argument("--registry", metavar="HOST:PORT", help="registry address")
    options.add_argument("-o", "--output", choices=FORMATS, default=TABLE, help="default: table")
    options.add_argument("--timeout", type=float, metavar="SECONDS", help="deadline of each call")
    options.add_argument("--tls", action="store_true", help="use TLS with the system's CA roots")
    options.add_argument("--tls-ca-file", type=Path, metavar="FILE", help="use TLS with this CA")
    return common


def _context(args: argparse.Namespace, out: TextIO) -> Context:
    overrides = {
        "registry_addr": args.registry,
        "timeout_seconds": args.timeout,
        "tls_ca_file": args.tls_ca_file,
    }
    try:
        settings = CliSettings(**{k: v for k, v in overrides.items() if v is not None})
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise UsageError(f"invalid settings: {problems}") from None
    return Context(settings, args.output, out, args.tls)
