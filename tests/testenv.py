"""Fixtures for the real test environment (filled in below)."""
