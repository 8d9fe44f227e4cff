"""The retriever on the session's broker and database: collections, ingestion over gRPC (documents.ingested
in its outbox and on the topic), documents.embedded events built here the way the embedder builds them
(deterministic word vectors) -> retrievable by vector, by full text and by text (an in-process embedder
port for the query side), re-ingestion and deletion with revisions, tenant isolation, redelivery, poison
events, bad inputs, filtered recall against exact search, and re-indexing into a new champion."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import pytest
from psycopg.rows import dict_row

from flywheel.common import rpc
from flywheel.common.clients.retriever import RetrieverClient, document_input, metadata_filter
from flywheel.common.errors import InvalidArgument, NotFound
from flywheel.common.events import Event
from flywheel.common.topics import DOCUMENTS_EMBEDDED, DOCUMENTS_INGESTED, MODELS_PROMOTED
from flywheel.proto.events.v1 import documents_pb2, models_pb2
from flywheel.proto.retriever.v1 import retriever_service_pb2 as pb
from flywheel.proto.retriever.v1 import retriever_service_pb2_grpc as pb_grpc
from flywheel.retriever import retriever as retriever_module
from flywheel.retriever.config import RetrieverSettings
from flywheel.retriever.domain import Filter
from flywheel.retriever.main import RetrieverApp
from flywheel.retriever.store import SearchPlan, search_sql
from tests import polling
from tests.kafka_helpers import header, read_records
from tests.retriever_helpers import WordEmbedder, embedded_event, tiny_pdf, word_vector
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration
eventually = partial(polling.eventually, timeout=60.0)
DIMS = 32
ACCEPTED, UNCHANGED = pb.INGEST_STATUS_ACCEPTED, pb.INGEST_STATUS_UNCHANGED

FEES = b"""# Fees

## Foreign transactions

Card payments in a foreign currency cost a 2% foreign transaction fee.

## Cash withdrawals

Withdrawing cash abroad costs 3 euros per withdrawal."""
LOST = b"""<html><head><title>Lost or stolen cards</title><style>p {color: red}</style></head>
<body><h1>Lost or stolen cards</h1><p>Block a lost card in the app at once, then call the helpline.</p>
<script>trackVisitor()</script><h2>Replacement</h2><p>A replacement card arrives within five working days.</p>
</body></html>"""


@dataclass
class World:
    infra: Any
    app: RetrieverApp
    writer: RetrieverClient
    reader: RetrieverClient
    embedder: WordEmbedder
    model: str
    producer: Any


def settings(infra: Any, suffix: str, model: str, **overrides: Any) -> RetrieverSettings:
    values: dict[str, Any] = dict(
        **shared_settings(infra), db_schema=f"retriever_{suffix}", consumer_group=f"retriever-{suffix}",
        embedding_model=model, max_document_bytes=200_000, max_text_bytes=100_000, reindex_poll_seconds=0.2)
    values.update(overrides)
    return RetrieverSettings(**values)


@pytest.fixture(scope="module")
async def world(infra, producer) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    model = f"emb-{suffix}"
    embedder = WordEmbedder(model, {1: DIMS})
    app = RetrieverApp(settings(infra, suffix, model), embedder=embedder)
    await app.start()
    writer = RetrieverClient(app.address, auth=infra.tokens.auth("service"))
    reader = RetrieverClient(app.address, auth=infra.tokens.auth("reader"))
    try:
        yield World(infra, app, writer, reader, embedder, model, producer)
    finally:
        await app.stop()


async def rows(app: RetrieverApp, query: str, *args: Any) -> list[dict[str, Any]]:
    async with app.db.connection() as conn:
        return await (await conn.execute(query, args)).fetchall()


async def ingested(app: RetrieverApp, document_id: str) -> list[documents_pb2.DocumentIngested]:
    """The documents.ingested events the retriever emitted about a document (its outbox: what it sent)."""
    found = await rows(app, "SELECT payload FROM outbox WHERE topic = %s AND key = %s ORDER BY id",
                       DOCUMENTS_INGESTED.name, document_id)
    return [documents_pb2.DocumentIngested.FromString(bytes(r["payload"])) for r in found]


async def publish(producer: Any, event: Event) -> None:
    key, value, headers = event.encode()
    await producer.send_and_wait(event.topic.name, value=value, key=key, headers=headers)


async def processed(app: RetrieverApp, event: Event) -> bool:
    return bool(await rows(app, "SELECT 1 FROM processed_events WHERE consumer = %s AND event_id = %s",
                           app.settings.consumer_group, event.id))


async def embed(world: World, document_id: str, *, version: int = 1, dims: int = DIMS, revision: int = 0) -> Event:
    """Answer the latest documents.ingested of a document (of `revision`, if given) like the embedder, and wait
    until the retriever applied it."""
    events = [e for e in await ingested(world.app, document_id) if not revision or e.revision == revision]
    assert events, f"no documents.ingested for {document_id}"
    event = embedded_event(events[-1], version, dims)
    await publish(world.producer, event)
    await eventually(partial(processed, world.app, event), what=f"documents.embedded of {document_id} applied")
    return event


def query_vector(text: str, dims: int = DIMS) -> list[float]:
    return word_vector(text, dims)


async def new_collection(world: World, tenant: str = "") -> str:
    name = f"c-{uuid.uuid4().hex[:8]}"
    coll, created = await world.writer.create_collection(name, tenant=tenant, description="test")
    assert created and coll.name == name
    return name


async def test_collections_are_created_once_and_listed_per_tenant(world: World) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    name = await new_collection(world, tenant)
    again, created = await world.writer.create_collection(name, tenant=tenant)
    assert not created and again.tenant == tenant and again.embedding_model.name == world.model
    assert again.embedding_model.version == 0  # nothing indexed yet
    listed = await world.reader.list_collections(tenant)
    assert [(c.tenant, c.name, c.document_count) for c in listed] == [(tenant, name, 0)]
    assert (tenant, name) in {(c.tenant, c.name) for c in await world.reader.list_collections()}  # every tenant
    with pytest.raises(InvalidArgument, match="collection"):
        await world.writer.create_collection("no spaces allowed", tenant=tenant)
    # A reader may not create; no token is no entry.
    with pytest.raises(Exception, match=r"PERMISSION_DENIED|permission"):
        await world.reader.create_collection(f"x-{uuid.uuid4().hex[:6]}", tenant=tenant)
    async with rpc.channel(world.app.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.RetrieverServiceStub(channel).ListCollections(pb.ListCollectionsRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_ingest_stores_extracted_text_and_emits_documents_ingested(world: World) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    name = await new_collection(world, tenant)
    date = datetime(2026, 3, 1, tzinfo=UTC)
    suffix = uuid.uuid4().hex[:6]
    pdf = tiny_pdf([["Chargebacks", "A disputed payment is refunded within ten days."]], title="Disputes")
    results = await world.writer.ingest(name, [
        document_input(FEES, source=f"policies/{suffix}/fees.md", doc_type="policy", tags=["fees", "cards"],
                       document_date=date, metadata={"owner": "payments"}),
        document_input(LOST, source=f"policies/{suffix}/lost.html"),
        document_input(pdf, document_id=f"disputes-{suffix}", mime_type="application/pdf"),
    ], tenant=tenant)
    assert [r.status for r in results] == [ACCEPTED] * 3
    assert [r.revision for r in results] == [1, 1, 1]
    fees_id, lost_id, pdf_id = (r.document_id for r in results)
    assert fees_id == f"policies/{suffix}/fees.md" and pdf_id == f"disputes-{suffix}"

    [event] = await ingested(world.app, fees_id)
    assert (event.tenant, event.collection, event.revision, event.doc_type, list(event.tags)) == (
        tenant, name, 1, "policy", ["fees", "cards"])
    assert event.document_date.ToDatetime(UTC) == date and event.metadata["owner"] == "payments"
    assert event.mime_type == "text/markdown" and event.text.startswith("# Fees") and event.title == "Fees"
    assert (event.embed_with.name, event.embed_with.version) == (world.model, 0)  # nothing indexed: the champion
    assert event.content_sha256 == results[0].content_sha256 and event.source == fees_id

    [html] = await ingested(world.app, lost_id)
    assert html.title == "Lost or stolen cards" and "# Lost or stolen cards" in html.text
    assert "## Replacement" in html.text and "trackVisitor" not in html.text and "color" not in html.text
    [pdf_event] = await ingested(world.app, pdf_id)
    assert "disputed payment is refunded" in pdf_event.text and pdf_event.title == "Disputes"

    # The relay publishes them: the topic carries the event, keyed by document id.
    records = await read_records(world.infra.kafka_bootstrap, DOCUMENTS_INGESTED.name,
                                 until=lambda rs: any(r.key == fees_id.encode() for r in rs))
    mine = [r for r in records if r.key == fees_id.encode()]
    assert mine and header(mine[0], "ce_source") == "flywheel/retriever"
    assert documents_pb2.DocumentIngested.FromString(mine[0].value).tenant == tenant

    # Same text again: UNCHANGED, no event; new tags are applied in place.
    again = await world.writer.ingest(name, [document_input(FEES, source=fees_id, doc_type="policy", tags=["fees"])],
                                      tenant=tenant)
    assert again[0].status == UNCHANGED and again[0].revision == 1
    assert len(await ingested(world.app, fees_id)) == 1
    doc = await world.reader.get_document(name, fees_id, tenant=tenant)
    assert doc is not None and list(doc.tags) == ["fees"] and not doc.indexed and doc.text.startswith("# Fees")
    listed = [d async for d in world.reader.list_documents(name, tenant=tenant, page_size=2)]
    assert sorted(d.document_id for d in listed) == sorted([fees_id, lost_id, pdf_id])
    assert all(d.text == "" for d in listed)


async def test_embedded_chunks_are_retrievable_by_vector_full_text_and_text(world: World) -> None:
    name = await new_collection(world)
    suffix = uuid.uuid4().hex[:6]
    results = await world.writer.ingest(name, [document_input(FEES, source=f"{suffix}/fees.md", tags=["fees"]),
                                               document_input(LOST, source=f"{suffix}/lost.html", tags=["cards"])])
    fees_id, lost_id = (r.document_id for r in results)
    await embed(world, fees_id)
    await embed(world, lost_id)
    doc = await world.reader.get_document(name, lost_id, include_chunks=True)
    assert doc is not None and doc.indexed and [c.section for c in doc.chunks] == ["Lost or stolen cards",
                                                                                    "Replacement"]
    listed = {c.name: c for c in await world.reader.list_collections()}
    assert listed[name].embedding_model.version == 1 and listed[name].dimensions == DIMS
    assert listed[name].chunk_count == 4 and listed[name].document_count == 2

    # By vector: the chunk sharing the query's words comes first, with its document's fields.
    response = await world.reader.retrieve(name, vector=query_vector("Lost or stolen cards block a lost card in "
                                                                     "the app at once then call the helpline"), k=3)
    top = response.chunks[0]
    assert (top.document_id, top.title, top.section, top.index) == (lost_id, "Lost or stolen cards",
                                                                    "Lost or stolen cards", 0)
    assert top.vector_rank == 1 and top.text_rank == 0 and top.similarity > 0.9 and list(top.tags) == ["cards"]
    assert (response.embedding_model.name, response.embedding_model.version) == (world.model, 1)
    assert [c.score for c in response.chunks] == sorted((c.score for c in response.chunks), reverse=True)

    # Hybrid: a vector that points elsewhere, plus keywords: full text pulls the fee chunk up.
    response = await world.reader.retrieve(name, vector=query_vector("replacement card arrives"), k=4,
                                           text_for_keywords="foreign currency fee")
    ranked = {c.text[:20]: c for c in response.chunks}
    fee = next(c for c in response.chunks if "foreign transaction fee" in c.text)
    assert fee.text_rank == 1 and fee.section == "Foreign transactions" and len(ranked) == 4
    assert response.chunks[0].vector_rank == 1 or response.chunks[0].text_rank == 1

    # By text: embedded with the collection's active version (the embedder port is told which), fused with
    # full text by default.
    world.embedder.calls.clear()
    response = await world.reader.retrieve(name, text="how much is the fee for withdrawing cash abroad", k=2)
    assert world.embedder.calls == [(world.model, 1)]
    assert "Withdrawing cash abroad" in response.chunks[0].text
    assert response.chunks[0].vector_rank >= 1 and response.chunks[0].text_rank >= 1

    # Filters narrow the scope; a tag no chunk carries finds nothing.
    response = await world.reader.retrieve(name, vector=query_vector("fee"), k=5,
                                           filter=metadata_filter(tags_any=["cards"]))
    assert {c.document_id for c in response.chunks} == {lost_id}
    response = await world.reader.retrieve(name, vector=query_vector("fee"), filter=metadata_filter(tags_all=["x"]))
    assert not response.chunks


async def test_changed_document_replaces_its_chunks_and_older_revisions_are_ignored(world: World) -> None:
    name = await new_collection(world)
    doc_id = f"guide-{uuid.uuid4().hex[:6]}"
    first = b"# Guide\n\nAlpha bravo charlie.\n\nDelta echo foxtrot."
    second = b"# Guide\n\nGolf hotel india."
    await world.writer.ingest(name, [document_input(first, document_id=doc_id, mime_type="text/markdown")])
    late_first = await embed(world, doc_id, revision=1)
    [result] = await world.writer.ingest(name, [document_input(second, document_id=doc_id,
                                                               mime_type="text/markdown")])
    assert result.status == ACCEPTED and result.revision == 2
    # Until revision 2's chunks arrive, revision 1's are served (whole), and the document is not indexed.
    doc = await world.reader.get_document(name, doc_id, include_chunks=True)
    assert doc is not None and doc.revision == 2 and not doc.indexed and len(doc.chunks) == 2
    await embed(world, doc_id, revision=2)
    doc = await world.reader.get_document(name, doc_id, include_chunks=True)
    assert doc is not None and doc.indexed and [c.text for c in doc.chunks] == ["Golf hotel india."]
    # Revision 1's vectors arriving late (a redelivery under another event id) change nothing.
    stale = Event(DOCUMENTS_EMBEDDED, doc_id, late_first.payload, "tests/embedder")
    await publish(world.producer, stale)
    await eventually(partial(processed, world.app, stale), what="the stale event consumed")
    doc = await world.reader.get_document(name, doc_id, include_chunks=True)
    assert doc is not None and [c.text for c in doc.chunks] == ["Golf hotel india."]
    found = await world.reader.retrieve(name, vector=query_vector("alpha bravo charlie"), k=5)
    assert [c.text for c in found.chunks] == ["Golf hotel india."]
    count = await rows(world.app, "SELECT count(*) AS n FROM chunks WHERE document_id = %s", doc_id)
    assert count[0]["n"] == 1


async def test_delete_tombstones_and_late_events_do_not_resurrect(world: World) -> None:
    name = await new_collection(world)
    doc_id = f"gone-{uuid.uuid4().hex[:6]}"
    await world.writer.ingest(name, [document_input(b"Zulu yankee xray.", document_id=doc_id)])
    late = await embed(world, doc_id)
    assert (await world.reader.retrieve(name, vector=query_vector("zulu yankee xray"))).chunks
    deleted, revision = await world.writer.delete_document(name, doc_id)
    assert deleted and revision == 2
    assert await world.reader.get_document(name, doc_id) is None
    assert not (await world.reader.retrieve(name, vector=query_vector("zulu yankee xray"))).chunks
    again = Event(DOCUMENTS_EMBEDDED, doc_id, late.payload, "tests/embedder")
    await publish(world.producer, again)
    await eventually(partial(processed, world.app, again), what="the late event consumed")
    assert not (await world.reader.retrieve(name, vector=query_vector("zulu yankee xray"))).chunks
    assert await world.writer.delete_document(name, doc_id) == (False, 2)
    # Ingested again: a new revision after the tombstone.
    [result] = await world.writer.ingest(name, [document_input(b"Zulu yankee xray.", document_id=doc_id)])
    assert result.status == ACCEPTED and result.revision == 3


async def test_tenants_never_see_each_others_chunks(world: World) -> None:
    name = f"shared-{uuid.uuid4().hex[:6]}"
    a, b = f"ta-{uuid.uuid4().hex[:6]}", f"tb-{uuid.uuid4().hex[:6]}"
    for tenant in (a, b):
        await world.writer.create_collection(name, tenant=tenant)
    text = b"Secret merger plans for next quarter."
    await world.writer.ingest(name, [document_input(text, document_id="plan")], tenant=a)
    await world.writer.ingest(name, [document_input(b"Public holiday opening hours.", document_id="hours")], tenant=b)
    # The same document id in both tenants, different texts.
    await world.writer.ingest(name, [document_input(b"Tenant b's own plan.", document_id="plan")], tenant=b)
    for tenant, doc in ((a, "plan"), (b, "hours"), (b, "plan")):
        events = [e for e in await ingested(world.app, doc) if e.tenant == tenant and e.collection == name]
        event = embedded_event(events[-1], 1, DIMS)
        await publish(world.producer, event)
        await eventually(partial(processed, world.app, event), what=f"{tenant}/{doc} indexed")
    query = query_vector("secret merger plans for next quarter")
    found_b = await world.reader.retrieve(name, vector=query, k=10, tenant=b)
    assert found_b.chunks and all("Secret merger" not in c.text for c in found_b.chunks)
    found_b = await world.reader.retrieve(name, vector=query, k=10, tenant=b, text_for_keywords="secret merger")
    assert all("Secret merger" not in c.text for c in found_b.chunks)
    found_a = await world.reader.retrieve(name, vector=query, k=10, tenant=a)
    assert [c.text for c in found_a.chunks] == ["Secret merger plans for next quarter."]
    doc_b = await world.reader.get_document(name, "plan", tenant=b)
    assert doc_b is not None and doc_b.text == "Tenant b's own plan."
    assert await world.reader.get_document(name, "hours", tenant=a) is None
    assert await world.writer.delete_document(name, "hours", tenant=a) == (False, 0)
    assert (await world.reader.get_document(name, "hours", tenant=b)) is not None
    with pytest.raises(NotFound):
        await world.reader.retrieve(name, vector=query, tenant=f"nobody-{uuid.uuid4().hex[:6]}")


async def test_redelivered_events_create_no_duplicates(world: World) -> None:
    name = await new_collection(world)
    doc_id = f"twice-{uuid.uuid4().hex[:6]}"
    await world.writer.ingest(name, [document_input(b"One.\n\nTwo.\n\nThree.", document_id=doc_id)])
    event = await embed(world, doc_id)
    await publish(world.producer, event)  # the same event again (same id): dropped by processed_events
    copy = Event(DOCUMENTS_EMBEDDED, doc_id, event.payload, "tests/embedder")  # same content, another id: replaced
    await publish(world.producer, copy)
    await eventually(partial(processed, world.app, copy), what="the copy consumed")
    found = await rows(world.app, "SELECT chunk_index FROM chunks WHERE document_id = %s ORDER BY chunk_index", doc_id)
    assert [r["chunk_index"] for r in found] == [0, 1, 2]
    listed = {c.name: c for c in await world.reader.list_collections()}
    assert listed[name].chunk_count == 3


async def test_poison_events_go_to_the_dead_letter_topic_and_the_consumer_goes_on(world: World) -> None:
    name = await new_collection(world)
    doc_id = f"poison-{uuid.uuid4().hex[:6]}"
    await world.writer.ingest(name, [document_input(b"Kilo lima mike.", document_id=doc_id)])
    other = f"fine-{uuid.uuid4().hex[:6]}"
    await world.writer.ingest(name, [document_input(b"November oscar papa.", document_id=other)])
    await embed(world, other)  # binds the collection to version 1 with 32 dimensions
    [event] = await ingested(world.app, doc_id)
    wrong = embedded_event(event, 1, DIMS + 16)  # a generation of 32 dimensions cannot take 48
    await publish(world.producer, wrong)
    garbage = Event(DOCUMENTS_EMBEDDED, doc_id, event, "tests/embedder")  # a DocumentIngested on the wrong topic
    key, _, headers = garbage.encode()
    await world.producer.send_and_wait(DOCUMENTS_EMBEDDED.name, key=key, value=b"\xff\xfe not protobuf",
                                       headers=headers)
    records = await read_records(world.infra.kafka_bootstrap, DOCUMENTS_EMBEDDED.dlq, timeout=60, until=lambda rs: sum(
        header(r, "ce_id") in (wrong.id, garbage.id) for r in rs) >= 2)
    errors = {header(r, "ce_id"): header(r, "dlq_error") for r in records if header(r, "ce_id") in (wrong.id,
                                                                                                    garbage.id)}
    assert "48-dimensional vectors" in errors[wrong.id] and "32 dimensions" in errors[wrong.id]
    assert "not a valid" in errors[garbage.id]
    # The consumer goes on: the right event for the same document is applied.
    await embed(world, doc_id)
    doc = await world.reader.get_document(name, doc_id)
    assert doc is not None and doc.indexed


async def test_bad_inputs_get_the_right_status_codes(world: World) -> None:
    name = await new_collection(world)
    call = world.writer.ingest

    async def refused(document: pb.DocumentInput, *words: str) -> None:
        with pytest.raises(InvalidArgument) as caught:
            await call(name, [document])
        for word in words:
            assert word in str(caught.value), str(caught.value)

    await refused(document_input(b"", document_id="empty"), "'empty'", "empty")
    await refused(document_input(b"abc\x00def", source="bin.txt"), "'bin.txt'", "NUL")
    await refused(document_input(b"\xff\xfe\xfa", document_id="latin"), "'latin'", "UTF-8")
    await refused(document_input(b"PK\x03\x04", source="report.docx"), "'report.docx'", ".docx")
    await refused(document_input(b"x", document_id="odd", mime_type="image/png"), "'odd'", "image/png")
    await refused(document_input(b"a" * 200_001, document_id="huge"), "'huge'", "200001 bytes")
    await refused(document_input(b"word " * 30_000, document_id="long"), "'long'", "max_text_bytes")
    await refused(document_input(b"%PDF-1.4 broken", document_id="broken.pdf", mime_type="application/pdf"),
                  "'broken.pdf'", "PDF")
    # Nothing of a refused call is stored: the good document next to a bad one is not either.
    with pytest.raises(InvalidArgument, match="'bad'"):
        await call(name, [document_input(b"fine", document_id="good"), document_input(b"", document_id="bad")])
    assert await world.reader.get_document(name, "good") is None
    with pytest.raises(NotFound, match="no collection"):
        await call("no-such-collection", [document_input(b"text")])
    with pytest.raises(NotFound, match="tenant"):
        await call(name, [document_input(b"text")], tenant="someone-else")

    await call(name, [document_input(b"Quebec romeo.", document_id="q")])
    await embed(world, "q")
    with pytest.raises(InvalidArgument, match=r"3 dimensions.*32 dimensions"):
        await world.reader.retrieve(name, vector=[0.1, 0.2, 0.3])
    with pytest.raises(InvalidArgument, match="k must be"):
        await world.reader.retrieve(name, vector=query_vector("q"), k=101)
    with pytest.raises(InvalidArgument, match="empty"):
        await world.reader.retrieve(name, text="")
    with pytest.raises(InvalidArgument, match="both 0"):
        await world.reader.retrieve(name, vector=query_vector("q"), weights=(0, 0))
    with pytest.raises(InvalidArgument, match="all zeros"):
        await world.reader.retrieve(name, vector=[0.0] * DIMS)
    with pytest.raises(NotFound):
        await world.reader.retrieve("missing", vector=query_vector("q"))


# -- filtered recall against exact search ------------------------------------------------------------------

RECALL_DIMS = 64


def clustered(rng: np.random.Generator, n: int, centers: np.ndarray, spread: float = 0.7) -> np.ndarray:
    """Unit vectors around unit `centers`: noise of norm ~`spread` (0.7: cosine ~0.67 to their center, like
    passages on one topic)."""
    units = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    x = units[rng.integers(0, len(centers), n)] + rng.normal(0, spread / np.sqrt(centers.shape[1]),
                                                             (n, centers.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int) -> list[str]:
    order = np.argsort(-(vectors @ query), kind="stable")[:k]
    return [ids[i] for i in order]


async def test_filtered_retrieval_keeps_the_recall_of_exact_search(world: World) -> None:
    """A filter that keeps 1% of a 20,000-chunk collection, and a 300-chunk collection inside the same HNSW
    index: recall@10 of Retrieve (exact path for small scopes, HNSW with iterative scans otherwise) is at
    least 0.95 of exact search on the matching rows; plain HNSW post-filtering collapses."""
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(40, RECALL_DIMS))
    big, small = await new_collection(world), await new_collection(world)
    colls = {c.name: c for c in await world.app.store.list_collections("default")}
    n = 20_000
    vectors = clustered(rng, n, centers)
    rare = rng.random(n) < 0.01
    ids = [f"r{i}" for i in range(n)]
    await world.app.store.bulk_load(
        colls[big], 1, ((i, "") for i in ids),
        ((ids[i], 0, "", vectors[i], "rare" if rare[i] else "common", [], None) for i in range(n)))
    small_vectors = clustered(rng, 300, centers)
    small_ids = [f"s{i}" for i in range(300)]
    await world.app.store.bulk_load(colls[small], 1, ((i, "") for i in small_ids),
                                    ((small_ids[i], 0, "", small_vectors[i], "", [], None) for i in range(300)))
    await world.app.store.rebuild_vector_index(RECALL_DIMS)

    queries = clustered(rng, 20, centers)
    rare_ids = [ids[i] for i in np.flatnonzero(rare)]
    rare_vectors = vectors[rare]

    async def recall(collection: str, truth_vectors: np.ndarray, truth_ids: list[str], flt: Any = None) -> float:
        hits = 0
        for q in queries:
            response = await world.reader.retrieve(collection, vector=q.tolist(), k=10, filter=flt)
            got = [c.document_id for c in response.chunks]
            hits += len(set(got) & set(exact_top(truth_vectors, truth_ids, q, 10)))
        return hits / (10 * len(queries))

    def path_count(path: str) -> float:
        return retriever_module.RETRIEVALS.labels(path)._value.get()

    rare_filter = metadata_filter(doc_types=["rare"])
    retriever = world.app.retriever
    results = {}
    for threshold, expected_path in ((3_000, "exact"), (0, "hnsw")):
        retriever.exact_search_max_rows = threshold
        before = path_count(expected_path)
        results[("filtered", expected_path)] = await recall(big, rare_vectors, rare_ids, rare_filter)
        results[("small collection", expected_path)] = await recall(small, small_vectors, small_ids)
        assert path_count(expected_path) - before == 2 * len(queries)
    retriever.exact_search_max_rows = 3_000
    results[("unfiltered", "hnsw")] = await recall(big, vectors, ids)
    for case, value in results.items():
        assert value >= 0.95, (case, results)

    # The mechanism under the "hnsw" path: when the planner does walk the HNSW index for a selective scope (forced
    # here: no sorting allowed, so no btree + sort plan), iterative scans keep recall; without them the scan stops
    # after ef_search candidates, of which the scope keeps ~1%.
    async def forced_hnsw_recall(coll: Any, flt: Filter, truth_vectors: np.ndarray, truth_ids: list[str],
                                 iterative: str) -> float:
        hits = 0
        # A connection of its own: plans cached by the service's prepared statements would ignore enable_sort.
        async with await psycopg.AsyncConnection.connect(world.infra.database_url, autocommit=True,
                                                         row_factory=dict_row, prepare_threshold=None) as conn:
            await conn.execute(f"SET search_path TO {world.app.settings.db_schema}, public")
            await conn.execute("SET enable_sort = off")
            await conn.execute("SET hnsw.ef_search = 100")
            await conn.execute(f"SET hnsw.iterative_scan = {iterative}")
            for q in queries:
                plan = SearchPlan(collection_id=coll.id, tenant=coll.tenant, model_version=1, dims=RECALL_DIMS,
                                  k=10, candidates=50, vector=q.tolist(), keywords="", vector_weight=1.0,
                                  text_weight=0.0, rrf_k=60, filter=flt, path="hnsw")
                statement, params = search_sql(plan)
                shown = await (await conn.execute(b"EXPLAIN " + statement.as_string(conn).encode(),
                                                  params)).fetchall()
                assert any(f"chunks_hnsw_{RECALL_DIMS}" in r["QUERY PLAN"] for r in shown)
                got = [r["document_id"] for r in await (await conn.execute(statement, params)).fetchall()]
                hits += len(set(got) & set(exact_top(truth_vectors, truth_ids, q, 10)))
        return hits / (10 * len(queries))

    rare_only = Filter(doc_types=("rare",))
    assert await forced_hnsw_recall(colls[big], rare_only, rare_vectors, rare_ids, "relaxed_order") >= 0.95
    assert await forced_hnsw_recall(colls[small], Filter(), small_vectors, small_ids, "relaxed_order") >= 0.95
    assert await forced_hnsw_recall(colls[big], rare_only, rare_vectors, rare_ids, "off") < 0.5
    assert await forced_hnsw_recall(colls[small], Filter(), small_vectors, small_ids, "off") < 0.5


# -- re-indexing into a new champion -------------------------------------------------------------------------


@pytest.fixture
async def reindex_world(infra, producer) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    model = f"emb-reindex-{suffix}"
    embedder = WordEmbedder(model, {1: DIMS, 2: 48, 3: 48})
    app = RetrieverApp(settings(infra, suffix, model, reindex_batch=2), embedder=embedder)
    await app.start()
    try:
        yield World(infra, app, RetrieverClient(app.address, auth=infra.tokens.auth("service")),
                    RetrieverClient(app.address, auth=infra.tokens.auth("reader")), embedder, model, producer)
    finally:
        await app.stop()


async def promote(world: World, version: int, previous: int) -> Event:
    event = Event(MODELS_PROMOTED, world.model, models_pb2.ModelPromoted(
        model_name=world.model, alias="champion", version=version, previous_version=previous), "tests/registry")
    await publish(world.producer, event)
    await eventually(partial(processed, world.app, event), what=f"models.promoted v{version} consumed")
    return event


async def test_a_new_embedding_champion_reindexes_then_switches(reindex_world: World) -> None:
    world = reindex_world
    name = await new_collection(world)
    docs = [f"doc-{i}" for i in range(3)]
    await world.writer.ingest(name, [document_input(f"Document {i} about topic{i}.".encode(), document_id=d)
                                     for i, d in enumerate(docs)])
    for d in docs:
        await embed(world, d)
    # An empty collection (its only document deleted) switches as soon as the champion moves.
    empty = await new_collection(world)
    await world.writer.ingest(empty, [document_input(b"Short lived.", document_id="brief")])
    await embed(world, "brief")
    await world.writer.delete_document(empty, "brief")

    await promote(world, 2, 1)
    collections = {c.name: c for c in await world.reader.list_collections()}
    assert collections[empty].embedding_model.version == 2 and not collections[empty].HasField(
        "pending_embedding_model")
    coll = collections[name]
    assert coll.embedding_model.version == 1 and coll.pending_embedding_model.version == 2
    assert coll.pending_documents_done == 0 and coll.document_count == 3

    async def requeued() -> bool:
        for d in docs:
            if not any(e.embed_with.version == 2 for e in await ingested(world.app, d)):
                return False
        return True
    await eventually(requeued, what="documents.ingested with embed_with v2 for every document")
    # A document ingested during the re-index is embedded with both versions.
    await world.writer.ingest(name, [document_input(b"Document 3 about topic3.", document_id="doc-3")])
    both = await ingested(world.app, "doc-3")
    assert sorted(e.embed_with.version for e in both) == [1, 2]

    for d in docs:
        await embed(world, d, version=2, dims=48)
    coll = {c.name: c for c in await world.reader.list_collections()}[name]
    assert coll.pending_documents_done == 3 and coll.document_count == 4 and coll.embedding_model.version == 1
    response = await world.reader.retrieve(name, vector=query_vector("topic1"), k=1)
    assert response.embedding_model.version == 1 and response.chunks[0].document_id == "doc-1"

    events = await ingested(world.app, "doc-3")
    for event in events:  # the active version's first, then the pending one's: the last switches
        applied = embedded_event(event, event.embed_with.version, 48 if event.embed_with.version == 2 else DIMS)
        await publish(world.producer, applied)
        await eventually(partial(processed, world.app, applied), what="doc-3 embedded")
    coll = {c.name: c for c in await world.reader.list_collections()}[name]
    assert coll.embedding_model.version == 2 and coll.dimensions == 48 and not coll.HasField("pending_embedding_model")
    assert coll.chunk_count == 4
    world.embedder.calls.clear()
    response = await world.reader.retrieve(name, text="topic2", k=1)
    assert world.embedder.calls == [(world.model, 2)] and response.embedding_model.version == 2
    assert response.chunks[0].document_id == "doc-2"
    with pytest.raises(InvalidArgument, match=r"32 dimensions.*48 dimensions"):
        await world.reader.retrieve(name, vector=query_vector("topic2"))
    left = await rows(world.app, "SELECT model_version, count(*) AS n FROM chunks c JOIN collections k"
                                 " ON k.id = c.collection_id WHERE k.name = %s GROUP BY model_version", name)
    assert [(r["model_version"], r["n"]) for r in left] == [(2, 4)]

    # Rolled back before a re-index finishes: the pending version is dropped.
    await promote(world, 3, 2)
    assert {c.name: c for c in await world.reader.list_collections()}[name].pending_embedding_model.version == 3
    await promote(world, 2, 3)
    coll = {c.name: c for c in await world.reader.list_collections()}[name]
    assert coll.embedding_model.version == 2 and not coll.HasField("pending_embedding_model")


# -- the CLI as a user runs it ---------------------------------------------------------------------------------


async def flywheel(world: World, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flywheel.common.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "FLYWHEEL_TOKEN": world.infra.tokens.admin,
             "FLYWHEEL_RETRIEVER_ADDR": world.app.address})
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_cli_creates_ingests_a_folder_and_retrieves(world: World, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    code, out = await flywheel(world, "collections", "create", name, "--description", "bank policies")
    assert code == 0 and f"created collection default/{name}" in out, out
    docs = tmp_path / "policies"
    (docs / "cards").mkdir(parents=True)
    (docs / ".git").mkdir()
    (docs / "fees.md").write_bytes(FEES)
    (docs / "cards" / "lost.html").write_bytes(LOST)
    (docs / "cards" / "disputes.pdf").write_bytes(tiny_pdf([["Disputed payments are refunded within ten days."]]))
    (docs / "broken.txt").write_bytes(b"\x00\x01binary")
    (docs / "image.png").write_bytes(b"\x89PNG")  # not a supported type: not picked up from a folder
    (docs / ".git" / "notes.md").write_text("hidden")
    (tmp_path / "report.docx").write_bytes(b"PK")
    code, out = await flywheel(world, "ingest", str(docs), str(tmp_path / "report.docx"), "--collection", name,
                               "--tag", "policy")
    assert code == 1, out
    assert "3 accepted (queued for embedding), 0 unchanged, 2 failed" in out, out
    assert "broken.txt" in out and "NUL bytes" in out and "report.docx" in out and "unsupported file type" in out
    code, out = await flywheel(world, "ingest", str(docs / "fees.md"), "--collection", name)
    assert code == 0 and "0 accepted (queued for embedding), 1 unchanged, 0 failed" in out, out
    code, out = await flywheel(world, "ingest", str(docs / "fees.md"), "--collection", "nope")
    assert code == 1 and "no collection 'nope'" in out, out

    for path in (docs / "fees.md", docs / "cards" / "lost.html", docs / "cards" / "disputes.pdf"):
        await embed(world, str(path))
    code, out = await flywheel(world, "collections", "list", "--tenant", "default")
    assert code == 0 and name in out and "bank policies" in out, out
    code, out = await flywheel(world, "retrieve", "disputed payments refunded", "--collection", name, "-k", "2")
    assert code == 0 and "disputes" in out and "Disputed payments are refunded" in out, out
    code, out = await flywheel(world, "retrieve", "--help")
    assert code == 0 and "--collection" in out and "--doc-type" in out, out
