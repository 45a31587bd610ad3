"""``python -m retrieval.evaluate`` (``tvr-evaluate``): :func:`retrieval.evaluation.evaluate.main`."""
import sys

from retrieval.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
