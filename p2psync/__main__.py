"""``python -m p2psync`` is the ``p2psync`` command."""

from .command import main

raise SystemExit(main())
