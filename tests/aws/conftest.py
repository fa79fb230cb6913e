"""The AWS tests use moto in server mode: the ``moto_server`` and ``aws`` fixtures of tests/moto_server.py,
registered once for the whole session in tests/conftest.py."""
