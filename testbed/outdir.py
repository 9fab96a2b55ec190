"""Output folders testbed writes into, and the one rule for what it may delete there.

Holds ``output_dir`` (a context manager: refuse or accept a destination folder before any work
is done, hand out a temporary sibling folder to write into, and move what was written into the
destination only when the work finished), ``inspect`` (what a folder holds: ours, changed, or
someone else's) and ``MARKER``, the file that says what testbed wrote in a folder.

The rule:

- a folder that does not exist or is empty is created and written;
- a folder whose marker lists everything in it (a previous run of ours) is refused unless
  ``force``; with ``force`` exactly the files the marker lists, unchanged since we wrote them
  (size and sha256), are deleted and replaced, and anything else in the folder is kept and
  reported (``Output.kept``); a listed file that was changed since is refused, never deleted;
- a folder without a marker that holds anything is refused, with or without ``force``
  (``adopt`` is for folders testbed names itself inside its own cache, e.g.
  ``<cache>/partition-<key>/bundle``, which count as ours, marker or not);
- new content is written into ``.<name>.partial-<pid>-<random>`` beside the destination and
  moved in at the end, manifests last; an exception (Ctrl-C included) leaves the destination as
  it was and removes the temporary folder. Temporary folders of a killed process are removed by
  the next write to the same destination.

It never follows a symlink out of a folder, never deletes a file the marker does not list, and
never deletes the destination folder itself when it held something we keep.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from testbed.errors import ConfigError
from testbed.hashing import sha256_file

MARKER = ".hbc-testbed-output"
MARKER_FORMAT = 1
MANIFEST_NAMES = ("manifest.json",)   # moved in last, so a half-moved folder never looks complete
MAX_MARKER_BYTES = 4 << 20

__all__ = ["MARKER", "Output", "Contents", "inspect", "output_dir"]


@dataclass
class Contents:
    """What a destination folder holds, by whose it is (paths relative to the folder, POSIX)."""

    exists: bool
    marked: bool = False
    writer: str = ""
    ours: list[str] = field(default_factory=list)          # files we wrote, unchanged
    our_dirs: list[str] = field(default_factory=list)      # folders we made
    changed: list[str] = field(default_factory=list)       # files we wrote, changed since
    foreign: list[str] = field(default_factory=list)       # entries we did not write (a folder: once)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)   # ours: size and sha256

    @property
    def empty(self) -> bool:
        return not (self.ours or self.our_dirs or self.changed or self.foreign)


@dataclass
class Output:
    """One write: ``staging`` is where to write; after the ``with`` block the content is in
    ``dest``; ``replaced`` lists our earlier files it replaced, ``kept`` what it left alone."""

    dest: Path
    staging: Path
    writer: str
    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """Lines to print about what the write kept or replaced."""
        lines = []
        if self.replaced:
            lines.append(f"replaced {len(self.replaced)} files an earlier {self.writer} wrote in {self.dest}")
        if self.kept:
            more = f" and {len(self.kept) - 5} more" if len(self.kept) > 5 else ""
            lines.append(f"kept {', '.join(self.kept[:5])}{more} in {self.dest}: testbed did not write "
                         f"{'them' if len(self.kept) > 1 else 'it'}")
        return lines


def _plain_rel(name: Any) -> str | None:
    """``name`` as a plain relative POSIX path (no ``..``, not absolute), else None."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) or str(p) != name:
        return None
    return name


def _read_marker(dest: Path) -> dict[str, Any] | None:
    """The marker of ``dest`` (checked), None when there is none, ConfigError when unreadable."""
    path = dest / MARKER
    if not os.path.lexists(path):
        return None
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MARKER_BYTES:
            raise ValueError("not a plain file of at most 4 MiB")
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict) or \
                not isinstance(doc.get("dirs", []), list):
            raise ValueError("expected an object with files and dirs")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable {MARKER} ({exc}); expected the marker testbed writes in its output "
                          f"folders; move the folder away", file=str(dest)) from None
    files = {}
    for name, meta in doc["files"].items():
        if _plain_rel(name) and isinstance(meta, dict) and isinstance(meta.get("sha256"), str) \
                and isinstance(meta.get("size"), int):
            files[name] = meta
    dirs = [d for d in doc.get("dirs", []) if _plain_rel(d)]
    return {"writer": str(doc.get("writer", "testbed")), "files": files, "dirs": dirs}


def inspect(dest: Path, *, adopt: bool = False) -> Contents:
    """Classify everything under ``dest`` (not following symlinks) against its marker."""
    dest = Path(dest)
    if not os.path.lexists(dest):
        return Contents(exists=False)
    if dest.is_symlink() or not dest.is_dir():
        raise ConfigError("exists and is not a folder (or is a link to one); expected a new or empty folder "
                          "for the output", file=str(dest))
    marker = _read_marker(dest)
    out = Contents(exists=True, marked=marker is not None, writer=(marker or {}).get("writer", ""))
    files = (marker or {}).get("files", {})
    dirs = set((marker or {}).get("dirs", ()))

    def walk(folder: Path, rel: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            name = f"{rel}{entry.name}"
            if name == MARKER:
                continue
            if entry.is_symlink() or not (entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)):
                (out.ours if adopt and marker is None else out.foreign).append(name)
            elif entry.is_dir(follow_symlinks=False):
                if name in dirs or (adopt and marker is None):
                    out.our_dirs.append(name)
                    walk(Path(entry.path), name + "/")
                else:
                    out.foreign.append(name + "/")
            elif adopt and marker is None:
                out.ours.append(name)
            elif name in files:
                meta = files[name]
                same = entry.stat(follow_symlinks=False).st_size == meta["size"] and \
                    sha256_file(Path(entry.path)) == meta["sha256"]
                (out.ours if same else out.changed).append(name)
                if same:
                    out.meta[name] = {"size": meta["size"], "sha256": meta["sha256"]}
            else:
                out.foreign.append(name)

    walk(dest, "")
    return out


def _check(dest: Path, contents: Contents, *, force: bool, writer: str, adopt: bool = False) -> None:
    """Raise ConfigError (one line) when the rule refuses writing into ``dest``."""
    if not contents.exists or contents.empty:
        return
    if not contents.marked and not adopt:
        first = (contents.foreign or contents.ours)[0]
        raise ConfigError(f"holds {first}, which testbed did not write; expected a new or empty folder "
                          f"(give another --out, or move {first} away; --force replaces only what testbed wrote)",
                          file=str(dest))
    if contents.changed:
        raise ConfigError(f"{contents.changed[0]} was changed after {contents.writer} wrote it; --force replaces "
                          f"only testbed's own files as written (move it away first)", file=str(dest))
    if not force:
        kept = f"; anything else there is kept ({contents.foreign[0]})" if contents.foreign else ""
        raise ConfigError(f"holds the output of an earlier {contents.writer or writer} ({len(contents.ours)} files); "
                          f"--force replaces what testbed wrote there{kept}", file=str(dest))


def _files(root: Path) -> tuple[list[str], list[str]]:
    """Every file (or link) and folder under ``root``, relative, the marker left out."""
    files, dirs = [], []
    for folder, subdirs, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        for d in sorted(subdirs):
            dirs.append((rel / d).as_posix())
        for n in sorted(names):
            if not (rel == Path(".") and n == MARKER):
                files.append((rel / n).as_posix())
    return sorted(files), sorted(dirs)


def _manifest_last(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (PurePosixPath(n).name in MANIFEST_NAMES, n))


def _write_marker(path: Path, *, writer: str, dirs: list[str], state: str, meta: dict[str, dict[str, Any]],
                  tmp_dir: Path) -> None:
    """Write the marker atomically (a temporary file in ``tmp_dir``, then a rename)."""
    doc = {"format": MARKER_FORMAT, "writer": writer, "state": state,
           "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "note": "written by hbc-testbed: the files it wrote here; --force replaces only these",
           "files": meta, "dirs": dirs}
    fd, tmp = tempfile.mkstemp(prefix=f"{MARKER}.", dir=tmp_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sweep(dest: Path) -> None:
    """Remove temporary folders a killed write to ``dest`` left beside it (ours: marked partial,
    their process gone)."""
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):
        try:
            pid = int(stale.name[len(f".{dest.name}.partial-"):].split("-", 1)[0])
            doc = json.loads((stale / MARKER).read_text())
            if doc.get("state") != "partial" or doc.get("pid") != pid or stale.is_symlink():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (OSError, ValueError, AttributeError):
            continue


@contextmanager
def output_dir(dest: Path, *, force: bool = False, writer: str = "testbed partition",
               adopt: bool = False) -> Iterator[Output]:
    """Write into ``dest`` by the rule (module docstring): refuse now (ConfigError, one line, exit 2)
    or yield an ``Output`` whose ``staging`` folder the caller fills; on a clean exit its content
    replaces our earlier files in ``dest``; on an exception ``dest`` is left as it was."""
    dest = Path(os.path.abspath(dest))
    _check(dest, inspect(dest, adopt=adopt), force=force, writer=writer, adopt=adopt)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _sweep(dest)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-{os.getpid()}-", dir=dest.parent))
    try:
        (staging / MARKER).write_text(json.dumps({"state": "partial", "pid": os.getpid(), "writer": writer,
                                                  "for": str(dest)}))
        out = Output(dest=dest, staging=staging, writer=writer)
        yield out
        _commit(out, force=force, adopt=adopt)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit(out: Output, *, force: bool, adopt: bool) -> None:
    dest, staging = out.dest, out.staging
    now = inspect(dest, adopt=adopt)          # again: the folder may have changed while we worked
    _check(dest, now, force=force, writer=out.writer, adopt=adopt)
    new_files, new_dirs = _files(staging)
    meta = {f: {"size": (staging / f).stat().st_size, "sha256": sha256_file(staging / f)} for f in new_files}
    if not now.exists or now.empty:
        _write_marker(staging / MARKER, writer=out.writer, dirs=new_dirs, state="complete", meta=meta,
                      tmp_dir=staging)
        if now.exists:
            (dest / MARKER).unlink(missing_ok=True)   # an empty folder of ours
            dest.rmdir()
        os.rename(staging, dest)
        return
    kept = set(now.foreign)
    for name in new_files + new_dirs:
        parts = PurePosixPath(name).parts
        clash = next((p for p in ("/".join(parts[:i]) for i in range(1, len(parts) + 1))
                      if p in kept or p + "/" in kept), None)
        if clash is not None:
            raise ConfigError(f"holds {clash}, which testbed did not write and would have to replace; move it "
                              f"away (nothing was changed)", file=str(dest))
    # From here the folder changes. The marker first lists old and new files, so an interruption
    # leaves nothing of ours unlisted; the old manifests go first and the new ones come last, so a
    # half-moved folder never loads as a complete bundle.
    old_meta = {f: now.meta.get(f) or {"size": (dest / f).stat().st_size, "sha256": sha256_file(dest / f)}
                for f in now.ours}
    _write_marker(dest / MARKER, writer=out.writer, state="replacing", dirs=sorted(set(now.our_dirs) | set(new_dirs)),
                  meta={**old_meta, **meta}, tmp_dir=staging)
    for name in sorted(now.ours, key=lambda n: (PurePosixPath(n).name not in MANIFEST_NAMES, n)):
        (dest / name).unlink()
    for name in sorted(now.our_dirs, key=lambda d: -d.count("/")):
        if name not in new_dirs:
            try:
                (dest / name).rmdir()
            except OSError:
                pass   # something we keep is inside
    for name in new_dirs:
        (dest / name).mkdir(parents=True, exist_ok=True)
    for name in _manifest_last(new_files):
        os.replace(staging / name, dest / name)
    _write_marker(dest / MARKER, writer=out.writer, dirs=new_dirs, state="complete", meta=meta, tmp_dir=staging)
    out.replaced = sorted(now.ours)
    out.kept = sorted(now.foreign)
