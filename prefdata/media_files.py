"""Content-addressed media files: the one place that writes `media/<sha256>.<ext>` under a media root.

Ingest (Pick-a-Pic image bytes) and the builders' media store both use it, so a URI written by either
resolves the same way."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

MEDIA_DIR = "media"


def put_media_bytes(root: Path, data: bytes, ext: str) -> str:
    """Store `data` under its sha256 below `root`; returns the relative URI. Atomic (temp file + rename),
    so a concurrent reader or writer of the same content never sees half a file."""
    ext = (ext if ext.startswith(".") else "." + ext).lower()
    uri = f"{MEDIA_DIR}/{hashlib.sha256(data).hexdigest()}{ext}"
    dest = Path(root) / uri
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    return uri
