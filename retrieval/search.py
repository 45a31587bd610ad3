"""``python -m retrieval.search`` (``tvr-search``): :func:`retrieval.query.cli.main`."""
import sys

from retrieval.query.cli import main

if __name__ == "__main__":
    sys.exit(main())
