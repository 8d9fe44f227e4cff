"""Small helpers to call the registry in tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as pb_grpc


async def register(stub: pb_grpc.RegistryServiceStub, name: str, data: bytes = b"weights", *,
                   chunk: int = 64 * 1024, **spec: object) -> pb.ModelVersion:
    spec.setdefault("kind", common_pb2.MODEL_KIND_PREDICTIVE)

    async def messages() -> AsyncIterator[pb.RegisterModelVersionRequest]:
        yield pb.RegisterModelVersionRequest(spec=pb.ModelVersionSpec(model_name=name, **spec))  # type: ignore[arg-type]
        for start in range(0, len(data), chunk):
            yield pb.RegisterModelVersionRequest(chunk=data[start:start + chunk])

    response = await stub.RegisterModelVersion(messages())
    return response.model_version


def ref(name: str, version: int = 0, alias: str = "") -> pb.ModelVersionRef:
    if alias:
        return pb.ModelVersionRef(model_name=name, alias=alias)
    return pb.ModelVersionRef(model_name=name, version=version)
