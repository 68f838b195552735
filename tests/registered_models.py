"""A test's model in its own registry project, over gRPC: feature set, model, versions.

`RegisteredModel.add_version` registers a version and then writes its artifact into a model
repository the way training does (`training.artifacts.write_version`).
"""

from __future__ import annotations

import uuid

from recstack.common.v1 import value_pb2
from recstack.registry.v1 import (
    entity_pb2,
    feature_view_pb2,
    model_feature_set_pb2,
    model_pb2,
    project_pb2,
)
from recstack.registry.v1 import registry_service_pb2 as pb

from tests.models import V1_INPUTS, ranker_onnx, signature
from training.artifacts import write_version

VT = value_pb2.ValueType
State = model_pb2.ModelVersion.State
FV = feature_view_pb2.FeatureView
FG = {
    "features": [
        {
            "feature_type": "id_feature",
            "feature_name": "user_id",
            "expression": "user:user_id",
            "hash_bucket_size": 1000,
        },
        {
            "feature_type": "id_feature",
            "feature_name": "genres",
            "expression": "item:genres",
            "hash_bucket_size": 1000,
        },
        {"feature_type": "raw_feature", "feature_name": "age", "expression": "user:age"},
    ]
}
FG_WITH_HOUR = {
    "features": [
        *FG["features"],
        {"feature_type": "raw_feature", "feature_name": "hour", "expression": "context:hour"},
    ]
}


class RegisteredModel:
    """One test's model in its own project, with helpers to add versions."""

    def __init__(self, stub, repository) -> None:
        self.stub = stub
        self.repository = repository
        self.project = f"m_{uuid.uuid4().hex[:8]}"
        self.name = f"projects/{self.project}/models/ranker"
        parent = f"projects/{self.project}"
        stub.CreateProject(
            pb.CreateProjectRequest(project_id=self.project, project=project_pb2.Project())
        )
        fields = {
            "user": [("age", VT.VALUE_TYPE_FLOAT)],
            "item": [("genres", VT.VALUE_TYPE_INT64_LIST)],
        }
        for entity, extra in fields.items():
            stub.CreateEntity(
                pb.CreateEntityRequest(
                    parent=parent,
                    entity_id=entity,
                    entity=entity_pb2.Entity(join_key=f"{entity}_id", key_type=VT.VALUE_TYPE_INT64),
                )
            )
            view = FV(entity=entity, type=FV.TYPE_REAL_TIME)
            for name, value_type in [(f"{entity}_id", VT.VALUE_TYPE_INT64), *extra]:
                view.fields.add(name=name, value_type=value_type)
            stub.CreateFeatureView(
                pb.CreateFeatureViewRequest(
                    parent=parent, feature_view_id=f"{entity}_profile", feature_view=view
                )
            )
        stub.CreateModelFeatureSet(
            pb.CreateModelFeatureSetRequest(
                parent=parent,
                model_feature_set_id="ranker_features",
                model_feature_set=model_feature_set_pb2.ModelFeatureSet(
                    features=["user_profile:age", "item_profile:genres"], entities=["user", "item"]
                ),
            )
        )
        stub.CreateModel(
            pb.CreateModelRequest(parent=parent, model_id="ranker", model=model_pb2.Model())
        )

    def spec(self, inputs=V1_INPUTS, fg=FG) -> model_pb2.ModelVersion:
        version = model_pb2.ModelVersion(
            model_feature_set=f"projects/{self.project}/modelFeatureSets/ranker_features",
            trainer="dnn",
            signature=signature(inputs),
            metrics={"probs_ctr_auc": 0.7},
        )
        version.fg_config.update(fg)
        return version

    def add_version(self, inputs=V1_INPUTS, fg=FG, artifact_inputs=None, write=True):
        """Register a version, then write its artifact as training does (seed = number)."""
        request = pb.CreateModelVersionRequest(
            parent=self.name, model_version=self.spec(inputs, fg)
        )
        created = self.stub.CreateModelVersion(request).model_version
        if write:
            artifact = signature(artifact_inputs or inputs)
            onnx_model = ranker_onnx(artifact, seed=created.version)
            write_version(self.repository, created.triton_model_name, onnx_model, artifact)
        return created

    def get(self) -> model_pb2.Model:
        return self.stub.GetModel(pb.GetModelRequest(name=self.name)).model

    def version(self, number: int) -> model_pb2.ModelVersion:
        name = f"{self.name}/versions/{number}"
        return self.stub.GetModelVersion(pb.GetModelVersionRequest(name=name)).model_version

    def states(self) -> dict[int, str]:
        listed = self.stub.ListModelVersions(pb.ListModelVersionsRequest(parent=self.name))
        return {
            v.version: State.Name(v.state).removeprefix("STATE_") for v in listed.model_versions
        }

    def deploy(self, version) -> model_pb2.ModelVersion:
        request = pb.DeployModelVersionRequest(name=version.name)
        return self.stub.DeployModelVersion(request).model_version

    def activate(self, version, etag=""):
        request = pb.ActivateModelVersionRequest(name=version.name, etag=etag)
        return self.stub.ActivateModelVersion(request)

    def rollback(self):
        return self.stub.RollbackModel(pb.RollbackModelRequest(name=self.name))
