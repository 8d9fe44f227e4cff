-- Models, their versions, aliases (with history) and the evaluations the registry acted on.
CREATE TABLE models (
    name            text        PRIMARY KEY,
    -- flywheel.registry.v1.PromotionMode: 1 manual, 2 automatic.
    promotion_mode  smallint    NOT NULL DEFAULT 1,
    next_version    bigint      NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_versions (
    model_name        text        NOT NULL REFERENCES models (name),
    version           bigint      NOT NULL,
    semver            text,
    -- flywheel.events.v1.ModelKind.
    kind              smallint    NOT NULL,
    framework         text        NOT NULL DEFAULT '',
    description       text        NOT NULL DEFAULT '',
    artifact_uri      text        NOT NULL,
    artifact_sha256   text        NOT NULL,
    artifact_size     bigint      NOT NULL,
    artifact_filename text        NOT NULL DEFAULT '',
    tags              jsonb       NOT NULL DEFAULT '{}',
    metrics           jsonb       NOT NULL DEFAULT '{}',
    -- flywheel.events.v1.Lineage as JSON (camelCase field names), queryable.
    lineage           jsonb       NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version),
    UNIQUE (model_name, semver)
);
CREATE INDEX model_versions_tags ON model_versions USING gin (tags);
CREATE INDEX model_versions_run ON model_versions ((lineage ->> 'trainingRunId'));

-- One row per (model, alias): two champions cannot exist.
CREATE TABLE aliases (
    model_name  text        NOT NULL,
    alias       text        NOT NULL,
    version     bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, alias),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);

CREATE TABLE alias_history (
    id                bigserial   PRIMARY KEY,
    model_name        text        NOT NULL,
    alias             text        NOT NULL,
    previous_version  bigint      NOT NULL,
    version           bigint      NOT NULL,
    -- flywheel.events.v1.PromotionReason.
    reason            smallint    NOT NULL,
    actor             text        NOT NULL DEFAULT '',
    evaluation_id     text        NOT NULL DEFAULT '',
    changed_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alias_history_model ON alias_history (model_name, id);

CREATE TABLE evaluations (
    evaluation_id     text        PRIMARY KEY,
    model_name        text        NOT NULL,
    candidate_version bigint      NOT NULL,
    baseline_version  bigint      NOT NULL,
    -- flywheel.events.v1.EvaluationVerdict.
    verdict           smallint    NOT NULL,
    report_uri        text        NOT NULL DEFAULT '',
    -- What the registry did with it: promoted, manual_policy, failed, stale_baseline, already_champion.
    decision          text        NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now()
);
