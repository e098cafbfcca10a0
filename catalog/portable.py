"""Lineage fit to leave the machine: no absolute local paths.

Lineage records things as the build saw them: an ingest's `source` is the absolute path of the file it
read, a recipe given by absolute path is recorded so, step infos name unreadable media by path, training
runs by their output directory. Dataset cards, exported lineage files and reports go to other people and
must not carry the build machine's directory layout (user names, temp dirs, mount points). What they carry
instead: the source's file name as the recipe wrote it (relative to the recipe; the bare file name when
no recipe named it) with its sha256, and every other absolute path cut to `…/<last component>`.

Only metadata goes through here, never dataset rows (a path inside a prompt is data, and stays)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Any

ELIDED = "…/"

# an absolute POSIX path of >= 2 components inside a longer string (a message, a step info): starts at "/"
# not preceded by a word character, ":", "/", "." or "~" (so URLs, "and/or", "1/2" and relative paths are
# left alone), and counts only when its first component is a directory of this machine (so "/api/v1" in a
# filter pattern stays, "/home/u/x.jsonl" and "/tmp/abc/recipe.yaml" go)
_EMBEDDED = re.compile(r"(?<![\w.~:/\\-])/([^\s/\"'`|<>()\[\]{},;=]+)/(?:[^\s/\"'`|<>()\[\]{},;=]+/)*"
                       r"[^\s/\"'`|<>()\[\]{},;=]*")


def _elide_embedded(m: re.Match) -> str:
    return elide(m.group(0)) if Path("/", m.group(1)).is_dir() else m.group(0)


def is_local_path(s: object) -> bool:
    """An absolute local path (POSIX, `~`-relative or a Windows drive path)."""
    return isinstance(s, str) and bool(s) and (s.startswith(("/", "~/")) or re.match(r"[A-Za-z]:[\\/]", s) is not None)


def elide(path: str) -> str:
    """`/home/u/data/x.jsonl` -> `…/x.jsonl` (a trailing slash is ignored)."""
    name = PurePosixPath(path.replace("\\", "/").rstrip("/")).name
    return ELIDED + name if name else ELIDED.rstrip("/")


def scrub(obj: Any) -> Any:
    """A copy of a JSON-like object with every absolute local path (a whole string or inside one) elided."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        if is_local_path(obj) and not any(c.isspace() for c in obj):      # the whole string is a path
            return elide(obj)
        return _EMBEDDED.sub(_elide_embedded, obj)
    if isinstance(obj, Path):
        return scrub(str(obj))
    return obj


def file_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it is not a readable file (any more)."""
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def recipe_source_name(child: dict | None) -> str | None:
    """The source path as a recipe build's config wrote it (relative to the recipe), if `child` is one."""
    if not child or child.get("builder") != "recipe":
        return None
    src = (child.get("config") or {}).get("source") if isinstance(child.get("config"), dict) else None
    path = src.get("path") if isinstance(src, dict) else None
    return path if isinstance(path, str) and not is_local_path(path) else None


def portable_lineage(lineage: dict, child: dict | None = None) -> dict:
    """`lineage` with its `source` as the recipe-relative file name plus `source_sha256`, and every other
    absolute path elided. `child`: the lineage of the version built from this one (a recipe build names
    its source relative to the recipe). The sha256 is the one recorded at ingest; when none was recorded
    and the file is still where it was read, it is computed from that file."""
    out = dict(lineage)
    src = lineage.get("source")
    if is_local_path(src):
        rel = recipe_source_name(child)
        name = PurePosixPath(src.replace("\\", "/")).name
        out["source"] = rel if rel is not None and PurePosixPath(rel).name == name else name
        sha = lineage.get("source_sha256") or file_sha256(Path(src))
        out["source_sha256"] = sha
    return scrub(out)
