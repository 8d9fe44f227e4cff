"""The retriever's pure parts: query defaults and validation, document validation, the SQL it builds
(which distance expression each path uses, the scope, filters, full-text mode), the events it emits,
the dimension checks of documents.embedded and the settings' size limits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from psycopg import sql

from flywheel.common.errors import InvalidArgument, PoisonEvent
from flywheel.common.outbox import MAX_MESSAGE_BYTES
from flywheel.proto.events.v1 import common_pb2, documents_pb2
from flywheel.retriever.config import RetrieverSettings
from flywheel.retriever.domain import Collection, Document, Filter, RawDocument
from flywheel.retriever.indexing import check_dimensions, document_event, versions_to_embed
from flywheel.retriever.retriever import derived_id, plan_query, prepare
from flywheel.retriever.store import SearchPlan, search_sql


def text_of(statement: sql.Composable) -> str:
    """The SQL text without a connection (identifiers and literals are simple here)."""
    def render(part: sql.Composable) -> str:
        if isinstance(part, sql.Composed):
            return "".join(render(p) for p in part)
        if isinstance(part, sql.SQL):
            return part.as_string(None)  # type: ignore[arg-type]
        if isinstance(part, sql.Literal):
            return repr(part._obj)
        if isinstance(part, sql.Identifier):
            return ".".join(f'"{s}"' for s in part._obj)
        raise TypeError(type(part))
    return render(statement)


def test_query_defaults() -> None:
    text = plan_query(tenant="", collection="docs", text="lost card")
    assert (text.tenant, text.k, text.rrf_k, text.vector_weight, text.text_weight, text.keywords) == (
        "default", 5, 60, 1.0, 1.0, "lost card")
    vector = plan_query(tenant="t1", collection="docs", vector=[0.1, 0.2])
    assert (vector.vector_weight, vector.text_weight, vector.keywords) == (1.0, 0.0, "")
    hybrid = plan_query(tenant="t1", collection="docs", vector=[0.1, 0.2], text_for_keywords="fees", k=100)
    assert (hybrid.text_weight, hybrid.keywords, hybrid.k) == (1.0, "fees", 100)
    weighted = plan_query(tenant="t1", collection="docs", text="q", weights=(0.0, 2.0), rrf_k=10)
    assert (weighted.vector_weight, weighted.text_weight, weighted.rrf_k) == (0.0, 2.0, 10)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "the query is empty"),
    ({"text": "q", "k": 101}, "k must be between 1 and 100"),
    ({"text": "q", "k": -1}, "k must be"),
    ({"text": "q", "rrf_k": -5}, "rrf_k must be positive"),
    ({"vector": []}, "the query vector is empty"),
    ({"vector": [0.0, 0.0]}, "all zeros"),
    ({"vector": [float("nan"), 1.0]}, "NaN"),
    ({"text": "q", "weights": (0.0, 0.0)}, "both 0"),
    ({"text": "q", "weights": (-1.0, 1.0)}, "weights.vector must be"),
    ({"vector": [1.0], "weights": (1.0, 1.0)}, "weights.text > 0 needs text"),
    ({"text": "q", "tenant": "bad tenant"}, "tenant 'bad tenant'"),
    ({"text": "q", "collection": ""}, "collection is empty"),
    ({"text": "x" * 10_001}, "longer than 10000"),
])
def test_bad_queries_are_refused_with_the_reason(kwargs: dict, message: str) -> None:
    args = {"tenant": "", "collection": "docs", **kwargs}
    with pytest.raises(InvalidArgument, match=message):
        plan_query(**args)


def test_documents_are_validated_and_named() -> None:
    limits = {"max_document_bytes": 1000, "max_text_bytes": 100}
    doc = prepare(RawDocument(source="policies/fees.md", content=b"# Fees\n\nTwo percent.", tags=["a", "a", " b "]),
                  0, **limits)
    assert (doc.document_id, doc.title, doc.mime_type, doc.tags) == ("policies/fees.md", "Fees", "text/markdown",
                                                                     ["a", "b"])
    untitled = prepare(RawDocument(source="dir/notes.txt", content=b"plain words"), 0, **limits)
    assert untitled.title == "notes" and untitled.document_id == "dir/notes.txt"
    anonymous = prepare(RawDocument(content=b"plain words"), 0, **limits)
    assert anonymous.document_id == derived_id("", anonymous.content_sha256)
    assert anonymous.document_id.startswith("sha256-") and len(anonymous.document_id) == 39
    with pytest.raises(InvalidArgument, match=r"document #3 is 1001 bytes, over the 1000-byte limit"):
        prepare(RawDocument(content=b"x" * 1001), 2, **limits)
    with pytest.raises(InvalidArgument, match=r"document 'long': its text is 101 bytes.*max_text_bytes"):
        prepare(RawDocument(document_id="long", content=b"y" * 101), 0, **limits)
    with pytest.raises(InvalidArgument, match=r"document 'scan.pdf' is not a readable PDF"):
        prepare(RawDocument(source="scan.pdf", content=b"%PDF-1.4 nope"), 0, **limits)
    with pytest.raises(InvalidArgument, match=r"document 'x': tag '' must be"):
        prepare(RawDocument(document_id="x", content=b"text", tags=[""]), 0, **limits)
    with pytest.raises(InvalidArgument, match=r"document_id .* control characters"):
        prepare(RawDocument(document_id="a\nb", content=b"text"), 0, **limits)


def plan(**overrides: object) -> SearchPlan:
    values: dict = dict(collection_id=7, tenant="t1", model_version=3, dims=384, k=5, candidates=50,
                        vector=[0.1] * 384, keywords="", vector_weight=1.0, text_weight=0.0, rrf_k=60,
                        filter=Filter(), path="hnsw")
    values.update(overrides)
    return SearchPlan(**values)


def test_the_hnsw_path_matches_the_partial_index_and_the_exact_path_cannot() -> None:
    statement, params = search_sql(plan())
    text = text_of(statement)
    assert "c.embedding::vector(384) <=> %(qv)s::vector(384)" in text
    assert "c.dims = 384" in text and "c.tenant = %(tenant)s" in text and "c.model_version = %(version)s" in text
    assert (params["cid"], params["version"], params["tenant"], params["n"], params["k"]) == (7, 3, "t1", 50, 5)
    exact = text_of(search_sql(plan(path="exact"))[0])
    assert "c.embedding <=> %(qv)s::vector" in exact and "::vector(384) <=>" not in exact
    assert " t AS " not in text  # no keywords, no full-text ranking


def test_hybrid_fuses_both_rankings_and_relaxes_plain_questions_to_or() -> None:
    statement, _ = search_sql(plan(keywords="how much is the fee", text_weight=1.0))
    text = text_of(statement)
    assert "FULL JOIN tr" in text and "%(wv)s / (%(rrf)s + vr.rank)" in text and "%(wt)s / (%(rrf)s + tr.rank)" in text
    assert "replace(websearch_to_tsquery('english', %(qt)s)::text, ' & ', ' | ')::tsquery" in text
    exact_phrase = text_of(search_sql(plan(keywords='"foreign fee" -atm', text_weight=1.0))[0])
    assert "replace(" not in exact_phrase and "websearch_to_tsquery('english', %(qt)s)" in exact_phrase
    text_only = text_of(search_sql(plan(vector=None, vector_weight=0.0, keywords="fee", text_weight=1.0))[0])
    assert " v AS " not in text_only and "0::float8 AS similarity" in text_only
    with pytest.raises(InvalidArgument):
        search_sql(plan(vector=None, vector_weight=0.0))


def test_filters_become_conditions_on_the_chunks() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    f = Filter(doc_types=("policy",), tags_any=("a", "b"), tags_all=("c",), date_from=when, date_to=when,
               document_ids=("d1",))
    statement, params = search_sql(plan(filter=f, path="auto", exact_max_rows=3000))
    text = text_of(statement)
    for condition in ("c.doc_type = ANY(%(f_doc_types)s::text[])", "c.tags && %(f_tags_any)s::text[]",
                      "c.tags @> %(f_tags_all)s::text[]", "c.document_date >= %(f_date_from)s",
                      "c.document_date <= %(f_date_to)s", "c.document_id = ANY(%(f_document_ids)s::text[])"):
        assert condition in text
    assert params["f_tags_any"] == ["a", "b"] and "LIMIT %(cap)s" in text and params["cap"] == 3001
    # Filtered: the statement counts the scope and gates an exact and an HNSW branch on it.
    assert "(SELECT n FROM scope) <= %(exact_max)s" in text and "(SELECT n FROM scope) > %(exact_max)s" in text
    assert "c.embedding <=> %(qv)s::vector" in text and "c.embedding::vector(384) <=> %(qv)s::vector(384)" in text


def collection(**overrides: object) -> Collection:
    values: dict = dict(id=1, tenant="t1", name="docs", description="", embedding_model="minilm", active_version=2,
                        dimensions=384, active_chunks=0, pending_version=None, pending_dimensions=None,
                        pending_chunks=0, reindex_cursor=None, created_at=datetime.now(UTC))
    values.update(overrides)
    return Collection(**values)


def test_documents_are_embedded_with_the_active_and_the_pending_version() -> None:
    assert versions_to_embed(collection(active_version=None)) == [0]
    assert versions_to_embed(collection()) == [2]
    assert versions_to_embed(collection(pending_version=3)) == [2, 3]
    doc = Document(collection_id=1, document_id="fees.md", tenant="t1", title="Fees", source="fees.md",
                   mime_type="text/markdown", text="# Fees", content_sha256="abc", characters=6, revision=4,
                   doc_type="policy", tags=["x"], document_date=datetime(2026, 2, 1, tzinfo=UTC),
                   metadata={"k": "v"}, deleted=False, active_revision=3, pending_revision=None,
                   ingested_at=datetime.now(UTC))
    event = document_event(collection(pending_version=3), doc, 3)
    p = event.payload
    assert event.key == "fees.md" and event.topic.name == "documents.ingested"
    assert (p.tenant, p.collection, p.revision, p.doc_type, list(p.tags), p.embed_with.name, p.embed_with.version) == (
        "t1", "docs", 4, "policy", ["x"], "minilm", 3)
    assert p.document_date.ToDatetime(UTC) == doc.document_date and p.text == "# Fees"


def embedded(dims: int, lengths: list[int]) -> documents_pb2.DocumentEmbedded:
    return documents_pb2.DocumentEmbedded(
        document_id="d", dimensions=dims, embedding_model=common_pb2.ModelRef(name="minilm", version=2),
        chunks=[documents_pb2.Chunk(index=i, vector=[0.5] * n) for i, n in enumerate(lengths)])


def test_wrong_dimensions_are_poison_with_a_clear_message() -> None:
    assert check_dimensions(embedded(384, [384, 384]), collection(), 2) == 384
    assert check_dimensions(embedded(0, [16]), collection(dimensions=None), 2) == 16
    with pytest.raises(PoisonEvent, match="768-dimensional vectors, but that model version's index holds 384"):
        check_dimensions(embedded(768, [768]), collection(), 2)
    with pytest.raises(PoisonEvent, match="chunk 1 has 10 values, the event says 384"):
        check_dimensions(embedded(384, [384, 10]), collection(), 2)
    with pytest.raises(PoisonEvent, match="4096 dimensions"):
        check_dimensions(embedded(4096, [4096]), collection(dimensions=None), 2)


def test_the_text_limit_must_fit_in_an_event() -> None:
    with pytest.raises(ValueError, match=r"does not fit in a documents\.ingested event"):
        RetrieverSettings(kafka_bootstrap="k:9092", database_url="postgresql://x", max_text_bytes=MAX_MESSAGE_BYTES)
    assert RetrieverSettings(kafka_bootstrap="k:9092", database_url="postgresql://x").max_text_bytes == 300_000
