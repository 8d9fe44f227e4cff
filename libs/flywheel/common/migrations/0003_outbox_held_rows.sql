-- Rows held back until a time (`not_before`): a change that may still be taken back within a short window
-- (the review app's undo) writes its events with the change, held; taking it back withdraws the rows
-- before the relay may send them, so no published event is left behind. NULL = send right away.
ALTER TABLE outbox ADD COLUMN not_before timestamptz;
