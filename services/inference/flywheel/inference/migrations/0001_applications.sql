-- LLM applications (see flywheel/inference/apps): one row per application, its definition as JSON.
CREATE TABLE applications (
    name text PRIMARY KEY,
    spec jsonb NOT NULL,
    -- The catalog revision of its last change.
    revision bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Principals of the tokens that created and last changed it (never a name sent in the request).
    created_by text NOT NULL,
    updated_by text NOT NULL
);

-- One row: moves on every create, replace and delete, in the same transaction. Every replica polls it and
-- re-reads the table when it moved (a delete leaves no row behind to notice).
CREATE TABLE applications_revision (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision bigint NOT NULL
);
INSERT INTO applications_revision (singleton, revision) VALUES (true, 0);
