"""Run the Prefect side locally: server (SQLite under the project's PREFECT_HOME), work pool,
deployments from ``prefect.yaml``, and a process worker; then stop them in the right order.

``python -m flows.local up``      start server -> create pool -> deploy --all -> start worker
``python -m flows.local down``    stop the worker first, then the server (the reverse hangs)
``python -m flows.local status``  what is running, and the environment to talk to it
``python -m flows.local env``     ``export`` lines for your shell (PREFECT_API_URL, PREFECT_HOME)

Everything lives under ``$TVR_HOME/prefect`` (database, logs, pid files). The API listens on
127.0.0.1:``$TVR_PREFECT_PORT`` (default 4200). Then, from another shell::

    eval "$(.venv/bin/python -m flows.local env)"
    prefect deployment run extract/synthetic --watch
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from data.settings import Settings, get_settings

PROJECT = Path(__file__).resolve().parents[1]
POOL = "tvr-process"


def prefect_env(settings: Settings | None = None, port: int | None = None) -> dict[str, str]:
    """Environment variables that point Prefect at this project's local server."""
    settings = settings or get_settings()
    port = port or int(os.environ.get("TVR_PREFECT_PORT", "4200"))
    return {
        "PREFECT_HOME": str(settings.root / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "TVR_HOME": str(settings.root),
        "PYTHONPATH": str(PROJECT),
    }


def _prefect() -> list[str]:
    return [sys.executable, "-m", "prefect"]


class LocalPrefect:
    """Start and stop a local server and worker; pid files and logs under ``PREFECT_HOME``."""

    def __init__(self, settings: Settings | None = None, port: int | None = None):
        self.env = {**os.environ, **prefect_env(settings, port)}
        self.home = Path(self.env["PREFECT_HOME"])
        self.api = self.env["PREFECT_API_URL"]

    def _pidfile(self, name: str) -> Path:
        return self.home / f"{name}.pid"

    def _spawn(self, name: str, args: list[str]) -> int:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        log = open(self.home / "logs" / f"{name}.log", "ab")
        proc = subprocess.Popen(_prefect() + args, env=self.env, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self._pidfile(name).read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.api + "/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def run(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """``prefect <args>`` against this server (output captured)."""
        return subprocess.run(_prefect() + list(args), env=self.env, cwd=PROJECT, check=check,
                              capture_output=True, text=True, timeout=timeout)

    def start_server(self, timeout_s: float = 90) -> None:
        if self.healthy():
            return
        port = self.api.rsplit(":", 1)[1].split("/")[0]
        self._spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", port])
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.healthy():
                return
            if self.pid("server") is None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"Prefect server did not become healthy at {self.api}; "
                           f"see {self.home / 'logs' / 'server.log'}")

    def deploy(self) -> str:
        if self.run("work-pool", "inspect", POOL, check=False).returncode != 0:
            self.run("--no-prompt", "work-pool", "create", POOL, "--type", "process")
        return self.run("--no-prompt", "deploy", "--all").stdout

    def start_worker(self) -> None:
        if self.pid("worker") is None:
            self._spawn("worker", ["worker", "start", "--pool", POOL, "--prefetch-seconds", "5"])

    def stop(self, name: str, grace_s: float = 15) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        os.killpg(pid, signal.SIGINT)
        deadline = time.time() + grace_s
        while time.time() < deadline and self.pid(name) is not None:
            time.sleep(0.2)
        if self.pid(name) is not None:
            os.killpg(pid, signal.SIGKILL)
        self._pidfile(name).unlink(missing_ok=True)
        return True

    def up(self) -> None:
        self.start_server()
        self.deploy()
        self.start_worker()

    def down(self) -> None:
        self.stop("worker")  # workers before the server, or they hang retrying
        self.stop("server")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.local", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status", "env", "deploy"])
    p.add_argument("--port", type=int, default=None, help="API port (default $TVR_PREFECT_PORT or 4200)")
    args = p.parse_args(argv)
    local = LocalPrefect(port=args.port)
    if args.command == "env":
        for key in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", "TVR_HOME", "PYTHONPATH"):
            print(f"export {key}={local.env[key]}")
    elif args.command == "up":
        print(f"starting Prefect server at {local.api} (PREFECT_HOME={local.home}) ...", flush=True)
        local.up()
        print(f"server, work pool '{POOL}', deployments and worker are up; logs in {local.home / 'logs'}")
    elif args.command == "deploy":
        print(local.deploy())
    elif args.command == "down":
        local.down()
        print("worker and server stopped")
    else:
        print(f"server: {'healthy' if local.healthy() else 'down'} at {local.api} (pid {local.pid('server')})")
        print(f"worker: pid {local.pid('worker')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
