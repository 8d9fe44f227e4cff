"""The session's fixtures for every test tree (`tests/` and the examples' `examples/*/tests/`): one broker, one
database, one registry, the session's tokens (tests/fixtures_plugin.py). pytest honours `pytest_plugins` only in
the rootdir's conftest, which is why this file exists."""

pytest_plugins = ["tests.fixtures_plugin"]
