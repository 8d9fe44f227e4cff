-- The evaluator's labels (from feedback.received) and its evaluations with their reports.

-- Flag labels only: one per judged row and feedback source, the latest observation wins.
CREATE TABLE labels (
    -- entity_id when the feedback names the row, else the request id.
    label_key     text        NOT NULL,
    -- flywheel.events.v1.FeedbackSource.
    source        smallint    NOT NULL,
    feedback_id   text        NOT NULL,
    flag          boolean     NOT NULL,
    -- Join keys of the judged row, e.g. {"transaction_id": "t-1", "customer_id": "c-7"}.
    entity_keys   jsonb       NOT NULL DEFAULT '{}',
    -- When the judged event happened (features are read as of then) and when the truth became known.
    event_time    timestamptz NOT NULL,
    observed_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (label_key, source)
);
CREATE INDEX labels_recent ON labels (source, event_time DESC);

-- status: queued -> running -> completed (a running one found at start-up was interrupted: queued again).
CREATE TABLE evaluations (
    id                  text        PRIMARY KEY,
    model_name          text        NOT NULL,
    candidate_version   bigint      NOT NULL,
    -- What was asked: 0 = the champion at the time the evaluation runs.
    requested_baseline  bigint      NOT NULL DEFAULT 0,
    -- What it was compared against (0 = there was no champion).
    baseline_version    bigint      NOT NULL DEFAULT 0,
    -- The models.registered event that asked for it (NULL for the Evaluate RPC).
    trigger_event_id    text        UNIQUE,
    status              text        NOT NULL,
    -- flywheel.events.v1.EvaluationVerdict.
    verdict             smallint    NOT NULL DEFAULT 0,
    error               text        NOT NULL DEFAULT '',
    candidate_metrics   jsonb       NOT NULL DEFAULT '{}',
    baseline_metrics    jsonb       NOT NULL DEFAULT '{}',
    checks              jsonb       NOT NULL DEFAULT '[]',
    -- The full report: metrics, slices, calibration, data window, rows, checks.
    report              jsonb       NOT NULL DEFAULT '{}',
    data_start          timestamptz,
    data_end            timestamptz,
    rows                bigint      NOT NULL DEFAULT 0,
    attempts            integer     NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- First start: the wait for labels is measured from here, across restarts.
    started_at          timestamptz,
    completed_at        timestamptz
);
CREATE INDEX evaluations_newest ON evaluations (created_at DESC, id DESC);
CREATE INDEX evaluations_model_newest ON evaluations (model_name, created_at DESC, id DESC);
CREATE INDEX evaluations_queued ON evaluations (created_at) WHERE status = 'queued';
