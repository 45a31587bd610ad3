"""Screenshot of the local Prefect UI showing a flow run's artifacts (for docs/operations.md).

    python -m flows.local up && eval "$(python -m flows.local env)"
    python -m flows.pipeline --n 24 --epochs 1
    python scripts/screenshot_prefect.py --flow pipeline --out docs/prefect-pipeline-run.png \
        --artifact-out docs/prefect-pipeline-report.png

Needs Playwright (``pip install playwright``; not a project dependency) driving an installed
Chromium (``apt-get install chromium``; ``playwright install`` is not needed). Logs in with the
auth string from ``PREFECT_API_AUTH_STRING``, opens the newest run of ``--flow`` and its
Artifacts tab.
"""
from __future__ import annotations

import argparse
import os
import sys
import urllib.parse

from playwright.sync_api import sync_playwright


def newest_run(flow: str) -> str:
    """The id of the newest run of ``flow`` (through the Prefect client, so with the auth string)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
    if not runs:
        sys.exit(f"error: no run of flow {flow!r} on {os.environ['PREFECT_API_URL']}")
    return str(runs[0].id)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flow", default="pipeline")
    p.add_argument("--out", default="docs/prefect-pipeline-run.png")
    p.add_argument("--artifact-out", default=None, help="also a screenshot of the first artifact's page")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()
    ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
    run = newest_run(args.flow)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        target = f"{ui}/runs/flow-run/{run}?" + urllib.parse.urlencode({"tab": "Artifacts"})
        page.goto(f"{ui}/login")
        page.locator("input[type=password]").fill(os.environ["PREFECT_API_AUTH_STRING"])
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "/login" not in url, timeout=30_000)
        page.goto(target)  # logged in now: no toasts from the requests made before the login
        page.wait_for_load_state("networkidle")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.wait_for_timeout(4000)
        page.screenshot(path=args.out, full_page=True)
        if args.artifact_out:  # the first artifact's own page (a markdown report renders there)
            page.locator("a[href*='/artifacts/artifact/']").first.click()
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(3000)
            page.screenshot(path=args.artifact_out)
        browser.close()
    print(f"wrote {args.out} (flow run {run})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
