"""Flywheel's review app: human review queues fed by reviews.requested, worked in the browser or over a
JSON API, decisions back into the loop as feedback.received and reviews.completed."""
