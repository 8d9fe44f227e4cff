"""Small helpers to call the registry in tests: the raw RPC (tests of the registry's API see its status
codes), built from the registry client's chunk iterators."""

from __future__ import annotations

from flywheel.common.clients.registry import byte_chunks, upload_requests
from flywheel.common.clients.registry import version_ref as ref
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as pb_grpc

__all__ = ["ref", "register"]


async def register(stub: pb_grpc.RegistryServiceStub, name: str, data: bytes = b"weights", *,
                   chunk: int = 64 * 1024, **spec: object) -> pb.ModelVersion:
    """Register `data` as a new version of `name` (a predictive model unless `kind` says otherwise)."""
    spec.setdefault("kind", common_pb2.MODEL_KIND_PREDICTIVE)
    version_spec = pb.ModelVersionSpec(model_name=name, **spec)  # type: ignore[arg-type]
    response = await stub.RegisterModelVersion(upload_requests(version_spec, byte_chunks(data, chunk)))
    return response.model_version
