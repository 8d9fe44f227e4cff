-- Who asked for an evaluation (audit): the principal of the caller's bearer token (Evaluate), or the
-- service whose event queued it. Evaluations from before are unknown.
ALTER TABLE evaluations ADD COLUMN requested_by text NOT NULL DEFAULT '';
