"""The wheels a board group needs, built on the laptop and cached by content hash.

Holds ``requirements_for`` (what a board's environment gets, read from this project's own
metadata: ``dependencies`` plus the runtime's extra; none of the vendor's torch for
``venv-system``, nothing for ``python``), ``project_wheel`` (this project's wheel, built from
a snapshot of the source tree and cached by a hash of its sources), ``build_wheelhouse`` (every
wheel a board group needs, fetched with ``pip download --only-binary=:all:`` for the board's
Python, ABI and platform tags; what the board's dependency markers need and pip, which
evaluates markers for this machine's Python, left out is fetched in a second round; a
dependency that ships no wheel at all is built here only when it turns out pure Python; cached
by a hash of what went in, built in a temporary folder and renamed into place, with a
``wheelhouse.json`` manifest) and the pure helpers deploy uses:
``missing`` (which wheels a board lacks), ``download_argv``, ``install_argv``, ``venv_argv`` and
``system_pins_argv`` (env ``venv-system``: the packages the vendor's builds are compiled against,
numpy, stay the system's: pinned as pip constraints, refused when too old, never shadowed).

It must not reach a board or install anything here: it only fetches and builds wheel files
into the cache, with this machine's pip (``sys.executable -m pip``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError
from testbed.hashing import sha256_file
from testbed.remote.boardpython import ENVS, BoardPython, wheel_tags

__all__ = ["WheelhouseError", "Wheelhouse", "RUNTIMES", "PROJECT", "requirements_for", "project_wheel",
           "build_wheelhouse", "missing", "download_argv", "install_argv", "venv_argv", "system_pins_argv",
           "KEPT_FROM_SYSTEM", "MANIFEST"]

PROJECT = "hbc-testbed"
RUNTIMES = ("tflite", "torch")          # a runtime's extra has the runtime's name
SOURCE_PACKAGES = ("testbed", "nodes", "linkemu")
MANIFEST = "wheelhouse.json"
FORMAT = 1
PIP_TIMEOUT_S = 1800.0                  # torch for a Jetson is ~1 GB
MAX_SOURCE_BUILDS = 10
# env venv-system: what the vendor's builds (NVIDIA's torch on a Jetson) are compiled against; the
# venv keeps the system's copy, for pip would shadow numpy 1.x with the wheelhouse's numpy 2
KEPT_FROM_SYSTEM = ("numpy",)


class WheelhouseError(TestbedError):
    """A wheelhouse or this project's wheel cannot be built; one line naming the package and board."""


@dataclass(frozen=True)
class Wheelhouse:
    """A complete wheelhouse in the cache: ``files`` (wheel file name -> sha256) lie in ``path``.

    ``cached``: it was already complete, nothing was fetched or built; ``from_source``: the
    dependencies built here because they ship no wheel (pure Python only); ``project_wheel``:
    the file name of this project's wheel when it is included."""

    path: Path
    key: str
    files: dict[str, str]
    group: str
    requirements: tuple[str, ...]
    cached: bool
    from_source: tuple[str, ...] = ()
    project_wheel: str | None = None

    @property
    def size(self) -> int:
        return sum((self.path / name).stat().st_size for name in self.files)


# -- what a board needs ------------------------------------------------------------------------

def requirements_for(*, runtime: str, env: str) -> list[str]:
    """The requirements a board's wheelhouse holds, from this project's metadata (the source
    tree's pyproject.toml when there is one, else the installed distribution's):

    - ``venv``: ``dependencies`` + the runtime's extra (``tflite``: ai-edge-litert; ``torch``: torch);
    - ``venv-system``: the same without torch: the vendor's torch (NVIDIA's on a Jetson) comes
      through the system site-packages and is never replaced;
    - ``python``: none: only this project's wheel is installed, its dependencies must already
      import with the board's interpreter (doctor checks the runtime's).
    """
    if runtime not in RUNTIMES:
        raise WheelhouseError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if env not in ENVS:
        raise WheelhouseError(f"unknown board env {env!r}; expected one of {', '.join(ENVS)}")
    if env == "python":
        return []
    base, extras = _project_metadata()
    if runtime not in extras:
        raise WheelhouseError(f"{PROJECT}'s metadata has no {runtime!r} extra; expected the runtime's "
                              f"dependencies there (pyproject.toml [project.optional-dependencies])")
    out: list[str] = []
    for req in [*base, *extras[runtime]]:
        if env == "venv-system" and _name_of(req) == "torch":
            continue
        if req not in out:
            out.append(req)
    return out


def _project_metadata() -> tuple[list[str], dict[str, list[str]]]:
    """(dependencies, extras) of this project: pyproject.toml of the source tree, else the
    installed distribution's metadata (an editable install's may be stale: the tree wins)."""
    root = _source_root()
    if root is not None:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                tomllib = None  # type: ignore[assignment]
        if tomllib is not None:
            try:
                project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
            except (OSError, ValueError, KeyError) as exc:
                raise WheelhouseError(f"{root / 'pyproject.toml'}: unreadable ({exc}); expected a [project] "
                                      f"table") from None
            extras = {_normalize(k): list(v) for k, v in project.get("optional-dependencies", {}).items()}
            return list(project.get("dependencies", [])), extras
    from importlib import metadata
    try:
        requires = metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError:
        raise WheelhouseError(f"{PROJECT} is neither a source tree nor installed; expected `pip install -e "
                              f"<checkout>`") from None
    base: list[str] = []
    extras: dict[str, list[str]] = {}
    for line in requires:
        req, _, marker = line.partition(";")
        m = re.fullmatch(r"\s*(?:(.*?)\s+and\s+)?extra\s*==\s*['\"]([^'\"]+)['\"]\s*", marker)
        if not marker.strip():
            base.append(req.strip())
        elif m:
            rest = m.group(1)
            rest = rest[1:-1] if rest and rest.startswith("(") and rest.endswith(")") else rest
            extras.setdefault(_normalize(m.group(2)), []).append(req.strip() + (f"; {rest}" if rest else ""))
        elif "extra" not in marker:
            base.append(line.strip())
    return base, extras


# -- this project's wheel ----------------------------------------------------------------------

def _source_root() -> Path | None:
    """The source tree this package runs from (the parent of ``testbed``), or None when it is
    an installed (non-editable) package without its pyproject.toml."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or not all((root / p / "__init__.py").is_file() for p in SOURCE_PACKAGES):
        return None
    if not re.search(r'(?m)^name\s*=\s*["\']hbc[-_.]testbed["\']', pyproject.read_text()):
        return None
    return root


def _snapshot_files(root: Path) -> list[str]:
    """The files of the source tree that go into the wheel (relative, sorted): pyproject.toml,
    the readme and licence it may name, and every file of the three packages but caches."""
    files = [n for n in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in") if (root / n).is_file()]
    files += sorted(p.name for p in root.iterdir() if p.is_file() and p.name.upper().startswith(("README", "LICEN")))
    for pkg in SOURCE_PACKAGES:
        for path in sorted((root / pkg).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc", ".pyo") \
                    and not any(part.endswith(".egg-info") for part in rel.parts):
                files.append(rel.as_posix())
    return files


def _sources_hash(root: Path, files: Sequence[str]) -> str:
    """sha256 over the names and contents of the package files and pyproject.toml (the readme
    is left out: it is only the wheel's long description)."""
    h = hashlib.sha256(b"hbc-testbed sources 1\0")
    for rel in files:
        if rel == "pyproject.toml" or rel.split("/", 1)[0] in SOURCE_PACKAGES:
            h.update(rel.encode() + b"\0" + sha256_file(root / rel).encode() + b"\n")
    return h.hexdigest()


def project_wheel(*, cache_dir: Path) -> Path:
    """This project's wheel (``pip wheel --no-deps --no-build-isolation``), built from a
    snapshot of the source tree into ``cache_dir/project/<hash>/``; an unchanged tree (same
    package files and pyproject.toml) reuses the cached wheel without running pip."""
    root = _source_root()
    if root is None:
        raise WheelhouseError(f"{PROJECT} runs from an installed package ({Path(__file__).resolve().parents[2]}), "
                              f"not from a source tree, so its wheel cannot be built here; expected a "
                              f"checkout installed with `pip install -e <checkout>`")
    base = Path(cache_dir) / "project"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=base) as tmp:
        # a snapshot: what is hashed is what is built, and the tree gets no build/ or egg-info
        snap = Path(tmp, "src")
        files = _snapshot_files(root)
        for rel in files:
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, snap / rel)
        digest = _sources_hash(snap, files)[:20]
        final = base / digest
        cached = _single_wheel(final)
        if cached is not None:
            return cached
        out = Path(tmp, "out")
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--disable-pip-version-check", "--no-input", "-q", "-w", str(out), str(snap)]
        done = _run(argv, what=f"building {PROJECT}'s wheel")
        if done.returncode != 0:
            hint = ""
            if "setuptools" in (done.stderr + done.stdout) or "BackendUnavailable" in done.stderr:
                hint = " (--no-build-isolation needs setuptools>=68 and wheel here: pip install 'setuptools>=68' wheel)"
            raise WheelhouseError(f"building {PROJECT}'s wheel from {root} failed: {_last_pip_line(done)}{hint}")
        wheel = _single_wheel(out)
        if wheel is None or not _is_pure(wheel.name):
            raise WheelhouseError(f"building {PROJECT}'s wheel from {root} gave "
                                  f"{sorted(p.name for p in out.iterdir())}; expected one py3-none-any wheel")
        _publish(out, final, complete=_single_wheel)
        found = _single_wheel(final)
        if found is None:
            raise WheelhouseError(f"{final}: expected one wheel after building it")
        return found


def _single_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    return wheels[0] if len(wheels) == 1 else None


# -- the wheelhouse ----------------------------------------------------------------------------

def download_argv(*, board: BoardPython, requirements: Sequence[str], dest: str,
                  pip_args: Sequence[str] = (), python: str = sys.executable) -> list[str]:
    """``pip download`` of the wheels ``board`` accepts: its Python version, implementation,
    ABIs and every platform tag, binary wheels only."""
    _check_requirements(requirements)
    argv = [python, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
            "--progress-bar", "off", "--python-version", board.minor, "--implementation", "cp"]
    for abi in board.abis:
        argv += ["--abi", abi]
    for plat in board.platforms:
        argv += ["--platform", plat]
    return [*argv, "-d", dest, *pip_args, *requirements]


def build_wheelhouse(*, board: BoardPython, requirements: Sequence[str], cache_dir: Path,
                     pip_args: Sequence[str] = (), include_project: bool = True) -> Wheelhouse:
    """Every wheel ``board``'s group needs for ``requirements`` (and this project's wheel,
    unless ``include_project`` is false), in ``cache_dir/wheelhouse/<key>/``.

    The key hashes the requirements, the board group's Python, ABIs and platform tags, the pip
    arguments and this project's wheel. A complete cached wheelhouse is returned without
    running pip (``cached=True``). The dependency wheels have their own cache
    (``cache_dir/wheels/<key>``), so a change to this project's sources does not fetch them
    again. A requirement with no wheel for the board is built here when it is pure Python
    (a py3-none-any wheel), else ``WheelhouseError`` names it and the board's Python/platform.
    ``pip_args`` (index options: ``--index-url``, ``--extra-index-url``, ``--find-links``,
    ``--pre``) go to every pip call; pip's own configuration applies as well.
    """
    if board.implementation != "cpython":
        raise WheelhouseError(f"no wheelhouse for {board.describe()}: only CPython boards are supported")
    if not any(p.startswith("manylinux") for p in board.platforms):
        raise WheelhouseError(f"no wheelhouse for {board.describe()}: it accepts no manylinux wheels "
                              f"({'; '.join(board.check()) or 'see doctor'})")
    reqs = tuple(dict.fromkeys(requirements))
    _check_requirements(reqs)
    cache_dir = Path(cache_dir)
    pip_args = tuple(pip_args)
    deps_key = _deps_key(board=board, requirements=reqs, pip_args=pip_args)
    if not include_project:
        return _dependencies(board=board, requirements=reqs, cache_dir=cache_dir, pip_args=pip_args, key=deps_key)
    own = project_wheel(cache_dir=cache_dir)
    own_sha = sha256_file(own)
    key = _digest({"format": FORMAT, "dependencies": deps_key, "project": [own.name, own_sha]})
    final = cache_dir / "wheelhouse" / key
    manifest = _load_complete(final)
    if manifest is not None:
        return _wheelhouse(final, manifest, cached=True)
    deps = _dependencies(board=board, requirements=reqs, cache_dir=cache_dir, pip_args=pip_args, key=deps_key)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{key}-", dir=final.parent) as tmp:
        stage = Path(tmp, "house")
        stage.mkdir()
        for name in deps.files:
            _link_or_copy(deps.path / name, stage / name)
        _link_or_copy(own, stage / own.name)
        files = {**deps.files, own.name: own_sha}
        _write_manifest(stage, key=key, board=board, requirements=reqs, pip_args=pip_args, files=files,
                        from_source=deps.from_source, project_wheel=own.name, dependencies=deps.key)
        _publish(stage, final)
    manifest = _load_complete(final)
    if manifest is None:
        raise WheelhouseError(f"{final}: incomplete right after it was built; expected every wheel of {MANIFEST}")
    return _wheelhouse(final, manifest, cached=False)


def _deps_key(*, board: BoardPython, requirements: tuple[str, ...], pip_args: tuple[str, ...]) -> str:
    return _digest({"format": FORMAT, "requirements": sorted(requirements), "python": board.minor,
                    "implementation": board.implementation, "abis": list(board.abis),
                    "platforms": list(board.platforms), "pip_args": list(pip_args)})


def _dependencies(*, board: BoardPython, requirements: tuple[str, ...], cache_dir: Path,
                  pip_args: tuple[str, ...], key: str) -> Wheelhouse:
    """The dependency wheels alone, cached in ``cache_dir/wheels/<key>``."""
    final = cache_dir / "wheels" / key
    manifest = _load_complete(final)
    if manifest is not None:
        return _wheelhouse(final, manifest, cached=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{key}-", dir=final.parent) as tmp:
        stage, local = Path(tmp, "wheels"), Path(tmp, "local")
        stage.mkdir()
        local.mkdir()
        built: list[str] = []
        wanted = list(requirements)
        rounds = 0
        while wanted:
            shutil.rmtree(stage)
            stage.mkdir()
            extra = ("--find-links", str(local)) if built else ()
            argv = download_argv(board=board, requirements=wanted, dest=str(stage), pip_args=(*pip_args, *extra))
            done = _run(argv, what=f"pip download for {board.describe()}")
            if done.returncode != 0:
                spec = _unsatisfied(done)
                if spec is None:
                    raise WheelhouseError(f"pip download for {board.describe()} failed: {_last_pip_line(done)}")
                name = _name_of(spec)
                if name in built or len(built) >= MAX_SOURCE_BUILDS:
                    raise WheelhouseError(f"no wheel of {name} for {board.describe()}: pip still finds none after "
                                          f"building it from source here: {_last_pip_line(done)}")
                _build_pure(spec, board=board, into=local, pip_args=pip_args, failure=done)
                built.append(name)
                continue
            # pip evaluates dependency markers against this machine's Python, not the board's:
            # add what the board's markers need and pip left out (e.g. `x; python_version < "3.11"`)
            unmet = _unmet_on_board(stage, board=board, wanted=wanted)
            if not unmet:
                break
            rounds += 1
            if rounds > 5:
                raise WheelhouseError(f"pip download for {board.describe()} keeps missing {', '.join(unmet)}, "
                                      f"which the board's markers need")
            wanted += unmet
        files = {p.name: sha256_file(p) for p in sorted(stage.glob("*.whl"))}
        foreign = [n for n in files if not board.accepts(n)]
        if foreign:
            raise WheelhouseError(f"pip download for {board.describe()} fetched wheels the board cannot install: "
                                  f"{', '.join(foreign)}")
        for leftover in stage.iterdir():
            if leftover.suffix != ".whl":
                leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
        _write_manifest(stage, key=key, board=board, requirements=requirements, pip_args=pip_args,
                        files=files, from_source=tuple(built), project_wheel=None, dependencies=None)
        _publish(stage, final)
    manifest = _load_complete(final)
    if manifest is None:
        raise WheelhouseError(f"{final}: incomplete right after it was built; expected every wheel of {MANIFEST}")
    return _wheelhouse(final, manifest, cached=False)


def _build_pure(spec: str, *, board: BoardPython, into: Path, pip_args: Sequence[str],
                failure: subprocess.CompletedProcess[str]) -> None:
    """``spec`` has no wheel for ``board``: build it here from its source release when it has
    no wheel at all and turns out pure Python (py3-none-any), else ``WheelhouseError``."""
    name = _name_of(spec)
    no_wheel = f"no wheel of {name} for {board.describe()}"
    with tempfile.TemporaryDirectory(prefix=".sdist-", dir=into.parent) as tmp:
        # a compiled package shows itself by a wheel for this machine: ask pip which wheel it would
        # take here (metadata only where the index serves it), before building anything
        report = Path(tmp, "report.json")
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--only-binary=:all:",
                "--ignore-installed", "--disable-pip-version-check", "--no-input", "--report", str(report),
                *pip_args, spec]
        done = _run(argv, what=f"looking up {name}'s wheels")
        if done.returncode == 0:
            here = [str(item.get("download_info", {}).get("url", "")).rsplit("/", 1)[-1]
                    for item in _report_items(report)]
            compiled = [f for f in here if f.endswith(".whl") and not _is_pure(f)]
            if compiled:
                hint = ("; 32-bit ARM: PyPI has few armv7l wheels, piwheels has more (pip_args: "
                        "--extra-index-url https://www.piwheels.org/simple)") if "armv7l" in board.archs else ""
                raise WheelhouseError(f"{no_wheel}; it is a compiled package with wheels for other platforms "
                                      f"only (here: {compiled[0]}){hint}")
            raise WheelhouseError(f"{no_wheel}: {_last_pip_line(failure)}")
        if _unsatisfied(done) is None:
            raise WheelhouseError(f"{no_wheel} ({_last_pip_line(failure)}); looking it up here failed: "
                                  f"{_last_pip_line(done)}")
        out = Path(tmp, "out")
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", name, "--disable-pip-version-check",
                "--no-input", "-q", "-w", str(out), *pip_args, spec]
        done = _run(argv, what=f"building {name} from source")
        wheels = sorted(out.glob("*.whl")) if out.is_dir() else []
        if done.returncode != 0 or len(wheels) != 1:
            why = _last_pip_line(done) if done.returncode != 0 else "no single wheel came out"
            if _unsatisfied(done) is not None:
                why = "it has no source release either"
            raise WheelhouseError(f"{no_wheel} ({_last_pip_line(failure)}); building it from source here "
                                  f"failed: {why}")
        wheel = wheels[0]
        if not _is_pure(wheel.name):
            tag = wheel.name[:-4].split("-", 2)[-1]
            raise WheelhouseError(f"{no_wheel}; its source release builds a compiled wheel ({tag}), not a "
                                  f"pure-Python one the board could use")
        shutil.move(str(wheel), into / wheel.name)


def _requires_dist(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    import zipfile
    try:
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            text = zf.read(name).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile, StopIteration) as exc:
        raise WheelhouseError(f"{wheel.name}: unreadable wheel ({exc or 'no METADATA'})") from None
    headers = text.split("\n\n", 1)[0]
    return [ln.split(":", 1)[1].strip() for ln in headers.splitlines() if ln.lower().startswith("requires-dist:")]


def _marker_true(marker: str, env: Mapping[str, str]) -> bool:
    try:
        from packaging.markers import InvalidMarker, Marker
    except ImportError:  # pip always carries it
        from pip._vendor.packaging.markers import InvalidMarker, Marker  # type: ignore[no-redef]
    try:
        return bool(Marker(marker).evaluate(dict(env)))
    except (InvalidMarker, ValueError, TypeError):
        return True   # unreadable: fetch it rather than leave the board short


def _unmet_on_board(stage: Path, *, board: BoardPython, wanted: Sequence[str]) -> list[str]:
    """Requirements of the wheels in ``stage`` whose markers hold on the board but which no
    wheel in ``stage`` provides (what pip's host-side marker evaluation dropped)."""
    requires = {_normalize(w.name.split("-")[0]): _requires_dist(w) for w in sorted(stage.glob("*.whl"))}
    env = board.marker_environment()
    extras: dict[str, set[str]] = {}
    for req in wanted:
        extras.setdefault(_name_of(req), set()).update(_extras_of(req))
    applies: list[str] = []
    seen: set[tuple[str, str]] = set()
    changed = True
    while changed:   # extras requested by one wheel turn on requirements of another
        changed = False
        for dist, lines in requires.items():
            for line in lines:
                if (dist, line) in seen:
                    continue
                req, _, marker = line.partition(";")
                if marker.strip() and not any(_marker_true(marker, {**env, "extra": e})
                                              for e in ("", *sorted(extras.get(dist, ())))):
                    continue
                seen.add((dist, line))
                changed = True
                applies.append(req.strip())
                extras.setdefault(_name_of(req), set()).update(_extras_of(req))
    out: list[str] = []
    for req in applies:
        if _name_of(req) not in requires and req not in out:
            out.append(req)
    return out


def _extras_of(requirement: str) -> set[str]:
    m = re.match(r"\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*\[([^\]]*)\]", requirement)
    return {_normalize(e.strip()) for e in m.group(1).split(",") if e.strip()} if m else set()


def _report_items(report: Path) -> list[dict[str, Any]]:
    try:
        items = json.loads(report.read_text()).get("install", [])
        return [i for i in items if isinstance(i, dict)]
    except (OSError, ValueError, AttributeError):
        return []


_UNSATISFIED = re.compile(r"No matching distribution found for\s+(\S[^\n]*?)\s*$", re.M)


def _unsatisfied(done: subprocess.CompletedProcess[str]) -> str | None:
    """The requirement pip found no acceptable distribution of ("cobs>=1.2"); None for another failure."""
    found = _UNSATISFIED.findall(done.stderr + "\n" + done.stdout)
    return found[-1] if found else None


def _last_pip_line(done: subprocess.CompletedProcess[str]) -> str:
    """The last useful line pip printed: its last ``ERROR:`` line (but the bare 'No matching
    distribution' that follows the informative 'Could not find a version'), else the last line."""
    lines = [ln.strip() for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.strip()]
    errors = [ln[len("ERROR:"):].strip() for ln in lines if ln.startswith("ERROR:")]
    useful = [e for e in errors if not e.startswith("No matching distribution")] or errors
    text = useful[-1] if useful else (lines[-1] if lines else f"exit status {done.returncode}")
    return text if len(text) <= 300 else text[:297] + "..."


# -- manifest and cache ------------------------------------------------------------------------

def _write_manifest(folder: Path, *, key: str, board: BoardPython, requirements: Sequence[str],
                    pip_args: Sequence[str], files: Mapping[str, str], from_source: Sequence[str],
                    project_wheel: str | None, dependencies: str | None) -> None:
    doc: dict[str, Any] = {
        "format": FORMAT, "key": key, "group": board.group_key, "python": board.minor, "abis": list(board.abis),
        "platforms": list(board.platforms), "requirements": list(requirements), "pip_args": list(pip_args),
        "from_source": list(from_source), "project_wheel": project_wheel, "dependencies": dependencies,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {n: {"sha256": files[n], "size": (folder / n).stat().st_size} for n in sorted(files)},
    }
    (folder / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n")


def _load_complete(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete wheelhouse (every listed wheel there, of its size), else None."""
    try:
        doc = json.loads((folder / MANIFEST).read_text())
        if doc.get("format") != FORMAT or not isinstance(doc.get("files"), dict):
            return None
        for name, entry in doc["files"].items():
            if "/" in name or (folder / name).stat().st_size != entry["size"]:
                return None
        return doc
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _wheelhouse(folder: Path, doc: Mapping[str, Any], *, cached: bool) -> Wheelhouse:
    return Wheelhouse(path=folder, key=str(doc["key"]), files={n: e["sha256"] for n, e in doc["files"].items()},
                      group=str(doc["group"]), requirements=tuple(doc["requirements"]), cached=cached,
                      from_source=tuple(doc.get("from_source") or ()), project_wheel=doc.get("project_wheel"))


def _publish(stage: Path, final: Path, *, complete: Callable[[Path], object] | None = None) -> None:
    """Rename ``stage`` to ``final`` in one step; a complete ``final`` made meanwhile by another
    process wins, an incomplete one (by ``complete``, default: its manifest) is moved aside first."""
    complete = complete or _load_complete
    if final.exists() and not complete(final):
        aside = final.with_name(f".stale-{final.name}-{secrets.token_hex(3)}")
        try:
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        except OSError:
            pass
    try:
        os.rename(stage, final)
    except OSError:
        if not final.is_dir():
            raise


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# -- pure helpers ------------------------------------------------------------------------------

def missing(files: Mapping[str, str], present: Mapping[str, str]) -> list[str]:
    """The wheel files (name -> sha256) a board lacks, given what it has (name -> sha256): absent
    or with another sha256. Sorted."""
    return sorted(name for name, sha in files.items() if present.get(name) != sha)


def install_argv(*, venv_python: str, wheel_dir: str, requirements: Sequence[str],
                 constraint: str | None = None) -> list[str]:
    """``pip install`` of ``requirements`` from ``wheel_dir`` only (no index: the board needs no
    internet); ``constraint``: a pip constraints file (env venv-system: ``system_pins_argv``'s output)."""
    if not requirements:
        raise WheelhouseError("install_argv: expected at least one requirement")
    _check_requirements(requirements)
    return [venv_python, "-m", "pip", "install", "--no-index", "--find-links", wheel_dir,
            "--disable-pip-version-check", "--no-input", "-q",
            *(["--constraint", constraint] if constraint else []), *requirements]


# Runs on the board with the venv-system venv's Python; argv: the requirements. For each package of
# KEPT_FROM_SYSTEM that imports from outside the venv (the first on sys.path), prints `name==version`
# (a pip constraint), or exits 4 with one line when that version does not satisfy a requirement.
_SYSTEM_PINS = r'''
import os, re, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
kept = %r
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
venv = os.path.realpath(sys.prefix) if sys.prefix != sys.base_prefix else "\0"   # run outside a venv: all are the system's
wanted = {}
for line in sys.argv[1:]:
    req = Requirement(line)
    wanted.setdefault(canon(req.name), []).append(req)
seen, own = set(), {}
for dist in metadata.distributions():
    name = canon(dist.metadata["Name"] or "")
    if name not in kept or name in seen:
        continue
    where = os.path.realpath(str(dist.locate_file("")))
    if where == venv or where.startswith(venv + os.sep):
        own.setdefault(name, dist.version)
        continue
    seen.add(name)
    if name in own:
        sys.stderr.write("the venv at %%s has its own %%s %%s over the system's %%s (%%s), from an earlier deploy; "
                         "remove the venv and deploy again\n" %% (venv, name, own[name], dist.version, where))
        sys.exit(4)
    for req in wanted.get(name, []):
        if req.marker is None or req.marker.evaluate():
            if not req.specifier.contains(dist.version, prereleases=True):
                major = dist.version.split(".")[0]
                sys.stderr.write("env venv-system keeps the system's %%s %%s (%%s): the vendor's torch is built "
                                 "against it, but it does not satisfy %%s; upgrade it there within %%s.x "
                                 "(pip install '%%s,<%%d'), or use env: venv\n"
                                 %% (name, dist.version, where, req, major, req, int(major) + 1))
                sys.exit(4)
    print("%%s==%%s" %% (name, dist.version))
''' % (KEPT_FROM_SYSTEM,)


def system_pins_argv(*, venv_python: str, requirements: Sequence[str]) -> list[str]:
    """env ``venv-system``: ``python -c`` that prints a pip constraint (``numpy==1.26.4``) for each
    package of ``KEPT_FROM_SYSTEM`` the venv sees from the system site-packages, and exits 4 with one
    line naming it when the system's version does not satisfy ``requirements``: pip would otherwise
    install the wheelhouse's (numpy 2) into the venv, and the vendor's torch, compiled against the
    system's numpy 1.x, would fail to import there. Run it in the venv before ``install_argv``."""
    _check_requirements(requirements)
    return [venv_python, "-c", _SYSTEM_PINS, *requirements]


def venv_argv(*, python: str, path: str, system_site: bool) -> list[str]:
    """``python -m venv`` at ``path``; ``system_site``: with the system site-packages (env
    ``venv-system``: the vendor's torch stays visible)."""
    return [python, "-m", "venv", *(["--system-site-packages"] if system_site else []), path]


def _check_requirements(requirements: Sequence[str]) -> None:
    for req in requirements:
        if not isinstance(req, str) or not req.strip() or req.lstrip().startswith("-"):
            raise WheelhouseError(f"requirement {req!r}: expected a requirement like 'numpy>=1.24', not an option")


def _name_of(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return _normalize(m.group(1)) if m else requirement


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_pure(filename: str) -> bool:
    tags = wheel_tags(filename)
    return all(t.endswith("-none-any") and t.startswith("py") for t in tags)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _run(argv: Sequence[str], *, what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise WheelhouseError(f"{what} took longer than {PIP_TIMEOUT_S:.0f} s; expected a reachable index") from None
    except OSError as exc:
        raise WheelhouseError(f"{what}: cannot run {argv[0]} ({exc.strerror or exc})") from None
