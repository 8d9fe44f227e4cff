"""End-to-end tests share the integration fixtures (an in-process registry, a producer, tracing)."""

from tests.integration.conftest import producer, registry, registry_app, tracing  # noqa: F401
