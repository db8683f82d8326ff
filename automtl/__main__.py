"""``python -m automtl``: the same command line as the ``automtl`` console script."""

from .app.cli import entry

if __name__ == "__main__":
    entry()
