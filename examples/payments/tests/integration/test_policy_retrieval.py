"""The support assistant's knowledge, retrieved for real: the bank's policy documents ingested through the
retriever (raw Markdown, HTML and text), chunked and embedded by the embedder with the shipped
all-MiniLM-L6-v2 (registered from its PyPI package, nothing downloaded), indexed, and the labelled customer
questions asked of the collection by text. Holds the floors of recall@5 and MRR stated in the README."""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from payments_demo import rag

from flywheel.common.clients.retriever import RetrieverClient
from flywheel.embedder.config import EmbedderSettings
from flywheel.embedder.main import EmbedderApp
from flywheel.proto.retriever.v1 import retriever_service_pb2 as pb
from flywheel.registry.main import RegistryApp
from flywheel.retriever.config import RetrieverSettings
from flywheel.retriever.main import RetrieverApp
from tests import polling
from tests.fixtures_plugin import registry_settings
from tests.service_helpers import shared_settings

pytestmark = pytest.mark.integration
eventually = partial(polling.eventually, timeout=300.0)

# Floors a little under what the hybrid search (vector 1 + text 1, RRF k 60) measured on the 118 questions
# (README: recall@5 0.703, MRR@10 0.542); everything here is deterministic (the collection is small enough for
# the exact path), so a change that makes retrieval worse fails here.
RECALL_AT_5_FLOOR = 0.68
MRR_AT_10_FLOOR = 0.52


async def test_customer_questions_retrieve_the_policy_passages_that_answer_them(infra: Any, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    model = f"minilm-{suffix}"
    registry = RegistryApp(registry_settings(infra, max_artifact_bytes=512 * 1024 * 1024))
    await registry.start()
    embedder = EmbedderApp(EmbedderSettings(
        **shared_settings(infra), registry_addr=registry.address, db_schema=f"embedder_{suffix}",
        consumer_group=f"embedder-{suffix}", promotions_group=f"embedder-promotions-{suffix}", model=model,
        bootstrap=True, cache_dir=tmp_path / "models", initial_load_timeout=300.0))
    retriever: RetrieverApp | None = None
    try:
        await embedder.start()
        retriever = RetrieverApp(RetrieverSettings(
            **shared_settings(infra), db_schema=f"retriever_{suffix}", consumer_group=f"retriever-{suffix}",
            embedding_model=model, embedder_addr=embedder.address))
        await retriever.start()
        async with RetrieverClient(retriever.address, auth=infra.tokens.auth("service")) as client:
            results = await rag.ingest_policies(client)
            documents = rag.load_documents()
            assert [r.document_id for r in results] == [d.document_id for d in documents]
            assert all(r.status == pb.INGEST_STATUS_ACCEPTED for r in results)

            async def indexed() -> bool:
                for document in documents:
                    found = await client.get_document(rag.COLLECTION, document.document_id, tenant=rag.TENANT)
                    if not found.indexed:
                        return False
                return True

            await eventually(indexed, what="every policy document embedded and indexed")
            collection = next(c for c in await client.list_collections(rag.TENANT) if c.name == rag.COLLECTION)
            assert (collection.embedding_model.name, collection.dimensions) == (model, 384)
            assert collection.document_count == len(documents) and collection.chunk_count > len(documents)

            questions = rag.load_questions()
            ranked: dict[str, list[rag.RetrievedChunk]] = {}
            for question in questions:
                answer = await client.retrieve(rag.COLLECTION, text=question.question, k=10, tenant=rag.TENANT)
                assert answer.embedding_model.name == model
                ranked[question.id] = [(c.document_id, c.text) for c in answer.chunks]
            recall_at_5 = rag.recall_at_k(questions, ranked, 5)
            mrr = rag.mean_reciprocal_rank(questions, ranked, 10)
            print(f"policy retrieval: {len(questions)} questions, recall@5 {recall_at_5:.3f}, MRR@10 {mrr:.3f}")
            assert recall_at_5 >= RECALL_AT_5_FLOOR, recall_at_5
            assert mrr >= MRR_AT_10_FLOOR, mrr
    finally:
        if retriever is not None:
            await retriever.stop()
        await embedder.stop()
        await registry.stop()
