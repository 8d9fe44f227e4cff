-- Online scoring of LLM answers: scored generations per application, their windows, the feedback on them.

CREATE TABLE llm_state (
    application text PRIMARY KEY,
    open_window_id text,
    windows bigint NOT NULL DEFAULT 0,
    -- The champion: the model version that most recently answered on the champion arm.
    model_name text NOT NULL DEFAULT '',
    model_version bigint NOT NULL DEFAULT 0,
    -- Windows since the champion changed (the first llm_reference_windows of them are the reference).
    epoch bigint NOT NULL DEFAULT 0
);

CREATE TABLE llm_windows (
    window_id text PRIMARY KEY,
    application text NOT NULL,
    sequence bigint NOT NULL,
    -- open -> closed (scored and judged)
    state text NOT NULL DEFAULT 'open',
    -- The champion when the window opened, and which champion period (llm_state.epoch) it belongs to.
    model_name text NOT NULL,
    model_version bigint NOT NULL,
    epoch bigint NOT NULL,
    generations bigint NOT NULL DEFAULT 0,
    start_ts timestamptz,
    end_ts timestamptz,
    opened_at timestamptz NOT NULL DEFAULT now(),
    -- WindowScores.as_dict(), the reference it was compared with, the checks.
    scores jsonb,
    reference jsonb,
    checks jsonb,
    is_reference boolean NOT NULL DEFAULT false,
    degraded boolean,
    drift_event_id text,
    retrain_request_id text,
    reviews integer NOT NULL DEFAULT 0,
    closed_at timestamptz,
    UNIQUE (application, sequence)
);
CREATE INDEX llm_windows_open ON llm_windows (opened_at) WHERE state = 'open';

CREATE TABLE llm_generations (
    request_id text PRIMARY KEY,
    application text NOT NULL,
    model_name text NOT NULL,
    model_version bigint NOT NULL,
    arm smallint NOT NULL,
    window_id text NOT NULL,
    ts timestamptz NOT NULL,
    groundedness double precision,
    refused boolean NOT NULL,
    pii_kinds text NOT NULL DEFAULT '',
    finish_reason text NOT NULL DEFAULT '',
    -- The serialized LlmExchange (redacted by inference), for review samples.
    exchange bytea NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_generations_window ON llm_generations (window_id);
CREATE INDEX llm_generations_ingested ON llm_generations (ingested_at);

-- Feedback on answers (either order with its generation; joined when the window closes).
CREATE TABLE llm_feedback (
    feedback_id text PRIMARY KEY,
    request_id text NOT NULL,
    negative boolean NOT NULL,
    source smallint NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_feedback_request ON llm_feedback (request_id);
CREATE INDEX llm_feedback_received ON llm_feedback (received_at);

CREATE TABLE llm_alerts (
    drift_id text PRIMARY KEY,
    application text NOT NULL,
    window_id text NOT NULL,
    detected_at timestamptz NOT NULL,
    event bytea NOT NULL,
    retrain_request_id text NOT NULL
);
CREATE INDEX llm_alerts_application ON llm_alerts (application, detected_at DESC);
