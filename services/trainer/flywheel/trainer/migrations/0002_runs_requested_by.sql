-- Who asked for a run (audit): the principal of the caller's bearer token (StartRun), or the service
-- that sent the retrain request (its event's source). Runs from before are unknown.
ALTER TABLE runs ADD COLUMN requested_by text NOT NULL DEFAULT '';
