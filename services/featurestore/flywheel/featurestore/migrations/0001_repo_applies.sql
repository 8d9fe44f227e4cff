-- The feature store's own table. Feast creates and owns the rest of this schema: its SQL registry
-- (projects, entities, feature_views, ...), the online store (one table per feature view,
-- <project>_<view>), and the service creates each PostgreSQL source's offline table from the repo
-- at start-up. Every start records what its `feast apply` changed.
CREATE TABLE repo_applies (
    id          bigserial PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    repo        text NOT NULL,
    project     text NOT NULL,
    -- "Type:name" of the objects this apply added, and deleted (every other object is re-applied as is).
    added       jsonb NOT NULL,
    deleted     jsonb NOT NULL
);
