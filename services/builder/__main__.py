"""``python -m services.builder``: the builder task's program (see :mod:`services.builder.task`)."""

from __future__ import annotations

import os
import sys

from services.builder.task import run

if __name__ == "__main__":
    sys.exit(run(os.environ))
