"""The import rules of docs/design.md "Import rules", checked: import-linter's contracts
(``[tool.importlinter]`` in pyproject.toml) hold on the tree, and a forbidden import breaks them.

Each negative case copies the packages into a temporary folder, adds one forbidden import to one
module and runs ``lint-imports`` there: the contract that the import breaks must be reported broken,
so a contract that cannot fail would fail this test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {c["id"]: c["name"] for c in CONFIG["contracts"]}


def lint(cwd: Path) -> subprocess.CompletedProcess:
    # a wide terminal, so that no contract name is wrapped in the report
    return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_every_contract_is_kept_on_the_tree():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in result.stdout
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


def test_the_contracts_cover_every_stage():
    assert set(CONFIG["root_packages"]) == {"data", "extractors", "fusion", "retrieval", "flows"}
    assert {"layers", "prefect-only-in-flows", "retrieval-extractors-only-to-reindex", "index-read-side",
            "service-no-training", "no-cycles"} == set(CONTRACTS)
    assert {cid for _, _, broken in FORBIDDEN for cid in broken} == set(CONTRACTS)   # each one is shown to bite


# (module, the forbidden import added to it, the contracts it breaks: every other one stays kept)
FORBIDDEN = [
    ("data/store.py", "import prefect", {"prefect-only-in-flows"}),
    ("retrieval/index/reader.py", "import prefect_dask", {"prefect-only-in-flows"}),
    ("data/metrics.py", "import fusion.losses", {"layers"}),
    ("extractors/clip.py", "import fusion.layers", {"layers"}),
    ("fusion/losses.py", "import retrieval.runs", {"layers"}),
    ("retrieval/query/search.py", "import extractors.runner", {"retrieval-extractors-only-to-reindex"}),
    ("retrieval/query/search.py", "import retrieval.index.writer", {"index-read-side"}),
    ("retrieval/index/reader.py", "import retrieval.index.writer", {"index-read-side", "no-cycles"}),
    ("retrieval/service/app.py", "import fusion.train", {"service-no-training"}),
    ("fusion/losses.py", "import fusion.m2hf", {"no-cycles"}),
]


@pytest.mark.parametrize("module, line, broken", FORBIDDEN, ids=[f"{m}:{line}" for m, line, _ in FORBIDDEN])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, broken):
    for package in CONFIG["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    assert target.is_file(), f"{module} moved: update this test"
    target.write_text(target.read_text() + f"\n{line}  # forbidden, added by the test\n")
    result = lint(tmp_path)
    assert result.returncode != 0, result.stdout
    for cid, name in CONTRACTS.items():
        assert f"{name} {'BROKEN' if cid in broken else 'KEPT'}" in result.stdout, (cid, result.stdout)
