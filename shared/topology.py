"""The rack's shape: its internal services and the header that proves a request came through the gateway.

Apart from :mod:`shared.config` (which re-exports both) so that the supervisor, which needs only these,
does not import pydantic (about 8 MiB of its memory).
"""

SERVICES = ("apps", "processes", "logs", "builds", "provisioner")
"""The internal services, each a separate OS process behind the gateway."""

INTERNAL_HEADER = "x-rack-internal"
"""The header carrying the gateway's per-start secret; internal services refuse requests without it."""
