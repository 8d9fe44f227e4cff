"""Composition root of the inference service: the OIP v2 gRPC and REST front doors (one event
loop), the generation doors (OpenAI-compatible REST on the HTTP port, gRPC GenerationService),
LLM applications (their operator API, prompt templates, grounded answers; flywheel/inference/apps),
model loading + hot swap from the registry, the models.promoted consumer, the prediction and
generation log publisher and the metrics endpoint.
"""

from __future__ import annotations

import argparse
import gc
import logging
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Gauge

from flywheel.common.auth import ANONYMOUS, Authenticator, TokenStore
from flywheel.common.clients.embedder import EmbedderClient
from flywheel.common.clients.guard import GuardClient
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.clients.retriever import RetrieverClient
from flywheel.common.db import Database
from flywheel.common.kafka import BoundedPublisher, ConsumerRunner
from flywheel.common.rpc import RpcServer
from flywheel.common.service import run_service
from flywheel.common.tasks import within
from flywheel.inference.api import ROLES, InferenceServicer
from flywheel.inference.apps.catalog import ApplicationCatalog
from flywheel.inference.apps.grounding import GroundedAnswers
from flywheel.inference.apps.guarded import Guarding
from flywheel.inference.apps.http import ApplicationChat, ApplicationsDoor
from flywheel.inference.apps.prompts import PromptResolver
from flywheel.inference.apps.store import ApplicationStore
from flywheel.inference.cache.handlers import with_cache_invalidation
from flywheel.inference.cache.service import ResponseCache
from flywheel.inference.cache.store import CacheStore
from flywheel.inference.config import InferenceSettings
from flywheel.inference.dataplane import DataPlane, ModelSlot
from flywheel.inference.features import FeatureClient
from flywheel.inference.generation import ROLES as GENERATION_ROLES
from flywheel.inference.generation import SERVICE_NAME as GENERATION_SERVICE
from flywheel.inference.generation import GenerationServicer
from flywheel.inference.genlog import GenerationLog, Price
from flywheel.inference.handlers import handlers
from flywheel.inference.llm.service import LLMService, LLMSettings
from flywheel.inference.openai_api import OpenAIDoor
from flywheel.inference.predlog import SOURCE, PredictionLog
from flywheel.inference.repository import Repository
from flywheel.inference.rest import RestServer
from flywheel.inference.workers import supervise, worker_index
from flywheel.proto.inference import grpc_service_pb2 as pb
from flywheel.proto.inference import grpc_service_pb2_grpc as pb_grpc
from flywheel.proto.inference.v1 import generation_service_pb2_grpc as generation_pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class Applications:
    """The parts that serve LLM applications (see flywheel/inference/apps)."""

    catalog: ApplicationCatalog
    prompts: PromptResolver
    retriever: RetrieverClient | None
    answers: GroundedAnswers
    guarding: Guarding
    chat: ApplicationChat
    door: ApplicationsDoor

    async def start(self) -> None:
        await self.catalog.start()

    async def stop(self) -> None:
        await self.catalog.stop()
        await self.prompts.stop()
        if self.retriever is not None:
            await self.retriever.close()
        await self.guarding.close()


# 1 while this process serves (summed by the supervisor when workers > 1: how many serve).
SERVING = Gauge("flywheel_inference_serving", "1 while this inference process serves its front doors.")


class InferenceApp:
    """The running inference server; `start` returns once both front doors serve (models that have a
    champion are loaded by then; others become ready when one is promoted), `stop` drains and closes."""

    def __init__(self, settings: InferenceSettings, *, initial_load_timeout: float = 60.0,
                 freeze_gc: bool = False) -> None:
        """`freeze_gc`: once serving, move every object alive (modules, models, clients) out of the garbage
        collector's reach (`gc.freeze`), so a full collection scans what requests allocate, not the whole
        heap: no multi-millisecond pauses in the latency tail. For a serving process (`main`), not tests."""
        settings.require_infrastructure()
        self.settings = settings
        self.freeze_gc = freeze_gc
        self.initial_load_timeout = initial_load_timeout
        self.slots = {name: self._new_slot(name) for name in settings.models}
        self.publisher = BoundedPublisher(settings.kafka_bootstrap, name="inference-predictions",
                                          max_queue=settings.log_queue_size, linger_s=settings.log_linger_ms / 1000,
                                          idempotent=settings.kafka_enable_idempotence)
        self.features = FeatureClient(settings.featurestore_addr, timeout_s=settings.feature_timeout_s,
                                      auth=settings.client_auth())
        self.dataplane = DataPlane(self.slots, PredictionLog(self.publisher,
                                                             max_input_values=settings.log_max_input_values),
                                   max_batch_size=settings.max_batch_size,
                                   max_batch_wait_ms=settings.max_batch_wait_ms, features=self.features,
                                   inline_max_rows=settings.inline_max_rows, inline_max_ms=settings.inline_max_ms)
        registry = RegistryClient(settings.registry_addr, auth=settings.client_auth(),
                                  transfer_timeout=settings.load_timeout_s, keep_channel=True)
        # The doors' generation API (None when LLM serving is off); loads nothing until an LLM is promoted.
        self.llm = LLMService(registry, LLMSettings(
            cache_dir=settings.llm_models_dir(), quantization=dict(settings.llm_quantization),
            max_batch=settings.llm_max_batch, max_queue=settings.llm_max_queue, max_tokens=settings.llm_max_tokens,
            max_context=settings.llm_max_context,
            prefix_cache_tokens=settings.llm_prefix_cache_tokens, max_pinned=settings.llm_max_pinned,
            pinned_idle_s=settings.llm_pinned_idle_seconds)) if settings.llm_enabled else None
        self.repository = Repository(self.slots, registry, new_slot=None if settings.models else self._new_slot,
                                     llm=self.llm)
        self.db = Database(settings.database_url, settings.db_schema, min_size=1, max_size=3)
        self.auth = Authenticator(TokenStore(self.db),
                                  anonymous=ANONYMOUS if settings.allow_anonymous_predict else None)
        self.generation_log = self._generation_log()
        # Several workers bind the same ports (see workers.py).
        shared_ports = settings.workers > 1
        self.rpc = RpcServer(settings.grpc_host, settings.grpc_port, auth=self.auth, tls=settings.server_tls(),
                             options=[("grpc.so_reuseport", 1 if shared_ports else 0)])
        self.dataplane.components = self.rpc.components
        self.embedder = EmbedderClient(settings.embedder_addr, auth=settings.client_auth(),
                                       timeout=settings.embedder_timeout_s) if settings.embedder_addr else None
        # -- LLM response cache (flywheel/inference/cache): both generation doors answer through it ---------
        cached = settings.llm_cache_enabled and self.llm is not None
        self.llm_cache = ResponseCache(settings.llm_response_cache(),
                                       CacheStore(settings.database_url, settings.db_schema) if cached else None,
                                       self.embedder)
        self.apps = self._applications(registry) if settings.apps_enabled else None
        on_alias_moved = self.apps.prompts.on_promoted if self.apps is not None else None
        self.consumer = ConsumerRunner(bootstrap=settings.kafka_bootstrap, group=settings.consumer_group,
                                       db=self.db, source=SOURCE, health=self.rpc.component_health("consumer"),
                                       handlers=with_cache_invalidation(
                                           handlers(self.repository, on_alias_moved=on_alias_moved), self.llm_cache))
        self.rpc.add(pb_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(self.dataplane),
                     SERVICE_NAME, ROLES)
        self.rpc.add(generation_pb_grpc.add_GenerationServiceServicer_to_server,
                     GenerationServicer(self.llm, answers=self.apps.answers if self.apps is not None else None,
                                        generation_log=self.generation_log, cache=self.llm_cache,
                                        guarding=self.apps.guarding if self.apps is not None else None),
                     GENERATION_SERVICE, GENERATION_ROLES)
        self.openai = OpenAIDoor(self.llm, self.embedder, self.auth,
                                 embedder_models=self.embedder.models if self.embedder is not None else None,
                                 applications=self.apps.chat if self.apps is not None else None,
                                 generation_log=self.generation_log, cache=self.llm_cache)
        routes = self.openai.routes() + (self.apps.door.routes() if self.apps is not None else [])
        self.rest = RestServer(self.dataplane, settings.http_host, settings.http_port, authenticator=self.auth,
                               tls=settings.server_tls(), extra_routes=routes, reuse_port=shared_ports)

    def _generation_log(self) -> GenerationLog | None:
        """Every generation (models and applications, both doors) to predictions.logged, with a cost estimate."""
        if self.llm is None:
            return None
        s = self.settings
        return GenerationLog(self.publisher, self.llm,
                             prices={n: Price(p.prompt, p.completion) for n, p in s.llm_prices.items()},
                             default_price=Price(s.llm_default_price.prompt, s.llm_default_price.completion),
                             sample_rate=s.sample_rate)

    def _applications(self, registry: RegistryClient) -> Applications:
        """Applications: definitions in this service's schema, prompt templates from the registry, passages from
        the retriever, generation through the LLM service."""
        s = self.settings
        retriever = RetrieverClient(s.retriever_addr, auth=s.client_auth(), timeout=s.retriever_timeout_s,
                                    keep_channel=True) if s.retriever_addr else None
        catalog = ApplicationCatalog(ApplicationStore(self.db), registry, retriever, refresh_s=s.apps_refresh_s)
        prompts = PromptResolver(registry, max_age_s=s.prompt_max_age_s)
        answers = GroundedAnswers(catalog, prompts, retriever, self.llm, answer_tokens=s.apps_answer_tokens,
                                  max_tokens_cap=s.llm_max_tokens)
        # One channel to the guard, kept open: every input and streamed window of a guarded application is checked.
        guard = GuardClient(s.guard_addr, auth=s.client_auth(), timeout=s.guard_timeout_s) if s.guard_addr else None
        guarding = Guarding(guard, timeout_s=s.guard_timeout_s, policy_ttl_s=s.guard_policy_ttl_s)
        return Applications(catalog, prompts, retriever, answers, guarding,
                            ApplicationChat(answers, self.generation_log, self.llm_cache, guarding),
                            ApplicationsDoor(catalog, self.auth))

    def _new_slot(self, name: str) -> ModelSlot:
        return ModelSlot(name, self.settings.route(name), self.settings.sample_rate(name))

    @property
    def grpc_address(self) -> str:
        return f"{self.settings.grpc_host}:{self.rpc.port}"

    @property
    def http_address(self) -> str:
        return f"{self.settings.http_host}:{self.rest.port}"

    address = grpc_address

    async def start(self) -> None:
        await self.db.open(MIGRATIONS)  # processed_events for the consumer; the applications
        await self.auth.start()
        await self.llm_cache.start()  # its table (migration track llm_cache) before promotions evict from it
        if self.apps is not None:
            await self.apps.start()
        await self.publisher.start()
        # Consumer first, then a reconcile per model: a promotion is never missed in between.
        await self.consumer.start()
        await self.repository.start()
        try:
            await within(self.repository.wait_idle(), self.initial_load_timeout)
        except TimeoutError:
            log.warning("initial model load still running; serving anyway")
        await self.rpc.start()
        await self.rest.start()
        self.dataplane.started = True
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        SERVING.set(1)
        log.info("inference serving", extra={"grpc": self.grpc_address, "http": self.http_address,
                                             "models": {n: s.champion.version if s.champion else None
                                                        for n, s in self.slots.items()}})

    async def stop(self) -> None:
        self.dataplane.started = False
        SERVING.set(0)
        await self.rest.stop()
        await self.rpc.stop()
        await self.dataplane.drain()
        await self.llm_cache.stop()
        await self.features.close()
        if self.embedder is not None:
            await self.embedder.close()
        await self.consumer.stop()
        if self.apps is not None:
            await self.apps.stop()
        await self.repository.stop()
        await self.publisher.stop()
        await self.db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel.inference",
        description="Flywheel inference: OIP v2 gRPC + REST serving of registry models with hot swap, "
                    "canary/shadow routing and prediction logging. Configured by FLYWHEEL_* / "
                    "FLYWHEEL_INFERENCE_* environment variables (see README).")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (overrides FLYWHEEL_INFERENCE_GRPC_PORT)")
    parser.add_argument("--http-port", type=int, help="REST port (overrides FLYWHEEL_INFERENCE_HTTP_PORT)")
    args = parser.parse_args(argv)
    settings = InferenceSettings()
    if args.grpc_port is not None:
        settings.grpc_port = args.grpc_port
    if args.http_port is not None:
        settings.http_port = args.http_port
    if settings.workers > 1 and worker_index() is None:
        supervise(settings)
        return
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    loop_factory = None
    if settings.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    run_service("inference", settings, lambda s: InferenceApp(s, freeze_gc=True), loop_factory=loop_factory)
