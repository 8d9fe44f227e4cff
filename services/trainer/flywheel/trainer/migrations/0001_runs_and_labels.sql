-- Labels the trainer collects from feedback.received, and its training runs (experiment tracking).

-- One label per judged row and feedback source: the latest observation wins.
CREATE TABLE labels (
    -- entity_id when the feedback names the row, else the request id.
    label_key     text        NOT NULL,
    -- flywheel.events.v1.FeedbackSource.
    source        smallint    NOT NULL,
    feedback_id   text        NOT NULL,
    request_id    text        NOT NULL DEFAULT '',
    entity_id     text        NOT NULL DEFAULT '',
    -- flag, number or text: which of the value columns is set.
    value_kind    text        NOT NULL,
    flag          boolean,
    number        double precision,
    text          text,
    -- Join keys of the judged row, e.g. {"transaction_id": "t-1", "customer_id": "c-7"}.
    entity_keys   jsonb       NOT NULL DEFAULT '{}',
    -- When the judged event happened (features must be valid then) and when the truth became known.
    event_time    timestamptz NOT NULL,
    observed_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (label_key, source)
);
CREATE INDEX labels_by_window ON labels (source, event_time);

-- flywheel.trainer.v1.RunStatus: 1 queued, 2 running, 3 succeeded, 4 failed.
CREATE TABLE runs (
    id                  text        PRIMARY KEY,
    model_name          text        NOT NULL,
    status              smallint    NOT NULL,
    window_start        timestamptz NOT NULL,
    window_end          timestamptz NOT NULL,
    params              jsonb       NOT NULL DEFAULT '{}',
    metrics             jsonb       NOT NULL DEFAULT '{}',
    epochs              jsonb       NOT NULL DEFAULT '[]',
    dataset_snapshot_id text        NOT NULL DEFAULT '',
    feature_names       jsonb       NOT NULL DEFAULT '[]',
    code_version        text        NOT NULL DEFAULT '',
    failure_reason      text        NOT NULL DEFAULT '',
    registered_version  bigint      NOT NULL DEFAULT 0,
    -- flywheel.events.v1.RetrainReason.
    reason              smallint    NOT NULL DEFAULT 0,
    retrain_request_id  text        NOT NULL DEFAULT '',
    drift_event_id      text        NOT NULL DEFAULT '',
    parent_version      bigint      NOT NULL DEFAULT 0,
    label_rows          bigint      NOT NULL DEFAULT 0,
    train_rows          bigint      NOT NULL DEFAULT 0,
    validation_rows     bigint      NOT NULL DEFAULT 0,
    test_rows           bigint      NOT NULL DEFAULT 0,
    -- Last progress report (WatchRun reads it): stage text and 0..1.
    stage               text        NOT NULL DEFAULT '',
    progress            double precision NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- At most one queued or running run per model.
CREATE UNIQUE INDEX runs_one_active_per_model ON runs (model_name) WHERE status IN (1, 2);
CREATE INDEX runs_newest ON runs (created_at DESC, id DESC);
CREATE INDEX runs_model_newest ON runs (model_name, created_at DESC, id DESC);
CREATE INDEX runs_queued ON runs (created_at) WHERE status = 1;

-- Every retrain request and what became of it: its own run, or coalesced into a running one.
CREATE TABLE retrain_requests (
    request_id   text        PRIMARY KEY,
    model_name   text        NOT NULL,
    run_id       text        NOT NULL REFERENCES runs (id),
    coalesced    boolean     NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
