"""Registry commands: `apply`/`plan` of a feature repository, and `list`/`get`/`delete`."""

from __future__ import annotations

import argparse
from pathlib import Path

from google.protobuf.message import Message
from recstack.registry.v1 import registry_service_pb2 as pb

from cli import definitions, resources, scenes
from cli.connection import Connection, Context
from cli.errors import CliError, UsageError
from cli.output import JSON, document, resource_table, to_json
from cli.plan import render_plan

MAX_PAGE_SIZE = 1000  # the registry's documented maximum
KIND_HELP = ", ".join(rtype.word for rtype in resources.ALL) + " (or their plurals)"


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add this group's commands to the top-level parser."""
    _add_apply(commands, common)
    _add_reads(commands, common)


def _add_apply(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    for command, validate_only, summary in (
        ("apply", False, "apply YAML definitions atomically and print what changed"),
        ("plan", True, "print what `apply` would change, writing nothing"),
    ):
        parser = commands.add_parser(
            command,
            parents=[common],
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. Reads every *.yaml/*.yml under DIR "
            "(several documents per file allowed); the project comes from --project or "
            "`project:` in DIR/recstack.yaml.",
        )
        parser.add_argument("directory", type=Path, metavar="DIR", help="feature repository")
        parser.add_argument("--project", help="project id (default: from DIR/recstack.yaml)")
        parser.add_argument(
            "--prune",
            action="store_true",
            help="delete resources of the project that DIR no longer declares",
        )
        parser.add_argument(
            "--recommend",
            metavar="HOST:PORT",
            help="recommend service for the repository's scenes and experiments "
            "(default: RECSTACK_RECOMMEND_ADDR or 127.0.0.1:50054)",
        )
        parser.set_defaults(handler=_apply, validate_only=validate_only)


def _add_reads(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    kinds = list(resources.BY_WORD)
    listing = commands.add_parser(
        "list", parents=[common], help="list resources of one kind", description="List resources."
    )
    listing.add_argument("kind", choices=kinds, metavar="KIND", help=KIND_HELP)
    listing.add_argument("--project", help="project id (not needed for projects)")
    listing.add_argument("--filter", default="", help='e.g. tags.team=ranking or owner:"ml"')
    listing.add_argument("--limit", type=_positive_int, help="show at most N resources")
    listing.set_defaults(handler=_list)

    for command, handler, summary in (
        ("get", _get, "show one resource"),
        ("delete", _delete, "delete one resource (refused while others depend on it)"),
    ):
        parser = commands.add_parser(
            command, parents=[common], help=summary, description=summary.capitalize() + "."
        )
        parser.add_argument("kind", choices=kinds, metavar="KIND", help=KIND_HELP)
        parser.add_argument(
            "reference", metavar="PROJECT/ID", help="e.g. shop/user_profile, or ID with --project"
        )
        parser.add_argument("--project", help="project id when PROJECT/ID gives only the ID")
        parser.add_argument(
            "--version", type=_positive_int, help="feature views only: one version (default latest)"
        )
        if command == "delete":
            parser.add_argument("--etag", default="", help="delete only if the etag still matches")
        parser.set_defaults(handler=handler)


# --- handlers --------------------------------------------------------------------------------


def _apply(args: argparse.Namespace, context: Context) -> int:
    repo = definitions.load(args.directory, args.project)
    request = pb.ApplyRequest(
        parent=resources.project_name(repo.project),
        definitions=repo.definitions,
        validate_only=args.validate_only,
        prune=args.prune,
    )
    with context.connect() as connection:
        response = connection.call("Apply", request, locate=repo.locate)
    if repo.served:
        # After the registry: a scene may name a view or model this apply creates. A scene the
        # recommend service refuses leaves the registry's part applied, and says so. (A
        # repository declaring no scene leaves the project's scenes alone, --prune or not.)
        try:
            with scenes.connect(context, args.recommend) as recommend:
                served = scenes.apply(
                    repo,
                    recommend,
                    validate_only=args.validate_only,
                    prune=args.prune,
                    registry_changes=any(
                        step.action != pb.PlanStep.Action.ACTION_UNCHANGED
                        for step in response.steps
                    ),
                )
        except CliError as error:
            if not args.validate_only and response.steps:
                raise CliError(f"{error}\n  (the registry definitions were applied)") from None
            raise
        response.steps.extend(served)
    context.echo(
        to_json(response) if context.output == JSON else render_plan(response, repo.project)
    )
    return 0


def _list(args: argparse.Namespace, context: Context) -> int:
    rtype = resources.by_word(args.kind)
    if rtype is not resources.PROJECT and not args.project:
        raise UsageError(f"--project is required to list {rtype.plural_word}")
    with context.connect() as connection:
        items = list_all(connection, rtype, args.project, args.filter, args.limit)
    if context.output == JSON:
        context.echo(to_json(rtype.list_response(items)))
    elif items:
        context.echo(resource_table(rtype, items))
    else:
        where = f" in project {args.project}" if rtype is not resources.PROJECT else ""
        context.echo(f"No {rtype.plural.replace('_', ' ')}{where}.")
    return 0


def list_all(
    connection: Connection,
    rtype: resources.ResourceType,
    project: str | None,
    filter_text: str = "",
    limit: int | None = None,
) -> list[Message]:
    """Every page of a List call, up to `limit` resources."""
    scope = {} if rtype is resources.PROJECT else {"parent": resources.project_name(project or "")}
    items: list[Message] = []
    token = ""
    while True:
        size = min(MAX_PAGE_SIZE, limit - len(items)) if limit else MAX_PAGE_SIZE
        request = rtype.request(
            "List", page_size=size, page_token=token, filter=filter_text, **scope
        )
        response = connection.call(rtype.rpc("List"), request)
        items += getattr(response, rtype.plural)
        token = response.next_page_token
        if not token or (limit and len(items) >= limit):
            return items


def _get(args: argparse.Namespace, context: Context) -> int:
    rtype = resources.by_word(args.kind)
    fields = {"name": resources.parse_reference(rtype, args.reference, args.project)}
    fields |= _version(rtype, args.version)
    with context.connect() as connection:
        response = connection.call(rtype.rpc("Get"), rtype.request("Get", **fields))
    resource = getattr(response, rtype.key)
    context.echo(to_json(resource) if context.output == JSON else document(resource))
    return 0


def _delete(args: argparse.Namespace, context: Context) -> int:
    rtype = resources.by_word(args.kind)
    name = resources.parse_reference(rtype, args.reference, args.project)
    fields = {"name": name, "etag": args.etag} | _version(rtype, args.version)
    with context.connect() as connection:
        response = connection.call(rtype.rpc("Delete"), rtype.request("Delete", **fields))
    if context.output == JSON:
        context.echo(to_json(response))
    else:
        context.echo(f"Deleted {name}{f' version {args.version}' if args.version else ''}.")
    return 0


def _version(rtype: resources.ResourceType, version: int | None) -> dict[str, int]:
    if version is None:
        return {}
    if not rtype.versioned:
        raise UsageError(f"--version applies to feature views, not {rtype.plural_word}")
    return {"version": version}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value
