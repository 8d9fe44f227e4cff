-- The guard's policies (versioned per application) and its verdicts (the audit trail in the database;
-- guard.verdicts carries the same through the outbox). Neither ever holds raw PII: verdicts keep the
-- redacted text, spans and scores only.

CREATE TABLE policies (
    application  text        NOT NULL,
    version      bigint      NOT NULL,
    yaml         text        NOT NULL,
    -- The token principal that put it ("seed" for a policy loaded from the policies directory).
    created_by   text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application, version)
);

CREATE TABLE verdicts (
    verdict_id     uuid        PRIMARY KEY,
    request_id     text        NOT NULL DEFAULT '',
    application    text        NOT NULL,
    policy_version bigint      NOT NULL,
    -- input | output
    stage          text        NOT NULL,
    -- allow | redact | block | escalate
    action         text        NOT NULL,
    blocked        boolean     NOT NULL,
    escalated      boolean     NOT NULL,
    rule           text        NOT NULL DEFAULT '',
    rails_fired    text[]      NOT NULL DEFAULT '{}',
    -- rail -> score
    scores         jsonb       NOT NULL DEFAULT '{}',
    -- [{kind, start, end}] in the checked text
    spans          jsonb       NOT NULL DEFAULT '[]',
    redacted_text  text        NOT NULL DEFAULT '',
    principal      text        NOT NULL DEFAULT '',
    detectors      text        NOT NULL DEFAULT '',
    stream_window  boolean     NOT NULL DEFAULT false,
    latency_ms     double precision NOT NULL DEFAULT 0,
    checked_at     timestamptz NOT NULL
);
CREATE INDEX verdicts_request ON verdicts (request_id);
CREATE INDEX verdicts_application_newest ON verdicts (application, checked_at DESC);
