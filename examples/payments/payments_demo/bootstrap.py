"""The bootstrap: the history published, a first version trained over gRPC, automatic promotion switched on,
a champion set, and inference serving it, before any live payment is scored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from payments_demo.clients import Platform
from payments_demo.config import DriverConfig
from payments_demo.rag import COLLECTION, TENANT, ingest_policies
from payments_demo.traffic import Traffic

log = logging.getLogger(__name__)

# Failures of a first run that mean "the trainer has not consumed the history's labels yet".
RETRYABLE_RUN_FAILURES = ("labelled rows", "has only one class")


async def run_bootstrap(platform: Platform, traffic: Traffic, config: DriverConfig, *, session: str,
                        on_knowledge: Callable[[], None] | None = None) -> int:
    """History into the feature store and the trainer's labels, a first run, and a champion; returns it.

    Skips the training (not the history) when the model already has a champion, unless
    `retrain_on_start`: a restarted demo keeps serving what the loop promoted. `on_knowledge` is called once the
    policy documents are in their collection (the support assistant is set up from there, in the background).
    """
    if config.documents:
        await ingest_knowledge(platform)
        if on_knowledge is not None:
            on_knowledge()
    await traffic.publish_history()
    champion = await platform.champion(config.model)
    if champion and not config.retrain_on_start:
        log.info(f"bootstrap: {config.model} already has champion v{champion}; not training")
    else:
        start, end = traffic.training_window()
        version = await first_run(platform, config, start, end, note=f"payments demo bootstrap {session}")
        champion = await ensure_champion(platform, config, version)
    await wait_serving(platform, config)
    return champion


async def ingest_knowledge(platform: Platform) -> None:
    """The support assistant's knowledge: the bank's policy documents into their retrieval collection."""
    from flywheel.proto.retriever.v1 import retriever_service_pb2 as rpb

    results = await ingest_policies(platform.retriever)
    accepted = sum(r.status == rpb.INGEST_STATUS_ACCEPTED for r in results)
    log.info(f"knowledge: {len(results)} policy documents in {TENANT}/{COLLECTION} "
             f"({accepted} new or changed, queued for embedding)")


async def first_run(platform: Platform, config: DriverConfig, start: datetime, end: datetime, *, note: str) -> int:
    """StartRun over the history window with progress; retried while the trainer still lacks the labels.
    Returns the registered version."""
    from flywheel.proto.trainer.v1 import trainer_service_pb2 as tpb

    params = {"scenario": "live_stable", "note": note, **config.run_params}
    if config.epochs is not None:
        params["epochs"] = str(config.epochs)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.label_wait
    while True:
        request = tpb.StartRunRequest(model_name=config.model, params=params)
        request.window_start.FromDatetime(start)
        request.window_end.FromDatetime(end)
        run = (await platform.trainer.StartRun(request)).run
        log.info(f"training: run {run.run_id} of {config.model} on {start:%H:%M:%S}..{end:%H:%M:%S}")
        last_stage = ""
        async for update in platform.trainer.WatchRun(tpb.WatchRunRequest(run_id=run.run_id), timeout=900):
            run = update.run
            if update.stage and update.stage != last_stage:
                last_stage = update.stage
                log.info(f"training: {update.progress:4.0%} {update.stage}")
        if run.status == tpb.RUN_STATUS_SUCCEEDED:
            metrics = ", ".join(f"{k}={run.metrics[k]:.3f}" for k in ("roc_auc", "f1") if k in run.metrics)
            log.info(f"training: registered {config.model}:v{run.registered_version} ({metrics})")
            return int(run.registered_version)
        # The trainer consumes the labels just sent asynchronously: too few rows, or slices without a
        # fraud, mean it has not caught up yet (these failures come before any training, so retrying is cheap).
        if any(s in run.failure_reason for s in RETRYABLE_RUN_FAILURES) and loop.time() < deadline:
            log.info(f"training: the trainer has not seen enough labels yet ({run.failure_reason}); retrying")
            await asyncio.sleep(2.0)
            continue
        raise RuntimeError(f"the first training run failed: {run.failure_reason}")


async def ensure_champion(platform: Platform, config: DriverConfig, version: int) -> int:
    """Automatic promotion from now on; champion = the first version unless an evaluation promoted one.
    Returns the champion."""
    import grpc

    from flywheel.proto.registry.v1 import registry_service_pb2 as reg

    model = config.model
    await platform.registry.SetPromotionPolicy(reg.SetPromotionPolicyRequest(
        model_name=model, mode=reg.PROMOTION_MODE_AUTOMATIC))
    deadline = asyncio.get_running_loop().time() + config.champion_wait
    while True:  # an evaluator may promote the first version on its own
        champion = await platform.champion(model)
        if champion or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.5)
    if not champion:
        try:
            await platform.registry.SetAlias(reg.SetAliasRequest(model_name=model, alias="champion", version=version))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
        champion = await platform.champion(model)
        log.info(f"bootstrap: champion of {model} set to v{champion} (actor demo-driver)")
    return champion


async def wait_serving(platform: Platform, config: DriverConfig) -> None:
    """Until inference says the model is ready, at most `ready_wait` seconds."""
    deadline = asyncio.get_running_loop().time() + config.ready_wait
    while not await platform.model_ready(config.model):
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"inference at {platform.addresses.inference_addr} does not serve "
                               f"{config.model!r} after {config.ready_wait:.0f}s")
        await asyncio.sleep(0.5)
