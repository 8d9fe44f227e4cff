-- LLM evaluation: applications' golden sets (versioned by content, immutable), the reviewed answers of
-- recent traffic (joined from reviews.requested and reviews.completed), and the kind of each evaluation.

CREATE TABLE golden_sets (
    application     text        NOT NULL,
    version         bigint      NOT NULL,
    description     text        NOT NULL DEFAULT '',
    -- sha256 of the canonical content: a push equal to the newest version stores nothing.
    content_sha256  text        NOT NULL,
    -- The document as pushed.
    yaml            text        NOT NULL,
    answerable_items integer    NOT NULL,
    refusal_items   integer     NOT NULL,
    created_by      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application, version)
);

-- One row per review of an LLM answer; the question comes with reviews.requested, the decision with
-- reviews.completed (either may arrive first). Texts are as the topics carry them (redacted by the guard).
CREATE TABLE reviewed_answers (
    review_id       text        PRIMARY KEY,
    application     text        NOT NULL DEFAULT '',
    question        text        NOT NULL DEFAULT '',
    completion      text        NOT NULL DEFAULT '',
    -- flywheel.events.v1.ReviewDecision (0 = not decided yet).
    decision        smallint    NOT NULL DEFAULT 0,
    corrected       text        NOT NULL DEFAULT '',
    decided_at      timestamptz,
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reviewed_answers_recent ON reviewed_answers (application, decided_at DESC);

-- predictive (labels + features) or llm (golden set + reviewed traffic through inference).
ALTER TABLE evaluations ADD COLUMN kind text NOT NULL DEFAULT 'predictive';
