-- retrain.requests that arrived before their application had anything to learn from (no reviewed examples yet,
-- or, for a distillation, no logged answers of the champion): kept here, not dead-lettered, and turned into a
-- run (their ids linked in retrain_requests) as soon as the data arrives. The monitor's quality alerts do
-- this: the answers it samples for review are what the run will learn from.
CREATE TABLE waiting_requests (
    request_id     text        PRIMARY KEY,
    application    text        NOT NULL,
    settings       jsonb       NOT NULL,
    reason         integer     NOT NULL,
    drift_event_id text        NOT NULL,
    parent_version bigint      NOT NULL,
    requested_by   text        NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX waiting_requests_by_application ON waiting_requests (application, received_at);
