"""Screenshots of the local Prefect UI for docs/operations.md: a flow run's Artifacts tab and the page
of one artifact of that run, chosen by its key (default ``pipeline-synthetic``: the pipeline's report).

    .venv/bin/python -m flows.local up && eval "$(.venv/bin/python -m flows.local env)"
    .venv/bin/python -m flows.pipeline --n 24 --epochs 1
    .venv/bin/python scripts/screenshot_prefect.py --flow pipeline --out docs/prefect-pipeline-run.png \
        --artifact-out docs/prefect-pipeline-report.png

Playwright comes with the project's environment (pinned in requirements.lock); it drives an
installed Chromium (``apt-get install chromium``; ``playwright install`` is not needed). The run and
the artifact are looked up through the Prefect REST API (``PREFECT_API_URL``, with the auth string of
``PREFECT_API_AUTH_STRING`` and a CSRF token when the server asks for one), never by position on the
page, so the artifact shot is the one named even when the run has several.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

REPORT_KEY = "pipeline-synthetic"   # flows.common.artifact_key("pipeline", "synthetic")


class PrefectApi:
    """POST and GET JSON on a Prefect server's REST API (``api``: ``http://host:port/api``)."""

    def __init__(self, api: str, auth: str | None):
        self.api = api.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if auth:
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        client = uuid.uuid4().hex
        try:
            token = self.call(f"/csrf-token?client={client}")["token"]
            self.headers.update({"Prefect-Csrf-Token": token, "Prefect-Csrf-Client": client})
        except urllib.error.HTTPError as err:
            if err.code != 422:      # 422: CSRF protection is off, no token needed
                raise

    def call(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api + path, data=data, headers=self.headers,
                                         method="GET" if body is None else "POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)


def newest_run(api: PrefectApi, flow: str) -> str:
    """The id of the newest run of the flow named ``flow``."""
    runs = api.call("/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}, "sort": "START_TIME_DESC",
                                          "limit": 1})
    if not runs:
        sys.exit(f"error: no run of flow {flow!r} on {api.api}")
    return runs[0]["id"]


def artifact_id(api: PrefectApi, run: str, key: str) -> str:
    """The id of the newest artifact with ``key`` created by flow run ``run``."""
    found = api.call("/artifacts/filter", {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [run]}},
                                           "sort": "CREATED_DESC", "limit": 1})
    if not found:
        sys.exit(f"error: flow run {run} has no artifact {key!r} on {api.api}")
    return found[0]["id"]


def shoot(ui: str, auth: str, run_page: tuple[str, str], artifact_page: tuple[str, str] | None,
          chromium: str) -> None:
    """Log in to the UI at ``ui`` with ``auth``; screenshot the run's page ``(url, png)`` on its
    Artifacts tab (the full page), then ``artifact_page`` ``(url, png)`` when given."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(f"{ui}/login")
        page.locator("input[type=password]").fill(auth)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "/login" not in url, timeout=30_000)
        page.goto(run_page[0])  # logged in now: no toasts from the requests made before the login
        page.wait_for_load_state("networkidle")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.wait_for_timeout(4000)
        page.screenshot(path=run_page[1], full_page=True)
        if artifact_page:
            page.goto(artifact_page[0])
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(3000)
            page.screenshot(path=artifact_page[1])
        browser.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flow", default="pipeline", help="flow whose newest run is shown (default pipeline)")
    p.add_argument("--out", default="docs/prefect-pipeline-run.png", help="the run's Artifacts tab")
    p.add_argument("--artifact-out", default=None, help="also the page of the run's artifact --artifact-key")
    p.add_argument("--artifact-key", default=REPORT_KEY, help=f"artifact to show (default {REPORT_KEY})")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()
    api_url, auth = os.environ["PREFECT_API_URL"], os.environ["PREFECT_API_AUTH_STRING"]
    api = PrefectApi(api_url, auth)
    ui = api_url.rstrip("/").removesuffix("/api")
    run = newest_run(api, args.flow)
    run_page = (f"{ui}/runs/flow-run/{run}?" + urllib.parse.urlencode({"tab": "Artifacts"}), args.out)
    artifact_page = None
    if args.artifact_out:
        artifact_page = (f"{ui}/artifacts/artifact/{artifact_id(api, run, args.artifact_key)}", args.artifact_out)
    shoot(ui, auth, run_page, artifact_page, args.chromium)
    print(f"wrote {args.out}" + (f" and {args.artifact_out} ({args.artifact_key})" if artifact_page else "")
          + f" (flow run {run})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
