"""``python -m automtl``: the same command line as the ``automtl`` console script."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
