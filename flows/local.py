"""Run the Prefect side locally: server (SQLite under the project's PREFECT_HOME), work pool,
deployments from ``prefect.yaml``, and a process worker; then stop them in the right order.

``python -m flows.local up``      start server -> create pool -> deploy --all -> start worker
``python -m flows.local down``    stop the worker first, then the server (the reverse hangs)
``python -m flows.local status``  what is running, and the environment to talk to it
``python -m flows.local env``     ``export`` lines for your shell (PREFECT_API_URL, the auth string, ...)
``python -m flows.local deploy``  deploy prefect.yaml again (after editing it); the server must be up
``python -m flows.local deploy --dataset NAME [--schedule CRON | --interval SECONDS] [--concurrency N]``
                                  extract/NAME and reindex/NAME for a prepared dataset of your own

Everything lives under ``$TVR_HOME/prefect`` (database, logs, pid files). The API and the Prefect
UI listen on 127.0.0.1:``$TVR_PREFECT_PORT`` (default 4200); ``up`` prints the UI's URL.
``--host 0.0.0.0`` (or an interface address) lets workers on other machines connect: anyone who
can reach that port and knows the auth string can run code on the workers, so only do that on a
trusted network or behind a tunnel.

The API is authenticated: ``up`` creates a random auth string once per ``TVR_HOME``
(``$TVR_HOME/prefect/auth``, mode 0600), starts the server with it
(``PREFECT_SERVER_API_AUTH_STRING``, CSRF protection on) and gives it to the worker
(``PREFECT_API_AUTH_STRING``); a request without it gets 401. The UI asks for it as its password.
Then, from another shell::

    eval "$(.venv/bin/python -m flows.local env)"
    prefect deployment run extract/synthetic --watch

A dataset that prefect.yaml does not list (e.g. prepared from a folder with ``python -m
data.prepare folder --annotations FILE --videos DIR --name mine``) gets the same two deployments
with ``deploy --dataset mine``: ``extract/mine`` (at most ``--concurrency`` runs at once, default
1, more wait) and ``reindex/mine`` (one at a time) on ``--schedule`` (a cron string in UTC,
default "0 5 * * *", daily at 05:00) or every ``--interval`` seconds. Running it again updates
both; the server keeps them across ``down`` / ``up``. An unprepared dataset, a bad name or a bad
cron string is refused with one line (exit 2) before the server is asked (flows/datasets.py).

Telemetry is off: the server, the worker and ``env`` get PREFECT_SERVER_ANALYTICS_ENABLED=false
and DO_NOT_TRACK=1 (flows/__init__.py).
"""
from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from data.cli import Exit, add_version, error, guarded
from data.names import InvalidName
from data.settings import Settings, SettingsError, get_settings
from flows import TELEMETRY_OFF
from flows.datasets import DEFAULT_CRON, DeployRefused, deployment_file

PROJECT = Path(__file__).resolve().parents[1]
POOL = "tvr-process"
AUTH_FILE = "auth"
PORT_ENV, DEFAULT_PORT = "TVR_PREFECT_PORT", 4200
# what `flows.local env` exports (the server-only settings stay in the server's own environment)
CLIENT_KEYS = ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING", *TELEMETRY_OFF, "TVR_HOME", "PYTHONPATH")


def auth_string(home: Path) -> str:
    """This ``PREFECT_HOME``'s API auth string (``tvr:<random>``), created once with mode 0600."""
    path = home / AUTH_FILE
    home.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # written whole under a private name, then linked: a reader never sees it half done
        tmp = home / f".{AUTH_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"tvr:{secrets.token_urlsafe(32)}\n")
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path}: readable by others; run `chmod 600 {path}`")
    return path.read_text().strip()


def prefect_env(settings: Settings | None = None, port: int | None = None) -> dict[str, str]:
    """Environment variables that point Prefect at this project's local, authenticated server."""
    settings = settings or get_settings()
    port = port or prefect_port()
    home = settings.root / "prefect"
    api = f"http://127.0.0.1:{port}/api"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_API_AUTH_STRING": auth_string(home),
        **TELEMETRY_OFF,
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
        "TVR_HOME": str(settings.root),
        "PYTHONPATH": str(PROJECT),
    }


def prefect_port() -> int:
    """``$TVR_PREFECT_PORT`` (default 4200); a value that is not a port number is a :class:`SettingsError`."""
    raw = os.environ.get(PORT_ENV, str(DEFAULT_PORT))
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise SettingsError(f"environment variable {PORT_ENV}={raw!r}: expected a port number, 1 to 65535")
    return port


def export_lines(env: dict[str, str]) -> list[str]:
    """``export KEY=VALUE`` lines, values shell-quoted."""
    return [f"export {key}={shlex.quote(env[key])}" for key in CLIENT_KEYS]


def _reaped(pid: int) -> bool:
    """True when ``pid`` is our own child that has exited (reaped now, so it is no zombie)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not our child: os.kill(pid, 0) alone tells
        return False


def _prefect() -> list[str]:
    return [sys.executable, "-m", "prefect"]


class LocalPrefect:
    """Start and stop a local server and worker; pid files and logs under ``PREFECT_HOME``."""

    def __init__(self, settings: Settings | None = None, port: int | None = None, host: str = "127.0.0.1"):
        self.env = {**os.environ, **prefect_env(settings, port)}
        self.home = Path(self.env["PREFECT_HOME"])
        self.api = self.env["PREFECT_API_URL"]
        self.host = host
        self.ui = self.api.removesuffix("/api")

    def _spawn_env(self, name: str) -> dict[str, str]:
        if name != "server":
            return self.env
        return {**self.env, "PREFECT_SERVER_API_AUTH_STRING": self.env["PREFECT_API_AUTH_STRING"]}

    def _pidfile(self, name: str) -> Path:
        return self.home / f"{name}.pid"

    def _spawn(self, name: str, args: list[str]) -> int:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        log = open(self.home / "logs" / f"{name}.log", "ab")
        proc = subprocess.Popen(_prefect() + args, env=self._spawn_env(name), cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self._pidfile(name).read_text())
            os.kill(pid, 0)
            if _reaped(pid):
                return None
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
        self._spawn("server", ["server", "start", "--host", self.host, "--port", port])
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.healthy():
                return
            if self.pid("server") is None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"Prefect server did not become healthy at {self.api}; "
                           f"see {self.home / 'logs' / 'server.log'}")

    def _pool(self) -> None:
        if self.run("work-pool", "inspect", POOL, check=False).returncode != 0:
            self.run("--no-prompt", "work-pool", "create", POOL, "--type", "process")

    def deploy(self) -> str:
        """Every deployment of prefect.yaml (created, or updated in place); ``prefect deploy``'s output."""
        self._pool()
        return self.run("--no-prompt", "deploy", "--all").stdout

    def deploy_file(self, document: dict) -> str:
        """The deployments of a prefect.yaml-format ``document`` (:func:`flows.datasets.deployment_file`),
        applied like prefect.yaml's (entrypoints relative to the project); ``prefect deploy``'s output."""
        self._pool()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=".deploy-", dir=self.home) as file:
            yaml.safe_dump(document, file, sort_keys=False)
            file.flush()
            return self.run("--no-prompt", "deploy", "--all", "--prefect-file", file.name).stdout

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


def _failed(err: Exception) -> int:
    """Exit 1 with one line: ``err`` and, for a ``prefect`` command that failed, its last stderr line."""
    detail = (getattr(err, "stderr", "") or "").strip()
    return error(f"{err}{(': ' + detail.splitlines()[-1]) if detail else ''}", Exit.FAILED)


def _deploy(local: LocalPrefect, document: dict | None) -> int:
    """``deploy``: prefect.yaml, or ``document`` (``--dataset``); exit 1 when no server answers."""
    if not local.healthy():
        return error(f"no Prefect server answers at {local.api}: start it with python -m flows.local up", Exit.FAILED)
    try:
        output = local.deploy_file(document) if document else local.deploy()
    except subprocess.CalledProcessError as err:
        return _failed(err)
    if not document:
        print(output)
        return Exit.OK
    extract, reindex = document["deployments"]
    name, limit, (schedule,) = extract["name"], extract["concurrency_limit"]["limit"], reindex["schedules"]
    when = f"every {schedule['interval']} s" if "interval" in schedule else f"cron {schedule['cron']!r} UTC"
    print(f"deployed extract/{name} (at most {limit} run(s) at once, more wait) and reindex/{name} (one at a time; "
          f"{when}) at {local.api}")
    print(f"run: prefect deployment run extract/{name} --watch   (after: eval \"$(python -m flows.local env)\")")
    return Exit.OK


@guarded(InvalidName, DeployRefused)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.local", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status", "env", "deploy"])
    p.add_argument("--port", type=int, default=None, help="API port (default $TVR_PREFECT_PORT or 4200)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the server listens on (default 127.0.0.1; 0.0.0.0 for remote workers: "
                        "see the security note above)")
    own = p.add_argument_group("deploy --dataset NAME (a prepared dataset that prefect.yaml does not list)")
    own.add_argument("--dataset", metavar="NAME", help="deploy extract/NAME and reindex/NAME")
    own.add_argument("--schedule", metavar="CRON", help=f"when reindex/NAME runs: a cron string in UTC "
                     f"(default {DEFAULT_CRON!r}: daily at 05:00, after prefect.yaml's nightly re-indexes)")
    own.add_argument("--interval", type=int, metavar="SECONDS", help="run reindex/NAME every SECONDS instead (>= 1)")
    own.add_argument("--concurrency", type=int, metavar="N", help="at most N runs of extract/NAME at once (default 1; "
                     "more wait); reindex/NAME always runs one at a time (a second is cancelled)")
    add_version(p)
    args = p.parse_args(argv)
    options = {"--schedule": args.schedule, "--interval": args.interval, "--concurrency": args.concurrency}
    given = [flag for flag, value in options.items() if value is not None]
    if args.dataset is not None and args.command != "deploy":
        return error(f"--dataset: only with the deploy command, not {args.command}")
    if given and args.dataset is None:
        return error(f"{', '.join(given)}: only with deploy --dataset NAME")
    document = None
    if args.dataset is not None:   # every check before the server is asked
        document = deployment_file(args.dataset, get_settings(), args.schedule, args.interval,
                                   1 if args.concurrency is None else args.concurrency)
    local = LocalPrefect(port=args.port, host=args.host)
    if args.command == "env":
        print("\n".join(export_lines(local.env)))
    elif args.command == "up":
        print(f"starting Prefect server at {local.api} (PREFECT_HOME={local.home}) ...", flush=True)
        try:
            local.up()
        except (RuntimeError, subprocess.CalledProcessError) as err:
            return _failed(err)
        print(f"server, work pool '{POOL}', deployments and worker are up; logs in {local.home / 'logs'}")
        print(f"Prefect UI: {local.ui} (password: the auth string in {local.home / AUTH_FILE})")
        if args.host != "127.0.0.1":
            print(f"listening on {args.host}: remote workers need PREFECT_API_URL=http://<this-host>:"
                  f"{local.api.rsplit(':', 1)[1]} and PREFECT_API_AUTH_STRING; keep the port off untrusted networks")
    elif args.command == "deploy":
        return _deploy(local, document)
    elif args.command == "down":
        local.down()
        print("worker and server stopped")
    else:
        print(f"server: {'healthy' if local.healthy() else 'down'} at {local.api} (pid {local.pid('server')}); "
              f"UI {local.ui}")
        print(f"worker: pid {local.pid('worker')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
