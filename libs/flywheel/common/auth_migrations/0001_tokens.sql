-- Bearer tokens of the platform: one row per token, only its sha256 is kept (the secret is shown
-- once, at creation). Every service reads this table to authenticate calls; only the `flywheel auth`
-- CLI (and `make run`'s launcher) writes it.
CREATE TABLE tokens (
    -- The first 12 hex characters of the sha256: a handle for listing and revoking.
    id           text        PRIMARY KEY,
    sha256       text        NOT NULL UNIQUE,
    principal    text        NOT NULL,
    roles        text[]      NOT NULL,
    description  text        NOT NULL DEFAULT '',
    created_by   text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX tokens_principal ON tokens (principal);
