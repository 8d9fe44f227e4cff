-- The review app: its users and sessions, the queues and their items (from reviews.requested), the
-- leases reviewers hold, their skips and decisions.

-- People who log in to the pages. (The JSON API also takes the platform's bearer tokens; those callers
-- are not rows here.)
CREATE TABLE users (
    id            text        PRIMARY KEY,
    -- Lower case, unique.
    username      text        NOT NULL UNIQUE,
    -- argon2id (argon2-cffi's encoded form: parameters, salt and hash).
    password_hash text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('reviewer', 'lead', 'admin')),
    -- The queues this user works (reviewer) or leads (lead); empty = every queue.
    queues        text[]      NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL DEFAULT '',
    disabled_at   timestamptz
);

-- Server-side sessions: the cookie carries a signed random token whose sha256 is the id here, so logout
-- (or disabling the user) ends a session for good.
CREATE TABLE sessions (
    id            text        PRIMARY KEY,
    user_id       text        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Every form of this session carries it; a POST without it is refused.
    csrf_token    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

-- Keys generated once and shared by every replica (the session cookie signing key, unless configured).
CREATE TABLE secrets (
    name          text        PRIMARY KEY,
    value         text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One queue per model or LLM application (the name in ReviewRequested.model).
CREATE TABLE queues (
    name          text        PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- status: open (needs labels) -> done (final decision; its events are in the outbox), or -> conflict (two
-- labels disagree; a lead resolves it -> done). Undo moves an item back.
CREATE TABLE items (
    id              text        PRIMARY KEY,
    -- ReviewRequested.review_id (the event id when empty): a redelivered event adds nothing.
    review_id       text        NOT NULL UNIQUE,
    -- The prediction or answer judged: request id, plus the row's entity id for a batched predictive request.
    -- The same prediction never enters a queue twice (e.g. a low-confidence sample later disputed).
    item_key        text        NOT NULL UNIQUE,
    queue           text        NOT NULL REFERENCES queues (name),
    kind            text        NOT NULL CHECK (kind IN ('predictive', 'answer')),
    request_id      text        NOT NULL,
    entity_id       text        NOT NULL DEFAULT '',
    -- flywheel.events.v1.ReviewReason.
    reason          smallint    NOT NULL DEFAULT 0,
    priority        integer     NOT NULL DEFAULT 0,
    model_name      text        NOT NULL,
    model_version   bigint      NOT NULL DEFAULT 0,
    prompt_name     text        NOT NULL DEFAULT '',
    prompt_version  bigint      NOT NULL DEFAULT 0,
    guard_verdict_id text       NOT NULL DEFAULT '',
    -- What the reviewer is shown: the row's inputs and outputs (predictive), the exchange and retrieved chunks
    -- (answers), the model's prediction, the request's context. Already redacted by the producer.
    content         jsonb       NOT NULL,
    -- Join keys of the judged row and when it happened: a label is valid as of then (feedback.received).
    entity_keys     jsonb       NOT NULL DEFAULT '{}',
    event_time      timestamptz NOT NULL,
    requested_at    timestamptz NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    -- 2 = double labelled (two reviewers label it independently).
    labels_needed   smallint    NOT NULL DEFAULT 1 CHECK (labels_needed IN (1, 2)),
    labels_done     smallint    NOT NULL DEFAULT 0,
    status          text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'conflict', 'done')),
    -- The decision whose events were emitted (done items).
    final_decision_id text,
    completed_at    timestamptz
);
CREATE INDEX items_next ON items (queue, priority DESC, requested_at, id) WHERE status = 'open';
CREATE INDEX items_conflicts ON items (queue, requested_at) WHERE status = 'conflict';

-- Who holds an item now. A lease past expires_at no longer counts: the item is back in the queue.
CREATE TABLE leases (
    item_id       text        NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    reviewer      text        NOT NULL,
    queue         text        NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (item_id, reviewer)
);
CREATE INDEX leases_reviewer ON leases (reviewer, queue, expires_at);

-- Items a reviewer skipped: claim-next does not offer them to that reviewer again.
CREATE TABLE skips (
    item_id       text        NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    reviewer      text        NOT NULL,
    queue         text        NOT NULL,
    skipped_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, reviewer)
);
CREATE INDEX skips_time ON skips (queue, skipped_at);

-- Every decision, kept after an undo (undone_at) for the record; exports and agreement use the others.
CREATE TABLE decisions (
    id            text        PRIMARY KEY,
    item_id       text        NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    queue         text        NOT NULL,
    -- The user name, or the principal of the bearer token.
    reviewer      text        NOT NULL,
    -- label (predictive), approve | correct | reject (answers).
    action        text        NOT NULL CHECK (action IN ('label', 'approve', 'correct', 'reject')),
    -- What agreement compares: the label's name (predictive) or the action (answers).
    category      text        NOT NULL,
    -- The label sent on feedback.received: {"flag": true} / {"text": "rejected"}.
    label         jsonb       NOT NULL,
    corrected_completion text   NOT NULL DEFAULT '',
    -- A reject's reason, or a free comment.
    comment       text        NOT NULL DEFAULT '',
    -- A lead's resolution of a conflict (not one of the independent labels).
    resolution    boolean     NOT NULL DEFAULT false,
    claimed_at    timestamptz,
    decided_at    timestamptz NOT NULL DEFAULT now(),
    undo_until    timestamptz NOT NULL,
    undone_at     timestamptz,
    -- The outbox events of a final decision (held there until undo_until).
    event_ids     text[]      NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX decisions_one_per_reviewer ON decisions (item_id, reviewer) WHERE undone_at IS NULL AND NOT resolution;
CREATE INDEX decisions_item ON decisions (item_id);
CREATE INDEX decisions_time ON decisions (decided_at, id);
CREATE INDEX decisions_reviewer ON decisions (reviewer, decided_at);
