"""``python -m retrieval.serve`` (``tvr-serve``): :func:`retrieval.service.serve.main`."""
import sys

from retrieval.service.serve import main

if __name__ == "__main__":
    sys.exit(main())
