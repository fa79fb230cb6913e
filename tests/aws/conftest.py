"""Fixtures for the AWS tests: moto in server mode (tests/moto_server.py)."""

from tests.moto_server import aws, moto_server  # noqa: F401
