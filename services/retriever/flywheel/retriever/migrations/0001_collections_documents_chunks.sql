-- The retriever: each tenant's collections, their documents (extracted text, revisions, tombstones),
-- and the chunks + vectors of each embedding model version that indexes them (an index generation).

-- pgvector lives in `public`, where every schema's search_path finds it. Creating it needs a superuser
-- (pgvector is not a trusted extension); on a managed database create it once beforehand.
CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;

CREATE TABLE collections (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant              text        NOT NULL,
    name                text        NOT NULL,
    description         text        NOT NULL DEFAULT '',
    -- Registry name of the embedding model; its versions are the collection's index generations.
    embedding_model     text        NOT NULL,
    -- The version queries use (NULL until the first chunks arrive or the model's champion is known) and
    -- its dimensions (NULL until its first chunks arrive).
    active_version      bigint,
    dimensions          integer,
    active_chunks       bigint      NOT NULL DEFAULT 0,
    -- A newer champion being indexed in the background; switched to when every live document has its chunks.
    pending_version     bigint,
    pending_dimensions  integer,
    pending_chunks      bigint      NOT NULL DEFAULT 0,
    -- The re-indexer's position while it queues documents.ingested for pending_version: documents with a
    -- larger id are still to be queued. NULL = nothing (left) to queue.
    reindex_cursor      text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, name)
);
CREATE INDEX collections_by_model ON collections (embedding_model);
CREATE INDEX collections_reindexing ON collections (id) WHERE reindex_cursor IS NOT NULL;

CREATE TABLE documents (
    collection_id       bigint      NOT NULL REFERENCES collections (id),
    document_id         text        NOT NULL,
    tenant              text        NOT NULL,
    title               text        NOT NULL DEFAULT '',
    source              text        NOT NULL DEFAULT '',
    mime_type           text        NOT NULL DEFAULT '',
    -- Extracted text (empty once deleted).
    text                text        NOT NULL DEFAULT '',
    content_sha256      text        NOT NULL DEFAULT '',
    characters          integer     NOT NULL DEFAULT 0,
    -- Bumped by every change of the text and by the deletion; events of older revisions are ignored.
    revision            bigint      NOT NULL,
    doc_type            text        NOT NULL DEFAULT '',
    tags                text[]      NOT NULL DEFAULT '{}',
    document_date       timestamptz,
    metadata            jsonb       NOT NULL DEFAULT '{}',
    -- A tombstone: the revision of the deletion stays, so late events about older revisions are ignored.
    deleted             boolean     NOT NULL DEFAULT false,
    -- The revision whose chunks of the active version are indexed (NULL = none yet).
    active_revision     bigint,
    -- While a re-index runs: the revision indexed in the pending version (0 = not yet); NULL otherwise.
    pending_revision    bigint,
    ingested_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, document_id)
);
-- The documents a running re-index still waits for: the switch checks that none is left with one probe.
CREATE INDEX documents_reindex_todo ON documents (collection_id) WHERE NOT deleted AND pending_revision < revision;

-- Vectors are one untyped `vector` column; each dimension count gets its own partial HNSW index on
-- `(embedding::vector(N)) vector_cosine_ops WHERE dims = N`, created when a generation of N dimensions
-- first arrives (store.ensure_vector_index). See the README's "Vectors" for why.
CREATE TABLE chunks (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection_id       bigint      NOT NULL,
    tenant              text        NOT NULL,
    -- The embedding model version (index generation) of the vector.
    model_version       bigint      NOT NULL,
    document_id         text        NOT NULL,
    revision            bigint      NOT NULL,
    chunk_id            text        NOT NULL,
    chunk_index         integer     NOT NULL,
    text                text        NOT NULL,
    start_offset        integer     NOT NULL DEFAULT 0,
    end_offset          integer     NOT NULL DEFAULT 0,
    section             text        NOT NULL DEFAULT '',
    token_count         integer     NOT NULL DEFAULT 0,
    dims                integer     NOT NULL,
    embedding           vector      NOT NULL,
    -- The document's filterable metadata, copied here so filters need no join.
    doc_type            text        NOT NULL DEFAULT '',
    tags                text[]      NOT NULL DEFAULT '{}',
    document_date       timestamptz,
    -- Full text: the heading path weighs more than the body.
    tsv                 tsvector    GENERATED ALWAYS AS (
                            setweight(to_tsvector('english', section), 'A') ||
                            setweight(to_tsvector('english', text), 'B')) STORED,
    CONSTRAINT chunks_dims CHECK (dims > 0 AND dims = vector_dims(embedding))
);
-- Scope of every query (a collection's generation) and the replace/delete of one document's chunks.
CREATE UNIQUE INDEX chunks_document ON chunks (collection_id, model_version, document_id, chunk_index);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
-- Filters: exact search over a small filtered set finds its rows through these.
CREATE INDEX chunks_doc_type ON chunks (collection_id, model_version, doc_type);
CREATE INDEX chunks_document_date ON chunks (collection_id, model_version, document_date);
CREATE INDEX chunks_tags ON chunks USING gin (tags);
