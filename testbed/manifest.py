"""The bundle manifest's schema: the one check a ``manifest.json`` passes before anything in its
bundle is copied, loaded or run.

Holds ``check_manifest``, which takes a decoded manifest as untrusted input (bundles are passed
between people) and refuses in one line naming the manifest and the key
(``bundle/manifest.json: shards[2].file: ...``): wrong types, missing keys, counts and shapes
out of bounds (a shape may not ask for more than ``MAX_VALUES`` values), a merge rule, runtime or
dtype this harness does not know, and every file name that is not a plain file name inside the
bundle (no directory part, no ``..``, not absolute, not a symlink leaving the bundle, not a
directory). Keys it does not use are informative (training records, the partition report) and
are left as they are. ``safe_member`` is the one rule for a file of a bundle. It reads only the
bundle's own folder and writes nothing.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nodes.agentconfig import MAX_PART_DIM
from nodes.merge import MERGE_RULES
from nodes.runtime import RUNTIMES
from nodes.transport_settings import shown
from testbed.errors import TestbedError

__all__ = ["BundleError", "ManifestError", "check_manifest", "bundle_file", "safe_member", "MAX_STUDENTS", "MAX_VALUES", "DTYPES"]

MAX_STUDENTS = 64          # students (and parts) of one bundle
MAX_CLASSES = 10_000
MAX_DIMS = 8
MAX_VALUES = 1 << 26       # values in one shard's input or output (a 256 MiB float32 tensor)
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64")
QUANTIZE = ("none", "int8")
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_FILE_DESC = "a plain file name inside the bundle (letters, digits, '.', '_', '-'; no directory part)"


class BundleError(TestbedError):
    """A bundle is incomplete, tampered with, or of an unknown format (input: exit 2)."""

    exit_code = 2


class ManifestError(BundleError):
    """A manifest that is not what a bundle's manifest must be."""


class _Bad(Exception):
    def __init__(self, key: str, expected: str, value: Any = ..., why: str = "") -> None:
        got = "" if value is ... else f"; got {shown(value)}"
        super().__init__(f"{key}: expected {expected}{got}" + (f" ({why})" if why else ""))


def _int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _Bad(key, f"an integer from {lo} to {hi}", value)
    return value


def _text(key: str, value: Any, *, limit: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise _Bad(key, f"a printable string of at most {limit} characters", value)
    return value


def _choice(key: str, value: Any, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise _Bad(key, "one of " + ", ".join(options), value)
    return value


def _sha256(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value):
        raise _Bad(key, "a sha256: 64 lowercase hex digits", value)
    return value


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Bad(key, "a JSON object", value)
    return value


def _list(key: str, value: Any, *, lo: int, hi: int) -> list[Any]:
    if not isinstance(value, list) or not lo <= len(value) <= hi:
        raise _Bad(key, f"a list of {lo} to {hi} items", value)
    return value


def _required(m: Mapping[str, Any], key: str, name: str, check: Callable[[str, Any], Any]) -> Any:
    full = f"{key}.{name}" if key else name
    if name not in m:
        raise _Bad(full, "a value", why="missing")
    return check(full, m[name])


def bundle_file(bundle_dir: Path, name: Any, *, key: str = "file") -> Path:
    """``safe_member`` for callers outside this module: ``ManifestError`` naming the bundle."""
    try:
        return safe_member(bundle_dir, name, key=key)
    except _Bad as exc:
        raise ManifestError(f"{bundle_dir}: {exc}") from None


def safe_member(bundle_dir: Path, name: Any, *, key: str = "file") -> Path:
    """``bundle_dir / name`` when ``name`` is a plain file name naming a regular file that stays
    inside the bundle once links are followed (``_Bad`` otherwise: ``bundle_file`` outside)."""
    if not isinstance(name, str) or not _FILE_RE.fullmatch(name) or name in (".", ".."):
        raise _Bad(key, _FILE_DESC, name)
    root = Path(bundle_dir).resolve()
    path = Path(bundle_dir) / name
    real = path.resolve()
    if real.parent != root:
        raise _Bad(key, _FILE_DESC, name, why=f"it leads out of the bundle, to {real}")
    if path.exists() and not real.is_file():
        raise _Bad(key, _FILE_DESC, name, why="not a regular file")
    return path


def _tensor(key: str, value: Any) -> None:
    m = _mapping(key, value)
    shape = _required(m, key, "shape", lambda k, v: _list(k, v, lo=1, hi=MAX_DIMS))
    for i, d in enumerate(shape):
        _int(f"{key}.shape[{i}]", d, 1, MAX_VALUES)
    if math.prod(shape) > MAX_VALUES:
        raise _Bad(f"{key}.shape", f"at most {MAX_VALUES} values", shape)
    _required(m, key, "dtype", lambda k, v: _choice(k, v, DTYPES))


def _file_entry(key: str, entry: Mapping[str, Any], bundle_dir: Path | None) -> None:
    name = _required(entry, key, "file", lambda k, v: v)
    if bundle_dir is not None:
        safe_member(bundle_dir, name, key=f"{key}.file")
    elif not isinstance(name, str) or not _FILE_RE.fullmatch(name):
        raise _Bad(f"{key}.file", _FILE_DESC, name)
    _required(entry, key, "sha256", _sha256)
    _required(entry, key, "runtime", lambda k, v: _choice(k, v, tuple(RUNTIMES.names())))
    for io in ("input", "output"):
        if io in entry:
            _tensor(f"{key}.{io}", entry[io])


def _shard(key: str, value: Any, *, students: int, bundle_dir: Path | None) -> tuple[str, int | None]:
    s = _mapping(key, value)
    _required(s, key, "name", _text)
    role = _required(s, key, "role", lambda k, v: _choice(k, v, ("student", "merge")))
    index = None
    if role == "student":
        index = _required(s, key, "index", lambda k, v: _int(k, v, 0, students - 1))
        if "part" in s:
            _int(f"{key}.part", s["part"], 0, MAX_STUDENTS - 1)
    _file_entry(key, s, bundle_dir)
    for io in ("input", "output"):
        _required(s, key, io, _tensor)
    alternates = _list(f"{key}.alternates", s.get("alternates", []), lo=0, hi=8)
    for i, alt in enumerate(alternates):
        a = _mapping(f"{key}.alternates[{i}]", alt)
        _file_entry(f"{key}.alternates[{i}]", a, bundle_dir)
        _choice(f"{key}.alternates[{i}].quantize", a.get("quantize", "none"), QUANTIZE)
    return role, index


def _top(m: Mapping[str, Any], bundle_dir: Path | None) -> None:
    students = _required(m, "", "students", lambda k, v: _int(k, v, 1, MAX_STUDENTS))
    parts = _required(m, "", "parts", lambda k, v: _int(k, v, 1, MAX_STUDENTS))
    _required(m, "", "part_dim", lambda k, v: _int(k, v, 1, MAX_PART_DIM))
    _required(m, "", "merge_rule", lambda k, v: _choice(k, v, MERGE_RULES))
    _required(m, "", "method", _text)
    _required(m, "", "dataset", _text)
    classes = _required(m, "", "classes", lambda k, v: _list(k, v, lo=1, hi=MAX_CLASSES))
    for i, c in enumerate(classes):
        _text(f"classes[{i}]", c)
    sp = m.get("student_part")
    if sp is None and m["merge_rule"] == "average":
        raise _Bad("student_part", "each student's part (merge rule average averages the students of a part)",
                   why="missing")
    if sp is not None:
        _list("student_part", sp, lo=students, hi=students)
        if len(sp) != students:
            raise _Bad("student_part", f"one part per student ({students})", sp)
        for i, p in enumerate(sp):
            _int(f"student_part[{i}]", p, 0, parts - 1)
    shards = _required(m, "", "shards", lambda k, v: _list(k, v, lo=2, hi=2 * MAX_STUDENTS + 1))
    roles = [_shard(f"shards[{i}]", s, students=students, bundle_dir=bundle_dir) for i, s in enumerate(shards)]
    merges = sum(r == "merge" for r, _ in roles)
    if merges != 1:
        raise _Bad("shards", "exactly one shard with role merge", why=f"it has {merges}")
    indexes = sorted(i for r, i in roles if r == "student")
    if indexes != list(range(students)):
        raise _Bad("shards", f"one student shard for each index 0..{students - 1}", why=f"it has {indexes}")
    if "evaluation" in m:
        _mapping("evaluation", m["evaluation"])
    if "experiment" in m:
        exp = _mapping("experiment", m["experiment"])
        if "copy" in exp and bundle_dir is not None:
            safe_member(bundle_dir, exp["copy"], key="experiment.copy")


def check_manifest(doc: Any, *, source: str | Path, bundle_dir: Path | None = None,
                   fmt: int | None = None) -> dict[str, Any]:
    """``doc`` when it is a bundle manifest of format ``fmt`` whose every file name is safe in
    ``bundle_dir`` (None: names checked without the folder); ``ManifestError`` naming the key."""
    try:
        m = _mapping("top level", doc)
        if fmt is not None and (isinstance(m.get("format"), bool) or m.get("format") != fmt):
            raise _Bad("format", f"{fmt} (this harness's bundle format)", m.get("format"))
        _top(m, bundle_dir)
    except _Bad as exc:
        raise ManifestError(f"{source}: {exc}") from None
    return dict(m)
