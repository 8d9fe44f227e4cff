-- Inference's response cache (flywheel/inference/cache): one row per finished generation, found by its exact
-- key (the exact cache's shared level behind each replica's in-memory LRU) or, for the semantic cache, by the
-- nearest embedded last user turn among the rows of one context key (the fingerprint of everything else).
-- Applied on its own migration track (`llm_cache`) in inference's schema.

-- pgvector lives in `public`, where every schema's search_path finds it (as the retriever's migration does).
CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;

CREATE TABLE llm_cache (
    -- sha256 of everything that changes the answer, the last user turn included.
    exact_key           text        PRIMARY KEY,
    -- sha256 of everything but the last user turn's text; NULL = not reachable semantically (a raw prompt,
    -- or a conversation that does not end with a user turn).
    context_key         text,
    tenant              text        NOT NULL,
    -- The name asked for (base LLM or adapter) and its version (both in the keys too; kept for eviction).
    model               text        NOT NULL,
    model_version       bigint      NOT NULL,
    -- {registry name: version} of every versioned thing the answer came from (model, prompt template, ...):
    -- a promotion of one of these names to another version deletes the row.
    dependencies        jsonb       NOT NULL,
    -- The last user turn, and its vector from one embedding model version (NULL when it was not embedded).
    question            text,
    embedding_model     text,
    embedding_version   bigint,
    embedding           vector,
    -- The answer.
    answer              text        NOT NULL,
    token_ids           integer[]   NOT NULL,
    finish_reason       text        NOT NULL,
    prompt_tokens       integer     NOT NULL,
    completion_tokens   integer     NOT NULL,
    extra               jsonb       NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL
);
-- The semantic search is exact over one scope (a btree path, no vector index): filtering by fingerprint can
-- never drop the true nearest row the way a post-filtered approximate index scan can.
CREATE INDEX llm_cache_semantic ON llm_cache (context_key, tenant, embedding_model, embedding_version)
    WHERE embedding IS NOT NULL;
CREATE INDEX llm_cache_dependencies ON llm_cache USING gin (dependencies);
CREATE INDEX llm_cache_expires ON llm_cache (expires_at);
CREATE INDEX llm_cache_created ON llm_cache (created_at);
