"""The command line of synthetic-av and synthetic-events: ``python -m data.synthetic`` / ``tvr-synthetic``.

``--n 300 --seed 0 --out DIR`` renders synthetic-av into ``DIR`` (:func:`data.synthetic.generate`)
and prints the oracle ceilings. ``--events [--n 120] [--seed 0]`` renders synthetic-events into
``$TVR_HOME/datasets/synthetic-events/`` with its manifest and caption windows
(:func:`data.synthetic.events.prepare_events`) and prints its moment ceilings. Exit codes
(:class:`data.cli.Exit`): 0 done; 2 a bad option, a bad ``TVR_*`` setting or an output folder that
holds another plan (one line on stderr).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from data import synthetic
from data.cli import add_version, guarded
from data.settings import get_settings
from data.synthetic import events
from data.synthetic.scenes import split_sizes
from data.windows import windows_path


@guarded(FileExistsError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.synthetic", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="\n".join(m.__doc__.split("\n\n")[0] for m in (synthetic, events)))
    p.add_argument("--events", action="store_true",
                   help=f"render synthetic-events (segments with known boundaries, for moment retrieval) "
                        f"into $TVR_HOME/datasets/{events.EVENTS_DATASET}/ with its manifest and caption windows")
    p.add_argument("--n", type=int, default=None,
                   help=f"number of videos (default 300; {events.EVENTS_N} with --events)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="output folder (videos/, annotations.jsonl, oracle.md); required "
                   "without --events, refused with it")
    p.add_argument("--test", type=int, default=None, help="test videos (default min(100, n/4))")
    p.add_argument("--val", type=int, default=None, help="validation videos (default n/10)")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: all cores)")
    add_version(p)
    args = p.parse_args(argv)
    if (args.out is None) != args.events:
        p.error("--out is required without --events" if args.out is None else
                f"--out does not go with --events (it writes $TVR_HOME/datasets/{events.EVENTS_DATASET}/)")
    n = args.n if args.n is not None else events.EVENTS_N if args.events else 300
    try:
        if args.events:
            events.plan_events(n, args.seed, args.test, args.val)
        else:
            split_sizes(n, args.test, args.val)
    except ValueError as exc:
        p.error(str(exc))
    settings = get_settings()  # a bad TVR_* value is refused as by every command
    start = time.time()
    if args.events:
        manifest, report = events.prepare_events(n, args.seed, settings, args.workers, args.test, args.val)
        print(f"wrote {report.summary()} in {time.time() - start:.1f} s\n  manifest: {manifest}\n"
              f"  caption windows: {windows_path(events.EVENTS_DATASET, settings)}")
        out = manifest.parent
    else:
        ann = synthetic.generate(args.out, n, args.seed, args.workers, args.test, args.val)
        print(f"wrote {n} videos and {ann} in {time.time() - start:.1f} s")
        out = Path(args.out)
    print((out / "oracle.md").read_text())
    return 0
