"""``python -m retrieval.export`` (``tvr-export-embeddings``): :func:`retrieval.index.export.main`."""
import sys

from retrieval.index.export import main

if __name__ == "__main__":
    sys.exit(main())
