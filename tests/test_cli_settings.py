"""Every command line, given a bad ``TVR_*`` value, prints one line and exits 2 (never a traceback).

The commands are every ``[project.scripts]`` entry of ``pyproject.toml`` and every ``python -m``
module the README and docs/ document, so a new command cannot be left out. Each runs as a
subprocess from the repository root (as a user runs it), with TVR_HOME in a temporary folder:

- with the smallest real arguments that reach its settings read and ``TVR_SHARD_SIZE=lots`` or
  ``TVR_DEVICE=gpu``: exit 2, and stderr is exactly one line naming the variable, the value and
  what is expected;
- with ``--help`` and ``TVR_SHARD_SIZE=lots``: the help text and exit 0. Help needs no settings,
  so a broken environment never hides it (it is where a user reads what to set);
- a console script whose target is not its module's own ``main`` also runs as its installed script
  calls it (``from <target> import main; main()``), with ``TVR_SHARD_SIZE=lots`` and those arguments.

The flow modules that deployments load (``prefect.yaml`` entrypoints) must import with a bad value
too: no settings are read at import time. All subprocesses run at once, in a pool.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180

# Every documented ``python -m`` command and the smallest arguments that reach its settings read
# ({tmp}: a scratch folder). A console script runs with the arguments of the module it belongs to.
REAL_ARGS: dict[str, list[str]] = {
    "data.prepare": ["synthetic", "--n", "8"],
    "data.synthetic": ["--n", "8", "--out", "{tmp}/synthetic"],
    "fusion.train": ["--dataset", "synthetic", "--model", "meanP"],
    "fusion.ablation": ["--dataset", "synthetic", "--seeds", "0", "--only", "0"],
    "fusion.export": ["--run", "r", "--out", "{tmp}/bundle"],
    "retrieval.index": ["--dataset", "synthetic", "--run", "r"],
    "retrieval.evaluate": ["--dataset", "synthetic", "--run", "r"],
    "retrieval.search": ["a red circle", "--dataset", "synthetic", "--run", "r"],
    "retrieval.serve": ["--dataset", "synthetic", "--run", "r", "--port", "0"],
    "retrieval.reindex": ["synthetic", "--run", "r"],
    "retrieval.export": ["--dataset", "synthetic", "--run", "r", "--out", "{tmp}/embeddings.parquet"],
    "flows.extract": ["synthetic"],
    "flows.pipeline": ["--n", "8"],
    "flows.local": ["env"],
}
BAD_VALUES = {  # variable -> (bad value, words of what is expected)
    "TVR_SHARD_SIZE": ("lots", "valid integer"),
    "TVR_DEVICE": ("gpu", "cuda:N"),
}
# Every console script -> the documented module whose arguments it takes (its target may live elsewhere).
SCRIPTS = {"tvr-prepare": "data.prepare", "tvr-synthetic": "data.synthetic", "tvr-extract": "flows.extract",
           "tvr-train": "fusion.train", "tvr-ablation": "fusion.ablation", "tvr-export-model": "fusion.export",
           "tvr-index": "retrieval.index", "tvr-evaluate": "retrieval.evaluate", "tvr-search": "retrieval.search",
           "tvr-serve": "retrieval.serve", "tvr-reindex": "retrieval.reindex",
           "tvr-export-embeddings": "retrieval.export",
           "tvr-pipeline": "flows.pipeline", "tvr-local": "flows.local"}
DOCUMENTED = re.compile(r"python -m ((?:data|extractors|fusion|retrieval|flows)(?:\.\w+)+)")


def _scripts() -> dict[str, str]:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]


def _flow_modules() -> list[str]:
    deployments = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    entrypoints = {d["entrypoint"] for d in deployments["definitions"].values() if "entrypoint" in d}
    return sorted(e.split(":")[0].removesuffix(".py").replace("/", ".") for e in entrypoints)


def _cases() -> list[tuple[str, str, str]]:
    """``(command, kind, variable)``: each documented module with each bad value and with ``--help``;
    each console script whose target is not that module's own ``main``, called as its installed
    script calls it, with one bad value (its ``--help`` and arguments are the module's); and each
    flow module of a deployment that no command imports already, imported."""
    cases = [(m, "run", var) for m in REAL_ARGS for var in BAD_VALUES]
    cases += [(m, "help", "TVR_SHARD_SIZE") for m in REAL_ARGS]
    cases += [(name, "script", "TVR_SHARD_SIZE") for name, target in _scripts().items()
              if target != f"{SCRIPTS.get(name)}:main"]
    return cases + [(module, "import", "TVR_SHARD_SIZE") for module in _flow_modules() if module not in REAL_ARGS]


CASES = _cases()


def _argv(case: tuple[str, str, str], tmp: Path) -> list[str]:
    name, kind, _ = case
    if kind == "import":
        return [sys.executable, "-c", f"import {name}"]
    if kind == "script":
        module, _, function = _scripts()[name].partition(":")
        code = f"import sys; from {module} import {function}; sys.exit({function}())"
        return [sys.executable, "-c", code, *_real_args(SCRIPTS[name], tmp)]
    return [sys.executable, "-m", name, *(["--help"] if kind == "help" else _real_args(name, tmp))]


def _real_args(module: str, tmp: Path) -> list[str]:
    return [arg.replace("{tmp}", str(tmp)) for arg in REAL_ARGS[module]]


def _run(case: tuple[str, str, str], tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVR_")}
    env.update(TVR_HOME=str(tmp / "home"), PREFECT_HOME=str(tmp / "prefect"), HF_HUB_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env[case[2]] = BAD_VALUES[case[2]][0]
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(_argv(case, tmp), cwd=PROJECT, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, -1, exc.stdout or "", f"timed out after {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[tuple, subprocess.CompletedProcess]:
    """The selected cases' subprocesses, run all at once (each one mostly waits for imports)."""
    wanted = [item.callspec.params["case"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_bad_setting" and hasattr(item, "callspec")]
    base = tmp_path_factory.mktemp("cli")
    with ThreadPoolExecutor(max_workers=max(4, min(12, 2 * (os.cpu_count() or 1)))) as pool:
        futures = {case: pool.submit(_run, case, base / f"case{k}") for k, case in enumerate(wanted)}
        return {case: future.result() for case, future in futures.items()}


def test_every_command_is_covered():
    """Each console script maps to a documented module, and each documented module is tested."""
    assert set(_scripts()) == set(SCRIPTS), "a console script was added or removed: map it in SCRIPTS"
    assert set(SCRIPTS.values()) <= set(REAL_ARGS)
    docs = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
    documented = {m for doc in docs for m in DOCUMENTED.findall(doc.read_text())}
    assert documented <= set(REAL_ARGS), f"documented commands without a case here: {documented - set(REAL_ARGS)}"


@pytest.mark.slow   # about 50 subprocesses, each importing torch: a minute or more on 2 cores
@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_bad_setting(case, outcomes):
    name, kind, var = case
    value, expected = BAD_VALUES[var]
    done = outcomes[case]
    shown = f"{name} {kind}: exit {done.returncode}\nstderr:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, shown
    if kind == "import":
        assert done.returncode == 0 and not done.stderr.strip(), shown
    elif kind == "help":
        assert done.returncode == 0 and "usage:" in done.stdout and not done.stderr.strip(), shown
    else:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, shown
        assert var in lines[0] and value in lines[0] and expected in lines[0], shown
