"""gRPC edge of the registry: request messages in, domain calls, response messages out.

The resource kinds share one shape of standard methods, so their handlers are built per kind
from one template instead of dozens of hand-written near-copies. Model versions (numbered by
the server, with deployment methods) have handlers of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from recstack.registry.v1 import registry_service_pb2 as pb
from recstack.registry.v1 import registry_service_pb2_grpc

from services.registry.adapters.repository import KINDS_BY_KEY
from services.registry.kinds import ALL_KINDS, Kind
from services.registry.models import Activation, ModelRegistry
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
    def __init__(self, registry: Registry, models: ModelRegistry) -> None:
        self.registry = registry
        self.models = models

    def CreateModelVersion(
        self, request: pb.CreateModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.CreateModelVersionResponse:
        version = self.models.create(request.parent, request.model_version, request.validate_only)
        return pb.CreateModelVersionResponse(model_version=version)

    def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.GetModelVersionResponse:
        return pb.GetModelVersionResponse(model_version=self.models.get(request.name))

    def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelVersionsResponse:
        page = self.models.list(
            request.parent, request.page_size, request.page_token, request.filter
        )
        return pb.ListModelVersionsResponse(
            model_versions=page.items, next_page_token=page.next_page_token
        )

    def UpdateModelVersion(
        self, request: pb.UpdateModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.UpdateModelVersionResponse:
        version = self.models.update(request.model_version, list(request.update_mask.paths))
        return pb.UpdateModelVersionResponse(model_version=version)

    def DeleteModelVersion(
        self, request: pb.DeleteModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteModelVersionResponse:
        self.models.delete(request.name, request.etag)
        return pb.DeleteModelVersionResponse()

    def DeployModelVersion(
        self, request: pb.DeployModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.DeployModelVersionResponse:
        return pb.DeployModelVersionResponse(model_version=self.models.deploy(request.name))

    def ActivateModelVersion(
        self, request: pb.ActivateModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.ActivateModelVersionResponse:
        activation = self.models.activate(request.name, request.etag)
        return pb.ActivateModelVersionResponse(**_activation(activation))

    def RollbackModel(
        self, request: pb.RollbackModelRequest, context: grpc.ServicerContext
    ) -> pb.RollbackModelResponse:
        activation = self.models.rollback(request.name, request.etag)
        return pb.RollbackModelResponse(**_activation(activation))

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


def _activation(activation: Activation) -> dict[str, Any]:
    return {"model": activation.model, "model_version": activation.version}


def _declared(index: int, definition: pb.Definition) -> Declared:
    arm = definition.WhichOneof("resource")
    if arm is None:
        raise InvalidArgument(f"definitions[{index}]", "set one resource")
    return Declared(KINDS_BY_KEY[arm], definition.id, getattr(definition, arm))


for _kind in ALL_KINDS:
    for _name, _handler in _handlers(_kind).items():
        setattr(RegistryServicer, _name, _handler)
