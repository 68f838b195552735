"""`recstack model`: models and their versions; deploying, activating and rolling back versions.

Models live in the registry, so these commands use the registry's connection settings
(--registry or RECSTACK_REGISTRY_ADDR, credentials, TLS, deadline). Versions are created by
training, not here. Deploy, activate and rollback wait for Triton to load a version, so they
have no client deadline unless --timeout (or RECSTACK_TIMEOUT_SECONDS) sets one; the
registry bounds them itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from google.protobuf.message import Message
from recstack.registry.v1 import model_pb2
from recstack.registry.v1 import registry_service_pb2 as pb

from cli import resources
from cli.connection import Connection, Context
from cli.friendly import short_enum
from cli.materialize import format_time, whole_number
from cli.output import JSON, document, resource_table, table, to_json
from cli.registry import MAX_PAGE_SIZE, list_all

ModelVersion = model_pb2.ModelVersion
STATE = ModelVersion.State.DESCRIPTOR
MESSAGE_WIDTH = 60
EPILOG = """\
examples:
  recstack model list shop
  recstack model get shop/ranker
  recstack model get shop/ranker --version 3 -o json
  recstack model versions shop/ranker --filter state=STATE_DEPLOYED
  recstack model deploy shop/ranker 3
  recstack model activate shop/ranker 3
  recstack model rollback shop/ranker

A version is REGISTERED by training, DEPLOYED once Triton has loaded it and its tensors match
its signature, ACTIVE while it serves the model's traffic, RETIRED once unloaded, FAILED when
Triton could not load it (the reason is in its message). Activating deploys first when
needed; the previously active version stays loaded, and `rollback` reactivates it.

exit status: 0 success, 1 a failed call (e.g. FAILED_PRECONDITION: no previous version, a
version Triton cannot load or whose signature differs), 2 usage error
"""


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `recstack model COMMAND …` to the top-level parser."""
    group = commands.add_parser(
        "model",
        help="list models and their versions; deploy, activate and roll back versions",
        description="Inspect models and their versions, deploy versions to Triton, activate "
        "one and roll back to the previous one.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    parents = [common]

    listing = _command(subcommands, parents, "list", _list, "list a project's models")
    listing.add_argument("project", metavar="PROJECT", help="project id")
    _add_paging(listing, "models")

    get = _command(subcommands, parents, "get", _get, "show a model, or one of its versions")
    _add_model(get)
    get.add_argument("--version", type=whole_number(1), help="show this version instead")

    versions = _command(
        subcommands, parents, "versions", _versions, "list a model's versions, newest first"
    )
    _add_model(versions)
    _add_paging(versions, "versions")

    for name, handler, summary in (
        ("deploy", _deploy, "load a version into Triton and check its signature"),
        ("activate", _activate, "make a version the active one (deploying it first if needed)"),
    ):
        parser = _command(subcommands, parents, name, handler, summary)
        _add_model(parser)
        parser.add_argument("version", type=whole_number(1), metavar="VERSION", help="e.g. 3")
        if name == "activate":
            _add_etag(parser)

    rollback = _command(
        subcommands, parents, "rollback", _rollback, "reactivate the previously active version"
    )
    _add_model(rollback)
    _add_etag(rollback)


def _command(
    subcommands: argparse._SubParsersAction,
    parents: list[argparse.ArgumentParser],
    name: str,
    handler: Callable[[argparse.Namespace, Context], int],
    summary: str,
) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(
        name, parents=parents, help=summary, description=f"{summary[0].upper()}{summary[1:]}."
    )
    parser.set_defaults(handler=handler)
    return parser


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="PROJECT/MODEL", help="e.g. shop/ranker")
    parser.add_argument("--project", help="project id when PROJECT/MODEL gives only the MODEL")


def _add_paging(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--filter", default="", help="e.g. state=STATE_ACTIVE or trainer=dnn")
    parser.add_argument("--limit", type=whole_number(1), help=f"show at most N {what}")


def _add_etag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--etag", default="", help="only if the model's etag still matches (else ABORTED)"
    )


# --- handlers --------------------------------------------------------------------------------


def _list(args: argparse.Namespace, context: Context) -> int:
    with context.connect() as connection:
        models = list_all(connection, resources.MODEL, args.project, args.filter, args.limit)
    if context.output == JSON:
        context.echo(to_json(resources.MODEL.list_response(models)))
    elif models:
        context.echo(resource_table(resources.MODEL, models))
    else:
        context.echo(f"No models in project {args.project}.")
    return 0


def _get(args: argparse.Namespace, context: Context) -> int:
    name = _model_name(args)
    with context.connect() as connection:
        if args.version is None:
            request: Message = pb.GetModelRequest(name=name)
            resource: Message = connection.call("GetModel", request).model
        else:
            request = pb.GetModelVersionRequest(name=f"{name}/versions/{args.version}")
            resource = connection.call("GetModelVersion", request).model_version
    context.echo(to_json(resource) if context.output == JSON else document(resource))
    return 0


def _versions(args: argparse.Namespace, context: Context) -> int:
    name = _model_name(args)
    with context.connect() as connection:
        versions = _all_versions(connection, name, args.filter, args.limit)
    if context.output == JSON:
        context.echo(to_json(pb.ListModelVersionsResponse(model_versions=versions)))
    elif versions:
        context.echo(version_table(versions))
    else:
        context.echo(f"{name} has no versions yet.")
    return 0


def _deploy(args: argparse.Namespace, context: Context) -> int:
    name = f"{_model_name(args)}/versions/{args.version}"
    with context.connect() as connection:
        request = pb.DeployModelVersionRequest(name=name)
        version = connection.call("DeployModelVersion", request, long=True).model_version
    if context.output == JSON:
        context.echo(to_json(version))
    else:
        context.echo(
            f"Deployed {name} to Triton as {version.triton_model_name} "
            f"(state {_state(version.state)})."
        )
    return 0


def _activate(args: argparse.Namespace, context: Context) -> int:
    name = f"{_model_name(args)}/versions/{args.version}"
    with context.connect() as connection:
        request = pb.ActivateModelVersionRequest(name=name, etag=args.etag)
        response = connection.call("ActivateModelVersion", request, long=True)
    context.echo(to_json(response) if context.output == JSON else activation_line(response))
    return 0


def _rollback(args: argparse.Namespace, context: Context) -> int:
    with context.connect() as connection:
        request = pb.RollbackModelRequest(name=_model_name(args), etag=args.etag)
        response = connection.call("RollbackModel", request, long=True)
    if context.output == JSON:
        context.echo(to_json(response))
    else:
        context.echo("Rolled back: " + activation_line(response))
    return 0


# --- display ---------------------------------------------------------------------------------


def activation_line(response: pb.ActivateModelVersionResponse | pb.RollbackModelResponse) -> str:
    model = response.model
    target = model.rollback_versions[0] if model.rollback_versions else None
    after = f"rollback goes to version {target}" if target else "no version to roll back to"
    return (
        f"{model.name} now serves version {model.active_version} "
        f"({response.model_version.triton_model_name}); {after}."
    )


def _state(state: int) -> str:
    return short_enum(STATE.values_by_number[state].name, STATE)


def _metrics(version: ModelVersion) -> str:
    return ", ".join(f"{key}={value:.4g}" for key, value in sorted(version.metrics.items()))


def _one_line(text: str, width: int = MESSAGE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


VERSION_COLUMNS: dict[str, Callable[[ModelVersion], object]] = {
    "VERSION": lambda v: v.version,
    "STATE": lambda v: _state(v.state),
    "TRAINER": lambda v: v.trainer,
    "METRICS": _metrics,
    "TRITON MODEL": lambda v: v.triton_model_name,
    "CREATED": lambda v: format_time(v.create_time),
    "MESSAGE": lambda v: _one_line(v.state_message),
}


def version_table(versions: Sequence[ModelVersion]) -> str:
    return table(
        list(VERSION_COLUMNS), [[f(v) for f in VERSION_COLUMNS.values()] for v in versions]
    )


# --- calls -----------------------------------------------------------------------------------


def _model_name(args: argparse.Namespace) -> str:
    return resources.parse_reference(resources.MODEL, args.model, args.project)


def _all_versions(
    connection: Connection, model: str, filter_text: str, limit: int | None
) -> list[ModelVersion]:
    versions: list[ModelVersion] = []
    token = ""
    while True:
        size = min(MAX_PAGE_SIZE, limit - len(versions)) if limit else MAX_PAGE_SIZE
        request = pb.ListModelVersionsRequest(
            parent=model, page_size=size, page_token=token, filter=filter_text
        )
        response = connection.call("ListModelVersions", request)
        versions += response.model_versions
        token = response.next_page_token
        if not token or (limit and len(versions) >= limit):
            return versions
