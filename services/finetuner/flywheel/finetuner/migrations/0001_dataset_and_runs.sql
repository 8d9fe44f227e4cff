-- The fine-tuner's instruction datasets (built from reviews.requested + reviews.completed), their
-- snapshots, its LoRA runs (its job queue) and the retrain requests it received. Every text is stored
-- PII-redacted.

-- Answers under review that carry an LLM exchange, kept until the reviewer's decision arrives.
CREATE TABLE review_items (
    review_id      text        PRIMARY KEY,
    request_id     text        NOT NULL,
    -- The exchange's application, else the model the review names: the dataset it feeds.
    application    text        NOT NULL,
    model_name     text        NOT NULL,
    model_version  bigint      NOT NULL DEFAULT 0,
    -- [[role, content], ...] up to the user's last turn.
    messages       jsonb       NOT NULL,
    -- The rendered prompt the model saw (used when there are no messages).
    prompt         text        NOT NULL DEFAULT '',
    completion     text        NOT NULL DEFAULT '',
    -- PII replaced, by kind: {"email": 1, ...}.
    redactions     jsonb       NOT NULL DEFAULT '{}',
    received_at    timestamptz NOT NULL DEFAULT now()
);

-- Reviewers' decisions; `outcome` says what became of each: pending (its answer has not arrived),
-- example (a new example), duplicate (an example already there), rejected / unusable (nothing to learn).
CREATE TABLE review_decisions (
    review_id      text        PRIMARY KEY,
    request_id     text        NOT NULL,
    -- flywheel.events.v1.ReviewDecision.
    decision       smallint    NOT NULL,
    corrected      text        NOT NULL DEFAULT '',
    reviewer       text        NOT NULL DEFAULT '',
    completed_at   timestamptz NOT NULL,
    outcome        text        NOT NULL DEFAULT 'pending',
    application    text        NOT NULL DEFAULT '',
    example_id     bigint,
    redactions     jsonb       NOT NULL DEFAULT '{}',
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX review_decisions_by_application ON review_decisions (application, outcome);

-- One row per distinct (conversation, target) of an application.
CREATE TABLE examples (
    id             bigserial   PRIMARY KEY,
    application    text        NOT NULL,
    -- sha256 of the normalized conversation and target (the dedup key).
    example_key    text        NOT NULL,
    -- correction (the reviewer's answer is the target) or approval (the original answer is).
    kind           text        NOT NULL,
    messages       jsonb       NOT NULL,
    prompt         text        NOT NULL DEFAULT '',
    target         text        NOT NULL,
    -- The first review that gave it; later equal ones count in `duplicates`.
    review_id      text        NOT NULL,
    model_name     text        NOT NULL DEFAULT '',
    model_version  bigint      NOT NULL DEFAULT 0,
    duplicates     integer     NOT NULL DEFAULT 0,
    -- When the reviewer decided (the split is by this time).
    decided_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (application, example_key)
);
CREATE INDEX examples_in_time_order ON examples (application, decided_at, id);
CREATE INDEX examples_created ON examples (application, created_at);

-- What a run trained on: the examples and their split, named by the content hash.
CREATE TABLE snapshots (
    id             text        PRIMARY KEY,
    application    text        NOT NULL,
    train_examples integer     NOT NULL,
    eval_examples  integer     NOT NULL,
    corrections    integer     NOT NULL,
    approvals      integer     NOT NULL,
    reviews        integer     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE snapshot_examples (
    snapshot_id    text        NOT NULL REFERENCES snapshots (id),
    example_id     bigint      NOT NULL REFERENCES examples (id),
    split          text        NOT NULL,
    position       integer     NOT NULL,
    PRIMARY KEY (snapshot_id, example_id)
);

-- flywheel.finetuner.v1.RunStatus: 1 queued, 2 running, 3 succeeded, 4 failed.
CREATE TABLE runs (
    id                  text        PRIMARY KEY,
    application         text        NOT NULL,
    status              smallint    NOT NULL,
    -- Resolved when the run starts: the registry model, its base LLM version, its champion then.
    model_name          text        NOT NULL DEFAULT '',
    base_name           text        NOT NULL DEFAULT '',
    base_version        bigint      NOT NULL DEFAULT 0,
    parent_version      bigint      NOT NULL DEFAULT 0,
    settings            jsonb       NOT NULL DEFAULT '{}',
    metrics             jsonb       NOT NULL DEFAULT '{}',
    epochs              jsonb       NOT NULL DEFAULT '[]',
    dataset_snapshot_id text        NOT NULL DEFAULT '',
    train_examples      bigint      NOT NULL DEFAULT 0,
    eval_examples       bigint      NOT NULL DEFAULT 0,
    reviews             bigint      NOT NULL DEFAULT 0,
    -- Examples created up to this time are in the run's data: new corrections count from here.
    data_cutoff         timestamptz NOT NULL DEFAULT now(),
    -- flywheel.events.v1.RetrainReason.
    reason              smallint    NOT NULL DEFAULT 0,
    retrain_request_id  text        NOT NULL DEFAULT '',
    drift_event_id      text        NOT NULL DEFAULT '',
    requested_by        text        NOT NULL DEFAULT '',
    code_version        text        NOT NULL DEFAULT '',
    failure_reason      text        NOT NULL DEFAULT '',
    registered_version  bigint      NOT NULL DEFAULT 0,
    step                bigint      NOT NULL DEFAULT 0,
    total_steps         bigint      NOT NULL DEFAULT 0,
    checkpoint_step     bigint      NOT NULL DEFAULT 0,
    resumed_from_step   bigint      NOT NULL DEFAULT 0,
    attempts            integer     NOT NULL DEFAULT 0,
    coalesced_requests  integer     NOT NULL DEFAULT 0,
    stage               text        NOT NULL DEFAULT '',
    progress            double precision NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- At most one queued or running run per application.
CREATE UNIQUE INDEX runs_one_active_per_application ON runs (application) WHERE status IN (1, 2);
CREATE INDEX runs_newest ON runs (created_at DESC, id DESC);
CREATE INDEX runs_application_newest ON runs (application, created_at DESC, id DESC);
CREATE INDEX runs_queued ON runs (created_at) WHERE status = 1;

-- Every retrain request and what became of it: its own run, or coalesced into a queued/running one.
CREATE TABLE retrain_requests (
    request_id   text        PRIMARY KEY,
    application  text        NOT NULL,
    run_id       text        NOT NULL REFERENCES runs (id),
    coalesced    boolean     NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
