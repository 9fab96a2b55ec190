"""The one way the laptop side hashes a file, and the one way a configuration becomes data.

``sha256_file`` (hex digest, read in 1 MiB chunks): bundles, wheelhouses, deploys and output
folders all check files by it. ``plain`` turns a configuration (frozen dataclasses, read-only
mappings, tuples, paths) into the JSON data that run.json records and that sweep keys hash. Pure
standard library: no torch, so the modules that only hash stay light.
"""
from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

__all__ = ["plain", "sha256_file"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plain(obj: Any) -> Any:
    """``obj`` as JSON data: a dataclass as a mapping of its public fields, any mapping (read-only
    ones too) with string keys, tuples as lists, paths as text, an infinite float as None (JSON has
    none), an object with ``as_dict()`` (a link profile) as that mapping."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj == float("inf"):
        return None
    if hasattr(obj, "as_dict"):
        return plain(obj.as_dict())
    if hasattr(obj, "items"):
        return {str(k): plain(v) for k, v in obj.items()}
    return obj
