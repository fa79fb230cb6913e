"""The `convox` command line.

httpx's package imports its own command line, ``httpx._main`` (rich's syntax highlighting, pygments, click's
terminal helpers: about 30 ms of every command's start); `convox` never runs it, so it is marked absent here
before anything imports httpx (a ``None`` in ``sys.modules`` makes that import raise ImportError, which httpx
expects and answers with a stand-in).
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
