"""Fixtures: edge."""
