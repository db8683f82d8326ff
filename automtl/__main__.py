"""``python -m automtl``: the same command line as the ``automtl`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
