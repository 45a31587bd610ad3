"""``python -m retrieval.reindex``: :func:`retrieval.reindex.cli.main`."""
import sys

from retrieval.reindex.cli import main

sys.exit(main())
