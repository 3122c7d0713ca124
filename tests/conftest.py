"""Shared fixtures. Each area keeps its fixtures in its own plugin module below."""

pytest_plugins = [
    "tests.fixtures_nats",
    "tests.fixtures_models",
    "tests.fixtures_edge",
]
