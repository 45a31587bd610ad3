"""Shared command-line bits: ``--version`` for every entry point (``tvr-*`` console scripts and
``python -m ...``)."""
from __future__ import annotations

import argparse
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def version() -> str:
    """The installed ``tvr`` version, else the one in the source tree's ``pyproject.toml``."""
    try:
        return metadata.version("tvr")
    except metadata.PackageNotFoundError:
        return tomllib.loads(PYPROJECT.read_text())["project"]["version"] + " (source tree, not installed)"


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser
