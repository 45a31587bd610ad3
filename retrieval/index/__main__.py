"""``python -m retrieval.index``: :func:`retrieval.index.cli.main`."""
import sys

from retrieval.index.cli import main

sys.exit(main())
