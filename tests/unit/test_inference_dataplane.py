"""Data plane without transports: batching splits results back to their requests; validation names fields."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from flywheel.common.errors import InvalidArgument
from flywheel.inference.batching import Batcher
from flywheel.inference.config import Route
from flywheel.inference.dataplane import DataPlane, InferRequest, InputTensor, ModelSlot
from flywheel.inference.model import load_artifact
from flywheel.inference.predlog import PredictionLog
from flywheel.inference.testing import build_predictive_artifact


async def test_batcher_scores_concurrent_requests_together() -> None:
    calls: list[int] = []

    def score(numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        calls.append(len(numeric))
        return numeric[:, 0].copy()
    batcher = Batcher(score, max_rows=64, max_wait_s=0.01)
    results = await asyncio.gather(*(batcher.submit(np.full((2, 1), i, np.float32), np.zeros((2, 0), np.int64))
                                     for i in range(20)))
    assert [r.tolist() for r in results] == [[i, i] for i in range(20)]
    assert len(calls) < 20 and sum(calls) == 40


async def test_validation_names_the_field_and_nan_numeric_is_allowed() -> None:
    model = load_artifact(build_predictive_artifact(n_numeric=2, vocab={"c": ["a"]}, hidden=(4,)), name="m", version=3)
    slot = ModelSlot("m", Route(), 1.0)
    slot.champion = model
    dp = DataPlane({"m": slot}, PredictionLog(None, max_input_values=10), max_batch_size=8)
    ok = await dp.infer(InferRequest("m", [InputTensor("numeric", "FP32", [1, 2], np.array([np.nan, 1], np.float32)),
                                           InputTensor("categorical", "BYTES", [1, 1], [b"zzz"])]))
    assert ok.model_version == "3" and np.isfinite(ok.outputs[0].data).all()
    with pytest.raises(InvalidArgument, match="categorical"):
        await dp.infer(InferRequest("m", [InputTensor("numeric", "FP32", [1, 2], np.zeros(2, np.float32))]))


def test_readiness_follows_the_components_like_grpc_health() -> None:
    from flywheel.common.supervise import HealthBoard

    dp = DataPlane({}, PredictionLog(None, max_input_values=10))
    assert not dp.ready()  # not started
    dp.started = True
    assert dp.ready()
    dp.components = HealthBoard()
    consumer = dp.components.reporter("consumer")
    assert not dp.ready()  # a component counts as down until it reports
    consumer(True)
    assert dp.ready()
    consumer(False)
    assert not dp.ready() and dp.live()  # down: not ready, still live
