"""What a board's Python interpreter is and which wheels it accepts.

Holds ``PROBE_SCRIPT`` (stdlib-only Python source that doctor runs on a board with the
board's own interpreter; it prints one JSON object of facts and runs on Python 2.7 and 3.6+,
so an old board can still say which version it has), ``BoardPython`` (those facts, validated
by ``BoardPython.from_probe``: a probe comes from another machine and is not trusted) with the
wheel tags the interpreter accepts, computed the way pip's ``packaging.tags`` does for a
glibc Linux (``manylinux_2_N_<arch>`` from the board's glibc down to the oldest one pip
knows, the legacy manylinux2014/2010/1 aliases, ``linux_<arch>``), the board group key
(boards of one group share one wheelhouse) and ``check`` (why this interpreter cannot run
the board side, as one line per reason).

It must not run anything, on a board or here, nor import pip: the tags are computed from the
probe's facts alone, so a laptop of any architecture computes them for any board.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from testbed.errors import TestbedError

MIN_PYTHON = (3, 10)
ENVS = ("venv", "venv-system", "python")
# Machines the board side is built and tested for (Pis: aarch64 or 32-bit armv7l; Jetson:
# aarch64; simulated boards and laptops: x86_64). The tags are computed for any machine.
SUPPORTED_ARCHS = ("x86_64", "aarch64", "armv7l")
PYTHON_HINT = "Pi OS Bookworm has 3.11, JetPack 6 has 3.10"

PROBE_SCRIPT = r'''
import json, os, platform, struct, sys
def _try(f, default=None):
    try:
        return f()
    except Exception:
        return default
def _glibc():
    v = _try(lambda: os.confstr("CS_GNU_LIBC_VERSION"))
    if v:
        parts = v.split()
        if len(parts) == 2 and parts[0] == "glibc":
            return parts[1]
        return None
    lib, ver = _try(platform.libc_ver, ("", ""))
    return ver if lib == "glibc" and ver else None
def _musl():
    d = "/lib"
    names = _try(lambda: os.listdir(d), [])
    return any(n.startswith("ld-musl-") for n in names)
def _elf():
    with open(sys.executable, "rb") as f:
        head = f.read(64)
    if len(head) < 52 or head[:4] != b"\x7fELF":
        return None
    cls, data = bytearray(head[4:6])
    end = "<" if data == 1 else ">"
    machine = struct.unpack(end + "H", head[18:20])[0]
    flags = struct.unpack(end + "I", head[36:40] if cls == 1 else head[48:52])[0]
    return {"bits": 32 if cls == 1 else 64, "little": data == 1, "machine": machine, "flags": flags}
def _has(name):
    try:
        import importlib.util
        return importlib.util.find_spec(name) is not None
    except ImportError:
        import pkgutil
        return pkgutil.find_loader(name) is not None
    except Exception:
        return False
def _pip():
    try:
        from importlib.metadata import version
        return version("pip")
    except Exception:
        pass
    try:
        import pip
        return pip.__version__
    except Exception:
        return None
def _site():
    import sysconfig
    return sysconfig.get_paths()["purelib"]
def _platform():
    import sysconfig
    return sysconfig.get_platform()
print(json.dumps({
    "probe": 1,
    "version": list(sys.version_info[:3]),
    "implementation": _try(lambda: sys.implementation.name, platform.python_implementation().lower()),
    "executable": sys.executable,
    "machine": platform.machine(),
    "platform": _try(_platform, ""),
    "pointer_bits": 64 if sys.maxsize > 2 ** 32 else 32,
    "abiflags": getattr(sys, "abiflags", ""),
    "glibc": _try(_glibc),
    "musl": _try(_musl, False),
    "elf": _try(_elf),
    "venv": _has("venv"),
    "ensurepip": _has("ensurepip"),
    "pip": _pip(),
    "in_venv": sys.prefix != getattr(sys, "base_prefix", getattr(sys, "real_prefix", sys.prefix)),
    "site_packages": _try(_site, ""),
}))
'''

# pip's packaging: architectures with manylinux wheels (armv7l and i686 are checked on the ELF
# header of the interpreter instead), the legacy aliases, and the oldest glibc per family.
_MANYLINUX_ARCHS = frozenset({"x86_64", "aarch64", "ppc64", "ppc64le", "s390x", "loongarch64", "riscv64"})
_LEGACY_MANYLINUX = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
_LAST_GLIBC_MINOR = 50  # what pip assumes the last minor of a past glibc major was
_EM_386, _EM_ARM = 3, 40
_EF_ARM_ABIMASK, _EF_ARM_ABI_VER5, _EF_ARM_ABI_FLOAT_HARD = 0xFF000000, 0x05000000, 0x00000400


class BoardPythonError(TestbedError, ValueError):
    """A board's probe output is malformed, or a board interpreter was asked something unknown
    (a ``ValueError`` too: a bad probe is bad input)."""


@dataclass(frozen=True)
class Elf:
    """The ELF header fields of the board's interpreter binary that pip's tag logic reads."""

    bits: int
    little: bool
    machine: int
    flags: int


@dataclass(frozen=True)
class BoardPython:
    """The facts ``PROBE_SCRIPT`` reports about one board interpreter, and what follows from them."""

    version: tuple[int, int, int]
    implementation: str
    executable: str
    machine: str
    platform: str
    pointer_bits: int
    abiflags: str
    glibc: str | None            # "2.36"; None: no glibc (musl, or none found)
    musl: bool
    elf: Elf | None
    has_venv: bool
    has_ensurepip: bool
    pip_version: str | None
    in_venv: bool
    site_packages: str

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_probe(cls, probe: Mapping[str, Any]) -> BoardPython:
        """Validate the probe's JSON object; raise ``BoardPythonError`` naming the first bad key."""
        if not isinstance(probe, Mapping):
            raise BoardPythonError(f"board python probe: expected a JSON object, got {_cut(probe)}")
        version = _get(probe, "version", list)
        if len(version) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                        for v in version):
            raise BoardPythonError(f"board python probe: 'version' must be [major, minor, micro] "
                                   f"non-negative integers, got {_cut(version)}")
        glibc = _get(probe, "glibc", (str, type(None)))
        if glibc is not None and not re.fullmatch(r"\d{1,4}\.\d{1,4}(?:\.\d{1,4})*", glibc):
            raise BoardPythonError(f"board python probe: 'glibc' must be a version like '2.36' or "
                                   f"null, got {_cut(glibc)}")
        machine = _get(probe, "machine", str)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", machine):
            raise BoardPythonError(f"board python probe: 'machine' must be a machine name like "
                                   f"'aarch64', got {_cut(machine)}")
        implementation = _get(probe, "implementation", str).lower()
        if not re.fullmatch(r"[a-z0-9_]{1,40}", implementation):
            raise BoardPythonError(f"board python probe: 'implementation' must be a name like "
                                   f"'cpython', got {_cut(implementation)}")
        bits = _get(probe, "pointer_bits", int)
        if bits not in (32, 64):
            raise BoardPythonError(f"board python probe: 'pointer_bits' must be 32 or 64, got {_cut(bits)}")
        abiflags = _get(probe, "abiflags", str)
        if not re.fullmatch(r"[a-z]{0,4}", abiflags):
            raise BoardPythonError(f"board python probe: 'abiflags' must be letters like '' or 't', "
                                   f"got {_cut(abiflags)}")
        platform_ = _get(probe, "platform", str)
        if len(platform_) > 80:
            raise BoardPythonError(f"board python probe: 'platform' is too long: {_cut(platform_)}")
        pip_version = _get(probe, "pip", (str, type(None)))
        if pip_version is not None and not re.fullmatch(r"[0-9A-Za-z.+!_-]{1,40}", pip_version):
            raise BoardPythonError(f"board python probe: 'pip' must be a version or null, got {_cut(pip_version)}")
        return cls(
            version=(version[0], version[1], version[2]), implementation=implementation,
            executable=_get(probe, "executable", str), machine=machine, platform=platform_,
            pointer_bits=bits, abiflags=abiflags, glibc=glibc, musl=_get(probe, "musl", bool),
            elf=_elf(probe.get("elf")), has_venv=_get(probe, "venv", bool),
            has_ensurepip=_get(probe, "ensurepip", bool), pip_version=pip_version,
            in_venv=_get(probe, "in_venv", bool), site_packages=_get(probe, "site_packages", str))

    @classmethod
    def from_probe_output(cls, stdout: str) -> BoardPython:
        """``from_probe`` on the last non-empty line of the probe's standard output."""
        lines = [ln for ln in stdout.splitlines() if ln.strip()]
        if not lines:
            raise BoardPythonError("board python probe printed nothing; expected one JSON object")
        try:
            data = json.loads(lines[-1])
        except ValueError:
            raise BoardPythonError(f"board python probe: expected one JSON object, got {_cut(lines[-1])}") from None
        return cls.from_probe(data)

    # -- what follows from the facts -----------------------------------------------------

    @property
    def glibc_version(self) -> tuple[int, int] | None:
        """``(2, 36)``, or None without glibc."""
        if self.glibc is None:
            return None
        major, minor = self.glibc.split(".")[:2]
        return int(major), int(minor)

    @property
    def minor(self) -> str:
        """``"3.11"``: the version pip's ``--python-version`` takes."""
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def interpreter(self) -> str:
        """The interpreter tag, ``cp311``."""
        short = {"cpython": "cp", "pypy": "pp"}.get(self.implementation, self.implementation)
        return f"{short}{self.version[0]}{self.version[1]}"

    @property
    def arch(self) -> str:
        """The architecture of the interpreter's wheels, as pip names it: ``machine``, except that
        a 32-bit interpreter on a 64-bit kernel is ``i686`` (x86_64) or ``armv8l`` (aarch64; Pi OS
        32-bit on a Pi 4/5 reports ``aarch64``)."""
        arch = self.platform[len("linux-"):] if self.platform.startswith("linux-") else self.machine
        arch = re.sub(r"[^a-z0-9]+", "_", arch.lower())
        if self.pointer_bits == 32:
            arch = {"x86_64": "i686", "aarch64": "armv8l"}.get(arch, arch)
        return arch

    @property
    def archs(self) -> tuple[str, ...]:
        """The architectures whose wheels this interpreter runs (``armv8l`` also runs ``armv7l``)."""
        return ("armv8l", "armv7l") if self.arch == "armv8l" else (self.arch,)

    @property
    def abis(self) -> tuple[str, ...]:
        """The ABIs pip's ``--abi`` takes for this interpreter: ``cp311``, ``abi3``, ``none``."""
        own = f"{self.interpreter}{self.abiflags}"
        stable = ("abi3",) if "t" not in self.abiflags else ()
        return (own, *stable, "none") if self.abiflags != "d" else (own, self.interpreter, "abi3", "none")

    @property
    def platforms(self) -> tuple[str, ...]:
        """The platform tags, best first, as pip computes them on the board (``linux_<arch>``,
        then ``manylinux_2_N_<arch>`` and the legacy aliases); musl boards get none (refused)."""
        return (*(f"linux_{a}" for a in self.archs), *self._manylinux())

    @property
    def tags(self) -> tuple[str, ...]:
        """Every ``interpreter-abi-platform`` tag the board's pip accepts, best first (pip's
        ``sys_tags`` for a CPython on that board)."""
        plats = self.platforms
        interp = self.interpreter
        abis = [a for a in self.abis if a not in ("abi3", "none")]
        out = [f"{interp}-{abi}-{p}" for abi in abis for p in plats]
        use_abi3 = "abi3" in self.abis
        if use_abi3:
            out += [f"{interp}-abi3-{p}" for p in plats]
        out += [f"{interp}-none-{p}" for p in plats]
        major, minor = self.version[0], self.version[1]
        if use_abi3:
            out += [f"cp{major}{m}-abi3-{p}" for m in range(minor - 1, 1, -1) for p in plats]
        pys = [f"py{major}{minor}", f"py{major}", *(f"py{major}{m}" for m in range(minor - 1, -1, -1))]
        out += [f"{py}-none-{p}" for py in pys for p in plats]
        out.append(f"{interp}-none-any")
        out += [f"{py}-none-any" for py in pys]
        return tuple(out)

    @property
    def group_key(self) -> str:
        """Boards with the same key share one wheelhouse: implementation, Python minor, ABI
        flags, wheel architecture and glibc, e.g. ``cpython-3.11-aarch64-glibc2.36``."""
        libc = f"glibc{self.glibc}" if self.glibc else ("musl" if self.musl else "nolibc")
        return f"{self.implementation}-{self.minor}{self.abiflags}-{self.arch}-{libc}"

    def describe(self) -> str:
        """``CPython 3.11 on aarch64 (glibc 2.36)``: the group in words, for messages."""
        name = {"cpython": "CPython", "pypy": "PyPy"}.get(self.implementation, self.implementation)
        libc = f"glibc {self.glibc}" if self.glibc else ("musl" if self.musl else "no glibc")
        arch = self.arch if self.pointer_bits == 64 or self.arch == self.machine else \
            f"{self.arch} (32-bit on {self.machine})"
        return f"{name} {self.minor}{self.abiflags} on {arch} ({libc})"

    def marker_environment(self) -> dict[str, str]:
        """The PEP 508 marker variables of the board's interpreter (for evaluating a wheel's
        ``Requires-Dist`` markers on the laptop; the kernel release/version are not probed)."""
        full = ".".join(map(str, self.version))
        impl = {"cpython": "CPython", "pypy": "PyPy"}.get(self.implementation, self.implementation)
        return {"implementation_name": self.implementation, "implementation_version": full, "os_name": "posix",
                "platform_machine": self.machine, "platform_python_implementation": impl,
                "platform_release": "", "platform_system": "Linux", "platform_version": "",
                "python_full_version": full, "python_version": self.minor, "sys_platform": "linux"}

    def accepts(self, wheel_filename: str) -> bool:
        """Whether a wheel file of that name installs on this interpreter (by its tags)."""
        tags = wheel_tags(wheel_filename)
        return bool(tags & set(self.tags))

    def check(self, *, env: str | None = None) -> list[str]:
        """Why this interpreter cannot run the board side: one line per reason, empty when it
        can. With ``env`` (venv | venv-system | python) also what that env needs (venv and
        ensurepip to make the venv; pip for ``python``, which installs with ``pip --target``)."""
        if env is not None and env not in ENVS:
            raise BoardPythonError(f"unknown board env {env!r}; expected one of {', '.join(ENVS)}")
        at = f"at {self.executable}"
        full = ".".join(map(str, self.version))
        reasons: list[str] = []
        if self.implementation != "cpython":
            reasons.append(f"{self.implementation} {full} {at}; expected CPython (the wheelhouse holds "
                           f"CPython wheels)")
        if self.version[:2] < MIN_PYTHON:
            reasons.append(f"Python {full} {at}; expected >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} ({PYTHON_HINT})")
        if "t" in self.abiflags or "d" in self.abiflags:
            kind = "a free-threaded" if "t" in self.abiflags else "a debug"
            reasons.append(f"Python {full}{self.abiflags} {at} is {kind} build; expected the regular "
                           f"build (few wheels exist for it)")
        if self.glibc is None:
            libc = "musl" if self.musl else "no glibc found"
            reasons.append(f"{libc} {at}; expected a glibc Linux (Pi OS, JetPack/Ubuntu): the "
                           f"wheelhouse holds manylinux wheels")
        elif not self._manylinux() and self.arch in SUPPORTED_ARCHS + ("armv8l",):
            if self.arch in ("armv7l", "armv8l"):
                reasons.append(f"32-bit ARM interpreter {at} is not hard-float (armhf); manylinux "
                               f"armv7l wheels need armhf")
            else:
                reasons.append(f"glibc {self.glibc} {at}; expected >= 2.17 (manylinux2014)")
        if self.arch not in SUPPORTED_ARCHS + ("armv8l",):
            reasons.append(f"machine {self.machine} ({self.arch} wheels) {at}; expected one of "
                           f"{', '.join(SUPPORTED_ARCHS)}")
        if env in ("venv", "venv-system"):
            if not self.has_venv:
                reasons.append(f"the venv module is missing {at}; env {env} needs it (Debian/Ubuntu: "
                               f"apt install python3-venv)")
            elif not self.has_ensurepip:
                reasons.append(f"ensurepip is missing {at}, so python -m venv cannot install pip; env {env} "
                               f"needs it (Debian/Ubuntu: apt install python{self.minor}-venv)")
        elif env == "python" and self.pip_version is None:
            reasons.append(f"pip is not importable {at}; env python installs the project wheel with pip "
                           f"(Debian/Ubuntu: apt install python3-pip)")
        return reasons

    # -- internals -------------------------------------------------------------------------

    def _manylinux(self) -> list[str]:
        """pip's ``_manylinux.platform_tags`` for this board (no ``_manylinux`` module overrides)."""
        glibc = self.glibc_version
        if glibc is None or not self._compatible_abi():
            return []
        archs = self.archs
        too_old = (2, 4) if set(archs) & {"x86_64", "i686"} else (2, 16)
        major, minor = glibc
        maxima = [(major, minor)] + [(m, _LAST_GLIBC_MINOR) for m in range(major - 1, 1, -1)]
        tags: list[str] = []
        for arch in archs:
            for gmajor, gminor in maxima:
                lowest = too_old[1] if gmajor == too_old[0] else -1
                for n in range(gminor, lowest, -1):
                    tags.append(f"manylinux_{gmajor}_{n}_{arch}")
                    legacy = _LEGACY_MANYLINUX.get((gmajor, n))
                    if legacy:
                        tags.append(f"{legacy}_{arch}")
        return tags

    def _compatible_abi(self) -> bool:
        archs = self.archs
        elf = self.elf
        if "armv7l" in archs:
            return (elf is not None and elf.bits == 32 and elf.little and elf.machine == _EM_ARM
                    and elf.flags & _EF_ARM_ABIMASK == _EF_ARM_ABI_VER5
                    and elf.flags & _EF_ARM_ABI_FLOAT_HARD == _EF_ARM_ABI_FLOAT_HARD)
        if "i686" in archs:
            return elf is not None and elf.bits == 32 and elf.little and elf.machine == _EM_386
        return any(a in _MANYLINUX_ARCHS for a in archs)


def wheel_tags(filename: str) -> set[str]:
    """The ``interpreter-abi-platform`` tags a wheel file name carries (compressed tag sets
    expanded); ``BoardPythonError`` for a name that is not a wheel's."""
    name = filename.rsplit("/", 1)[-1]
    parts = name[:-len(".whl")].split("-") if name.endswith(".whl") else []
    if len(parts) not in (5, 6):
        raise BoardPythonError(f"not a wheel file name: {_cut(filename)}")
    interps, abis, plats = (p.split(".") for p in parts[-3:])
    return {f"{i}-{a}-{p}" for i in interps for a in abis for p in plats}


def _get(probe: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *, within: str = "") -> Any:
    if key not in probe:
        raise BoardPythonError(f"board python probe: missing key {within + key!r}")
    value = probe[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise BoardPythonError(f"board python probe: {within + key!r} must be {names}, got {_cut(value)}")
    if isinstance(value, str) and len(value) > 4096:
        raise BoardPythonError(f"board python probe: {within + key!r} is too long ({len(value)} characters)")
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BoardPythonError(f"board python probe: {within + key!r} has control characters: {_cut(value)}")
    return value


def _elf(value: Any) -> Elf | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise BoardPythonError(f"board python probe: 'elf' must be an object or null, got {_cut(value)}")
    bits, machine, flags = (_get(value, k, int, within="elf.") for k in ("bits", "machine", "flags"))
    if bits not in (32, 64):
        raise BoardPythonError(f"board python probe: 'elf.bits' must be 32 or 64, got {_cut(bits)}")
    return Elf(bits=bits, little=_get(value, "little", bool, within="elf."), machine=machine, flags=flags)


def _cut(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = ["PROBE_SCRIPT", "BoardPython", "BoardPythonError", "Elf", "wheel_tags", "MIN_PYTHON", "ENVS",
           "SUPPORTED_ARCHS"]
