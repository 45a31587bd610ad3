"""``python -m retrieval.search`` (``tvr-search``): :func:`retrieval.query.search.main`."""
import sys

from retrieval.query.search import main

if __name__ == "__main__":
    sys.exit(main())
