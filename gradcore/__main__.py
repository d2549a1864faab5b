"""``python -m gradcore``: the same as the ``gradcore`` command."""

from gradcore.cli import main

raise SystemExit(main())
