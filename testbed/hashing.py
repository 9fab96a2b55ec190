"""The one way the laptop side hashes a file: ``sha256_file`` (hex digest, read in 1 MiB chunks).

Bundles, wheelhouses, deploys and output folders all check files by it. Pure standard library:
no torch, so the modules that only hash stay light.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
