"""The command line of synthetic-av: ``python -m data.synthetic`` / ``tvr-synthetic``.

``--n 300 --seed 0 --out DIR`` renders the dataset into ``DIR`` (:func:`data.synthetic.generate`)
and prints the oracle ceilings. Exit codes (:class:`data.cli.Exit`): 0 done; 2 a bad option, a bad
``TVR_*`` setting or an ``--out`` folder that holds another plan (one line on stderr).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from data import synthetic
from data.cli import add_version, guarded
from data.settings import get_settings


@guarded(FileExistsError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.synthetic", description=synthetic.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="number of videos (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output folder (videos/, annotations.jsonl, oracle.md)")
    p.add_argument("--test", type=int, default=None, help="test videos (default min(100, n/4))")
    p.add_argument("--val", type=int, default=None, help="validation videos (default n/10)")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: all cores)")
    add_version(p)
    args = p.parse_args(argv)
    get_settings()  # a bad TVR_* value is refused as by every command (generating reads none)
    start = time.time()
    ann = synthetic.generate(args.out, args.n, args.seed, args.workers, args.test, args.val)
    print(f"wrote {args.n} videos and {ann} in {time.time() - start:.1f} s")
    print((Path(args.out) / "oracle.md").read_text())
    return 0
