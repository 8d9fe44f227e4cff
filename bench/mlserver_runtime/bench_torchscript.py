"""MLServer custom runtime of the `inference` benchmark: the same TorchScript model Flywheel serves.

Loaded by MLServer (its own venv, bench/.venv-mlserver) from `implementation:
bench_torchscript.TorchScriptRuntime`; this folder is on MLServer's PYTHONPATH. It does what
Flywheel's scoring does and no more: input "numeric" FP32 [N, 30] -> torch.jit model(numeric,
categorical int64 [N, 0]) under inference_mode -> output "probability" FP32 [N].
"""

from __future__ import annotations

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from mlserver.utils import get_model_uri


class TorchScriptRuntime(MLModel):
    async def load(self) -> bool:
        # One intra-op thread, as Flywheel serves (its torch_threads default): with torch's default (one per
        # core) a few rows of this MLP take 0.1-0.6 ms of OpenMP wake-ups instead of ~45 µs, which would
        # compare thread pools, not servers.
        torch.set_num_threads(1)
        uri = await get_model_uri(self._settings)
        self._module = torch.jit.load(uri, map_location="cpu").eval()
        with torch.inference_mode():  # warm up, as Flywheel does before serving a version
            self._module(torch.zeros((1, 30), dtype=torch.float32), torch.zeros((1, 0), dtype=torch.int64))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        request_input = next(i for i in payload.inputs if i.name == "numeric")
        numeric = np.ascontiguousarray(NumpyCodec.decode_input(request_input), dtype=np.float32)
        numeric = numeric.reshape(-1, numeric.shape[-1])
        categorical = torch.zeros((numeric.shape[0], 0), dtype=torch.int64)
        with torch.inference_mode():
            probability = self._module(torch.from_numpy(numeric), categorical).numpy().astype(np.float32)
        # [N] as Flywheel answers (NumpyCodec.encode_output would make it [N, 1]).
        output = ResponseOutput(name="probability", datatype="FP32", shape=[len(probability)],
                                data=probability.reshape(-1).tolist())
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[output])
