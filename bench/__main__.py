"""``python -m bench [NAME ...] [--repeat N]``."""

from bench.main import main

raise SystemExit(main())
