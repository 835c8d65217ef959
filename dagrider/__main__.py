"""``python -m dagrider``: the same command line as the ``dagrider`` script."""

from dagrider.cli import main

raise SystemExit(main())
