"""The rack's processes: the supervisor, the gateway and the five services.

Two imports no rack process uses are marked absent here, before anything else is imported (a ``None`` in
``sys.modules`` makes ``import`` raise ImportError, and both importers expect that): httpx's package imports
its own command line, ``httpx._main``, which pulls in rich, pygments and click (about 4 MiB per process);
fastapi looks for pydantic v1 models among the routes' annotations by importing ``pydantic.v1`` (about
2 MiB). Measured with ``python -m bench idle_rss``.
"""

import sys

for _unused in ("httpx._main", "pydantic.v1"):
    sys.modules.setdefault(_unused, None)  # type: ignore[arg-type]
