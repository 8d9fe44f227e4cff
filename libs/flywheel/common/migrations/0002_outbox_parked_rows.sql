-- Rows the broker can never accept (too large, an invalid topic) are parked instead of blocking
-- the outbox: the relay sets parked_at and the error and goes on with the next rows. They are
-- kept (the retention clean-up removes sent rows only); clearing parked_at retries one.
ALTER TABLE outbox ADD COLUMN parked_at timestamptz, ADD COLUMN error text;

DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL AND parked_at IS NULL;
