"""Run by tests/test_index.py in a subprocess: ``python -m retrieval.index`` for dataset 'toy' with
the fake model (``TVR_INDEX_CRASH_AT`` kills it at one step of the build)."""
import sys

from fake_fusion_api import FakeFusion

from retrieval.index import cli as index_cli


class _Patch:
    @staticmethod
    def setitem(mapping, key, value):
        mapping[key] = value


FakeFusion().install(_Patch())
sys.exit(index_cli.main(["--dataset", "toy", "--no-gpu"]))
