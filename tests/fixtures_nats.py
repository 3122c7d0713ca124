"""Fixtures: nats."""
