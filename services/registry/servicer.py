"""gRPC edge of the registry: request messages in, domain calls, response messages out.

The six resource kinds share one shape of standard methods, so the handlers are built per
kind from one template instead of thirty hand-written near-copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from recstack.registry.v1 import registry_service_pb2 as pb
from recstack.registry.v1 import registry_service_pb2_grpc

from services.registry.adapters.repository import KINDS_BY_KEY
from services.registry.kinds import ALL_KINDS, Kind
from services.registry.registry import Declared, Registry
from shared.errors import InvalidArgument

Handler = Callable[[Any, Any, grpc.ServicerContext], Any]


def _message_name(kind: Kind) -> str:
    return kind.message.DESCRIPTOR.name


def _plural_field(kind: Kind) -> str:
    return {"entity": "entities"}.get(kind.key, f"{kind.key}s")


def _handlers(kind: Kind) -> dict[str, Handler]:
    message = _message_name(kind)
    plural = _plural_field(kind)
    plural_message = "".join(part.capitalize() for part in plural.split("_"))
    response = {
        verb: getattr(pb, f"{verb}{message}Response") for verb in ("Create", "Get", "Update")
    }

    def create(self: RegistryServicer, request: Any, _context: grpc.ServicerContext) -> Any:
        resource = self.registry.create(
            kind,
            getattr(request, "parent", ""),
            getattr(request, f"{kind.key}_id"),
            getattr(request, kind.key),
            request.validate_only,
        )
        return response["Create"](**{kind.key: resource})

    def get(self: RegistryServicer, request: Any, _context: grpc.ServicerContext) -> Any:
        resource = self.registry.get(kind, request.name, getattr(request, "version", 0))
        return response["Get"](**{kind.key: resource})

    def list_(self: RegistryServicer, request: Any, _context: grpc.ServicerContext) -> Any:
        page = self.registry.list(
            kind,
            getattr(request, "parent", ""),
            request.page_size,
            request.page_token,
            request.filter,
        )
        return getattr(pb, f"List{plural_message}Response")(
            **{plural: page.items, "next_page_token": page.next_page_token}
        )

    def update(self: RegistryServicer, request: Any, _context: grpc.ServicerContext) -> Any:
        resource = self.registry.update(
            kind, getattr(request, kind.key), list(request.update_mask.paths)
        )
        return response["Update"](**{kind.key: resource})

    def delete(self: RegistryServicer, request: Any, _context: grpc.ServicerContext) -> Any:
        self.registry.delete(kind, request.name, request.etag, getattr(request, "version", 0))
        return getattr(pb, f"Delete{message}Response")()

    return {
        f"Create{message}": create,
        f"Get{message}": get,
        f"List{plural_message}": list_,
        f"Update{message}": update,
        f"Delete{message}": delete,
    }


class RegistryServicer(registry_service_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def Apply(self, request: pb.ApplyRequest, context: grpc.ServicerContext) -> pb.ApplyResponse:
        steps = self.registry.apply(
            request.parent,
            [_declared(index, item) for index, item in enumerate(request.definitions)],
            request.validate_only,
            request.prune,
        )
        return pb.ApplyResponse(
            steps=[
                pb.PlanStep(
                    name=step.name,
                    action=pb.PlanStep.Action.Value(f"ACTION_{step.action.value}"),
                    changed_fields=step.changed_fields,
                )
                for step in steps
            ],
            applied=not request.validate_only,
        )

    def ListChanges(
        self, request: pb.ListChangesRequest, context: grpc.ServicerContext
    ) -> pb.ListChangesResponse:
        changes, revision, head = self.registry.changes(request.since_revision, request.page_size)
        return pb.ListChangesResponse(
            changes=[pb.Change(revision=c.revision, name=c.name) for c in changes],
            revision=revision,
            head_revision=head,
        )


def _declared(index: int, definition: pb.Definition) -> Declared:
    arm = definition.WhichOneof("resource")
    if arm is None:
        raise InvalidArgument(f"definitions[{index}]", "set one resource")
    return Declared(KINDS_BY_KEY[arm], definition.id, getattr(definition, arm))


for _kind in ALL_KINDS:
    for _name, _handler in _handlers(_kind).items():
        setattr(RegistryServicer, _name, _handler)
