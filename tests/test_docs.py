"""The README and docs/*.md against the repository: every command runs as written in a fresh shell
after ``./scripts/main.sh`` (no activated virtualenv), the Playwright they describe is the locked
one, the README's layout names every folder under ``TVR_HOME``; and the screenshot script of
docs/operations.md shoots the artifact the docs show."""
from __future__ import annotations

import base64
import importlib.util
import json
import re
import shlex
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import PROJECT

DOCS = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
SCRIPTS = set(tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"])
# installed only into .venv (the project's tvr-* commands, console scripts of requirements.lock's packages):
# not on PATH in a fresh shell, so a command must name them .venv/bin/<name>
VENV_ONLY = {"python", "python3", "prefect", "dask", "pytest", "lint-imports", "playwright", "uvicorn"} | SCRIPTS
COMMAND_WORDS = VENV_ONLY | {"bash", "sh", "eval"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _commands(text: str) -> list[str]:
    """Shell commands of a Markdown text: every line of ``bash`` blocks, the lines of untagged and
    ``text`` blocks that start with a command, and inline code spans of two or more words that do."""
    found = []
    for lang, body in FENCE.findall(text):
        if lang not in ("", "bash", "sh", "text"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#") and (lang in ("bash", "sh") or _starts_a_command(line)):
                found.append(line)
    prose = FENCE.sub("", text)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]      # a span may wrap a line
    found += [s for s in spans if len(s.split()) > 1 and _starts_a_command(s)]
    return found


def _words(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    while words and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]) or words[0] in ("time", "exec", "sudo")):
        words = words[1:]
    return words


def _starts_a_command(text: str) -> bool:
    words = _words(text)
    return bool(words) and (words[0] in COMMAND_WORDS or words[0].startswith((".venv/bin/", "./scripts/")))


def _simple_commands(command: str) -> list[str]:
    """``command`` split at ``&&``, ``||``, ``;``, ``|`` and ``&``, plus each ``$(...)`` inside it."""
    inner = re.findall(r"\$\(([^()]*)\)", command)
    outer = re.sub(r"\$\([^()]*\)", "X", command)
    return [part for piece in [outer, *inner] for part in re.split(r"&&|\|\||;|\||&", piece) if part.strip()]


def _module_exists(name: str) -> bool:
    top = name.split(".")[0]
    if (PROJECT / top).is_dir() or (PROJECT / f"{top}.py").is_file():
        path = PROJECT / name.replace(".", "/")
        return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:             # a missing parent package
        return False


def _problem(command: str) -> str | None:
    """Why ``command`` (one simple command) does not run as written in a fresh shell, else None."""
    words = _words(command)
    if not words:
        return None
    program, args = words[0], words[1:]
    if program in VENV_ONLY:
        return f"{program!r} is not on PATH unless .venv is activated: write .venv/bin/{program}"
    if program.startswith(".venv/bin/"):
        name = program.removeprefix(".venv/bin/")
        if name not in VENV_ONLY and not (PROJECT / program).exists():
            return f"{program} is not installed by scripts/bootstrap.sh"
        module = args[1] if args[:1] == ["-m"] and len(args) > 1 else None   # "<module>", "...": placeholders
        if name == "python" and module and re.fullmatch(r"\w+(\.\w+)*", module) and not _module_exists(module):
            return f"no module {module!r}"
        if name == "python" and args and args[0].endswith(".py") and not (PROJECT / args[0]).is_file():
            return f"no file {args[0]!r}"
    if program.startswith("./scripts/") and not (PROJECT / program).is_file():
        return f"no file {program!r}"
    if program in ("bash", "sh") and args and args[0].startswith("scripts/") and not (PROJECT / args[0]).is_file():
        return f"no file {args[0]!r}"
    return None


def test_the_command_finder_sees_what_a_reader_would_type():
    text = ("Run `python -m flows.pipeline --n 3` or `.venv/bin/prefect deployment run x`; `tvr-extract` is a name.\n"
            "```bash\neval \"$(python -m flows.local env)\"   # note\nTVR_HOME=/t prefect deployment run a \\\n"
            "    --watch && ./scripts/nope.sh\n```\n```text\nindex x: 3 videos\n.venv/bin/python -m no.such\n```\n")
    problems = [(c, _problem(c)) for line in _commands(text) for c in _simple_commands(line)]
    assert [" ".join(c.split()) for c, p in problems if p] == [
        "python -m flows.local env", "TVR_HOME=/t prefect deployment run a --watch", "./scripts/nope.sh",
        ".venv/bin/python -m no.such", "python -m flows.pipeline --n 3"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_command_runs_as_written_without_an_activated_venv(doc):
    problems = [f"{line!r}: {why}" for line in _commands(doc.read_text())
                for part in _simple_commands(line) if (why := _problem(part))]
    assert not problems, f"{doc.relative_to(PROJECT)}:\n" + "\n".join(problems)


def test_docs_describe_the_locked_playwright():
    """requirements.lock pins Playwright (the browser test and the screenshot script use it): no doc
    may call it "not a project dependency", install it apart, or name another version."""
    pinned = re.search(r"^playwright==(\S+)$", (PROJECT / "requirements.lock").read_text(), re.M).group(1)
    texts = {p: p.read_text() for p in [*DOCS, PROJECT / "scripts" / "screenshot_prefect.py"]}
    for path, text in texts.items():
        for sentence in re.split(r"(?<=[.;])\s", text):
            if "playwright" not in sentence.lower():
                continue
            where = f"{path.relative_to(PROJECT)}: {sentence.strip()!r}"
            assert "not a project dependency" not in sentence and "pip install playwright" not in sentence, where
            for version in re.findall(r"[Pp]laywright[ =]=?=?\s*v?(\d+\.\d+(?:\.\d+)?)", sentence):
                assert version == pinned, where
    assert "pinned in requirements.lock" in texts[PROJECT / "docs" / "operations.md"]


def test_readme_layout_names_every_folder_under_tvr_home():
    """The README's "Layout" block names each top-level folder of docs/design.md's "Data at rest" tree."""
    design = (PROJECT / "docs" / "design.md").read_text()
    tree = next(body for _, body in FENCE.findall(design) if body.startswith("$TVR_HOME/"))
    folders = re.findall(r"^  (\w+)/", tree, re.M)
    assert {"datasets", "features", "runs", "indexes", "evals", "prefect"} <= set(folders)
    readme = (PROJECT / "README.md").read_text()
    layout = FENCE.findall(readme.split("## Layout", 1)[1])[0][1]
    missing = [f for f in folders if not re.search(rf"(?<![\w.]){f}/", layout)]
    assert not missing, f"README.md's Layout block lacks {missing}"


# ---------------------------------------------------------------------------------------------
# scripts/screenshot_prefect.py: the run and the artifact come from the API, by name
# ---------------------------------------------------------------------------------------------
RUNS = [{"id": "run-old", "flow": "pipeline", "start": 1}, {"id": "run-new", "flow": "pipeline", "start": 2},
        {"id": "run-train", "flow": "train", "start": 3}]
ARTIFACTS = [  # in creation order: the report comes last in a pipeline run
    {"id": "a-progress", "key": None, "flow_run_id": "run-new", "created": 1},
    {"id": "a-table", "key": "evaluate-synthetic-r1", "flow_run_id": "run-new", "created": 2},
    {"id": "a-report-old", "key": "pipeline-synthetic", "flow_run_id": "run-old", "created": 0},
    {"id": "a-report", "key": "pipeline-synthetic", "flow_run_id": "run-new", "created": 3}]


class FakePrefect(BaseHTTPRequestHandler):
    """The three Prefect API routes the script calls, with the filters applied like the server does."""

    seen: list[dict] = []

    def _answer(self, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's name)
        assert self.path.startswith("/api/csrf-token?client=")
        self._answer({"token": "csrf-1"})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append({"path": self.path, "auth": self.headers["Authorization"],
                          "csrf": self.headers.get("Prefect-Csrf-Token")})
        if self.path == "/api/flow_runs/filter":
            runs = [r for r in RUNS if r["flow"] in body["flows"]["name"]["any_"]]
            assert body["sort"] == "START_TIME_DESC"
            self._answer(sorted(runs, key=lambda r: -r["start"])[:body["limit"]])
        else:
            assert self.path == "/api/artifacts/filter" and body["sort"] == "CREATED_DESC"
            want = body["artifacts"]
            found = [a for a in ARTIFACTS if a["key"] in want["key"]["any_"]
                     and a["flow_run_id"] in want["flow_run_id"]["any_"]]
            self._answer(sorted(found, key=lambda a: -a["created"])[:body["limit"]])

    def log_message(self, *args) -> None:
        pass


def test_screenshot_script_shoots_the_report_artifact_of_the_newest_run(monkeypatch):
    spec = importlib.util.spec_from_file_location("screenshot_prefect", PROJECT / "scripts" / "screenshot_prefect.py")
    shots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shots)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrefect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shot = {}
    try:
        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{server.server_port}/api")
        monkeypatch.setenv("PREFECT_API_AUTH_STRING", "tvr:secret")
        monkeypatch.setattr(shots, "shoot",
                            lambda ui, auth, run, artifact, chromium: shot.update(run=run, artifact=artifact))
        monkeypatch.setattr("sys.argv", ["screenshot_prefect.py", "--out", "run.png", "--artifact-out", "report.png"])
        assert shots.main() == 0
    finally:
        server.shutdown()
    ui = f"http://127.0.0.1:{server.server_port}"
    assert shot["run"] == (f"{ui}/runs/flow-run/run-new?tab=Artifacts", "run.png")
    assert shot["artifact"] == (f"{ui}/artifacts/artifact/a-report", "report.png")
    basic = "Basic " + base64.b64encode(b"tvr:secret").decode()
    assert FakePrefect.seen and all(s["auth"] == basic and s["csrf"] == "csrf-1" for s in FakePrefect.seen)
