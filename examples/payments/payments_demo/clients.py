"""The platform, seen from the bank: the services the driver and its status page talk to over gRPC."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from payments_demo.config import Addresses
from payments_demo.generator import Transaction
from payments_demo.pipeline import FeatureRow


class Platform:
    """gRPC stubs of the services the driver talks to (one aio channel each, every call with a deadline)."""

    def __init__(self, addresses: Addresses, timeout: float = 10.0) -> None:
        from flywheel.common import rpc
        from flywheel.common.clients.registry import RegistryClient
        from flywheel.common.clients.retriever import RetrieverClient
        from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc
        from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc
        from flywheel.proto.inference import grpc_service_pb2_grpc
        from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc
        from flywheel.proto.registry.v1 import registry_service_pb2_grpc
        from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc

        self.addresses = addresses
        auth = addresses.client_auth()
        self._channels = {name: rpc.channel(getattr(addresses, f"{name}_addr"), default_timeout=timeout, auth=auth)
                          for name in ("registry", "featurestore", "trainer", "inference", "evaluator", "monitor")}
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self._channels["registry"])
        self.versions = RegistryClient(addresses.registry_addr, auth=auth, timeout=timeout, keep_channel=True)
        self.featurestore = feature_store_service_pb2_grpc.FeatureStoreServiceStub(self._channels["featurestore"])
        self.trainer = trainer_service_pb2_grpc.TrainerServiceStub(self._channels["trainer"])
        self.inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channels["inference"])
        self.evaluator = evaluator_service_pb2_grpc.EvaluatorServiceStub(self._channels["evaluator"])
        self.monitor = monitor_service_pb2_grpc.MonitorServiceStub(self._channels["monitor"])
        self.retriever = RetrieverClient(addresses.retriever_addr, auth=auth, timeout=60.0)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        await self.versions.close()
        await self.retriever.close()

    async def champion(self, model: str) -> int:
        """The registry's champion version of `model` (0 = none, or the model is unknown)."""
        return await self.versions.version_of(model, "champion")

    async def push(self, rows: Sequence[FeatureRow], chunk: int = 1000) -> int:
        """PushFeatures (online + offline, synchronously), per push source, in event-time order."""
        from flywheel.common.clients.featurestore import feature_value
        from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as fs

        by_source: dict[str, list[FeatureRow]] = {}
        for row in rows:
            by_source.setdefault(row.push_source, []).append(row)
        written = 0
        for source, group in by_source.items():
            for i in range(0, len(group), chunk):
                request = fs.PushFeaturesRequest(push_source=source)
                for row in group[i:i + chunk]:
                    push_row = request.rows.add(
                        entity_keys={k: feature_value(v) for k, v in row.entity_keys.items()},
                        values={k: feature_value(v) for k, v in row.values.items()})
                    push_row.event_time.FromDatetime(row.event_time)
                written += (await self.featurestore.PushFeatures(request, timeout=60)).rows_written
        return written

    async def infer(self, model: str, request_id: str, txns: Sequence[Transaction]) -> tuple[int, np.ndarray,
                                                                                             np.ndarray]:
        """Score payments by entity ids; (version that answered, probabilities, predicted labels)."""
        from flywheel.proto.inference import grpc_service_pb2 as ipb

        request = ipb.ModelInferRequest(model_name=model, id=request_id)
        for key in ("transaction_id", "customer_id", "merchant_id"):
            tensor = request.inputs.add(name=key, datatype="BYTES", shape=[len(txns)])
            tensor.contents.bytes_contents.extend(getattr(t, key).encode() for t in txns)
        response = await self.inference.ModelInfer(request)
        outputs = {}
        for i, out in enumerate(response.outputs):
            dtype = "<f4" if out.datatype == "FP32" else "<i8"
            if i < len(response.raw_output_contents):
                outputs[out.name] = np.frombuffer(response.raw_output_contents[i], dtype=dtype)
            elif out.datatype == "FP32":
                outputs[out.name] = np.array(out.contents.fp32_contents, dtype=np.float32)
            else:
                outputs[out.name] = np.array(out.contents.int64_contents, dtype=np.int64)
        return int(response.model_version or 0), outputs["probability"], outputs["label"].astype(bool)

    async def model_ready(self, model: str) -> bool:
        import grpc

        from flywheel.proto.inference import grpc_service_pb2 as ipb

        try:
            return (await self.inference.ModelReady(ipb.ModelReadyRequest(name=model), timeout=3)).ready
        except grpc.aio.AioRpcError:
            return False
