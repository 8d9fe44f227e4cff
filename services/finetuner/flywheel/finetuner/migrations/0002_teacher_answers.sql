-- Distillation: the champion's logged answers per application (from predictions.logged), and what a
-- distillation run trained on (copied, so a resumed run reads the same data even after the bounded table
-- dropped its oldest answers).

-- One row per logged request (arm CHAMPION, finished normally), PII-redacted; at most
-- `teacher_answers_per_application` per application (the oldest are dropped).
CREATE TABLE teacher_answers (
    application    text        NOT NULL,
    request_id     text        NOT NULL,
    model_name     text        NOT NULL,
    model_version  bigint      NOT NULL,
    -- [[role, content], ...] up to the user's last turn.
    messages       jsonb       NOT NULL,
    prompt         text        NOT NULL DEFAULT '',
    completion     text        NOT NULL,
    -- sha256 of the normalized conversation (without the answer): the question.
    question_key   text        NOT NULL,
    redactions     jsonb       NOT NULL DEFAULT '{}',
    -- When the answer was logged (the event's timestamp; the split is by this time).
    logged_at      timestamptz NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application, request_id)
);
CREATE INDEX teacher_answers_in_time_order ON teacher_answers (application, logged_at, request_id);

-- A distillation snapshot's items, in order (its head is in `snapshots`, its reviewed examples also in
-- `snapshot_examples`): the teacher's answers and the reviewed examples, each with its split.
CREATE TABLE distill_snapshot_items (
    snapshot_id    text        NOT NULL REFERENCES snapshots (id),
    position       integer     NOT NULL,
    -- teacher, correction or approval.
    source         text        NOT NULL,
    -- The request id of a teacher answer, the review id of an example.
    ref            text        NOT NULL,
    messages       jsonb       NOT NULL,
    prompt         text        NOT NULL DEFAULT '',
    target         text        NOT NULL,
    split          text        NOT NULL,
    at             timestamptz NOT NULL,
    PRIMARY KEY (snapshot_id, position)
);
