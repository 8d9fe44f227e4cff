"""Flywheel feature store: a user's Feast repo on PostgreSQL behind gRPC, fed by `features.updates`."""
