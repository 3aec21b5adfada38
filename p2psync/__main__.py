"""``python -m p2psync`` is the ``p2psync`` command."""

from .cli import main

raise SystemExit(main())
