"""Board interpreters and wheelhouses: the probe on real interpreters, pip's tags, a real
wheelhouse for this machine's Python installed offline into a fresh venv, and the refusals."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from testbed.errors import TestbedError
from testbed.hashing import sha256_file
from testbed.remote import wheelhouse as wh
from testbed.remote.boardpython import PROBE_SCRIPT, BoardPython, BoardPythonError, wheel_tags
from testbed.remote.wheelhouse import (Wheelhouse, WheelhouseError, build_wheelhouse, download_argv, install_argv,
                                       missing, project_wheel, requirements_for, venv_argv)

ROOT = Path(__file__).resolve().parent.parent
PYENV = Path("/root/.pyenv/versions")
ARMHF = {"bits": 32, "little": True, "machine": 40, "flags": 0x05000400}


def probe_with(python: str) -> BoardPython:
    done = subprocess.run([python, "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return BoardPython.from_probe_output(done.stdout)


def fake_probe(**over: Any) -> dict[str, Any]:
    base = {"probe": 1, "version": [3, 11, 2], "implementation": "cpython", "executable": "/usr/bin/python3",
            "machine": "aarch64", "platform": "linux-aarch64", "pointer_bits": 64, "abiflags": "", "glibc": "2.36",
            "musl": False, "elf": {"bits": 64, "little": True, "machine": 183, "flags": 0}, "venv": True,
            "ensurepip": True, "pip": "23.0.1", "in_venv": False, "site_packages": "/usr/lib/python3/dist-packages"}
    base.update(over)
    return base


@pytest.fixture(scope="module")
def local() -> BoardPython:
    return probe_with(sys.executable)


# -- the probe and the interpreter's facts ----------------------------------------------------

@pytest.mark.parametrize("version", ["3.9.18", "3.8.18", "3.6.15", "2.7.18"])
def test_probe_runs_on_old_pythons_and_check_refuses_them(version: str) -> None:
    python = PYENV / version / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} is not installed")
    bp = probe_with(str(python))
    assert ".".join(map(str, bp.version)) == version
    assert bp.executable.startswith(str(PYENV / version))
    reason = (f"Python {version} at {bp.executable}; expected >= 3.10 "
              f"(Pi OS Bookworm has 3.11, JetPack 6 has 3.10)")
    assert reason in bp.check()


def test_probe_of_this_python(local: BoardPython) -> None:
    assert local.version == tuple(sys.version_info[:3])
    assert local.implementation == "cpython" and local.executable == sys.executable
    assert local.in_venv == (sys.prefix != sys.base_prefix)
    assert local.has_venv and local.pip_version
    assert local.glibc == os.confstr("CS_GNU_LIBC_VERSION").split()[1]
    assert local.check() == [] and local.check(env="venv") == []
    assert local.group_key == f"cpython-3.{sys.version_info[1]}-{local.arch}-glibc{local.glibc}"


def test_tags_equal_pips_for_this_interpreter(local: BoardPython) -> None:
    from pip._vendor.packaging import tags
    pip_tags = [str(t) for t in tags.sys_tags()]
    assert set(local.tags) == set(pip_tags)
    own = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    pick = {t for t in pip_tags if t.split("-")[0] == own and t.split("-")[1] in (own, "abi3", "none")}
    assert {t for t in local.tags if t.split("-")[0] == own and t.split("-")[1] in (own, "abi3", "none")} == pick
    assert list(local.platforms) == list(tags.platform_tags())


@pytest.mark.parametrize("arch,glibc,bits,elf", [("aarch64", (2, 35), 64, None), ("armv7l", (2, 36), 32, ARMHF),
                                                ("x86_64", (2, 17), 64, None), ("ppc64le", (2, 41), 64, None)])
def test_manylinux_tags_equal_pips_for_other_boards(monkeypatch: pytest.MonkeyPatch, arch: str,
                                                    glibc: tuple[int, int], bits: int, elf: Any) -> None:
    """pip's own manylinux logic, fed the board's glibc, against ours from the probe."""
    from pip._vendor.packaging import _manylinux
    monkeypatch.setattr(_manylinux, "_get_glibc_version", lambda: glibc)
    monkeypatch.setattr(_manylinux, "_get_manylinux_module", lambda: None)
    monkeypatch.setattr(_manylinux, "_have_compatible_abi", lambda exe, archs: True)
    bp = BoardPython.from_probe(fake_probe(machine=arch, platform=f"linux-{arch}", pointer_bits=bits,
                                           glibc=f"{glibc[0]}.{glibc[1]}", elf=elf))
    assert list(bp.platforms) == [f"linux_{arch}", *_manylinux.platform_tags([arch])]
    assert f"manylinux2014_{arch}" in bp.platforms


def test_32bit_userland_on_a_64bit_kernel_is_armv7l() -> None:
    """Pi OS 32-bit on a Pi 4/5: uname says aarch64, the interpreter runs armv7l wheels."""
    bp = BoardPython.from_probe(fake_probe(pointer_bits=32, elf=ARMHF))
    assert bp.archs == ("armv8l", "armv7l")
    assert "manylinux_2_17_armv7l" in bp.platforms and "linux_aarch64" not in bp.platforms
    assert bp.accepts("numpy-2.0.0-cp311-cp311-manylinux_2_17_armv7l.manylinux2014_armv7l.whl")
    assert not bp.accepts("numpy-2.0.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl")
    soft = BoardPython.from_probe(fake_probe(pointer_bits=32, elf={**ARMHF, "flags": 0x05000000}))
    assert not any(p.startswith("manylinux") for p in soft.platforms)
    assert any("hard-float" in r for r in soft.check())


def test_wheel_tags_and_accepts(local: BoardPython) -> None:
    assert wheel_tags("a-1-py2.py3-none-any.whl") == {"py2-none-any", "py3-none-any"}
    assert local.accepts("a-1-py3-none-any.whl")
    assert local.accepts(f"a-1-cp310-abi3-manylinux2014_{local.arch}.whl")
    assert not local.accepts("a-1-cp311-cp311-win_amd64.whl")
    with pytest.raises(BoardPythonError):
        wheel_tags("a-1.tar.gz")


@pytest.mark.parametrize("bad,key", [
    ({"version": [3, 11]}, "version"), ({"version": "3.11.2"}, "version"), ({"version": [3, 11, True]}, "version"),
    ({"glibc": "glibc 2.36"}, "glibc"), ({"glibc": 2.36}, "glibc"), ({"machine": "aarch64; rm -rf /"}, "machine"),
    ({"pointer_bits": 16}, "pointer_bits"), ({"venv": "yes"}, "venv"), ({"elf": [1, 2]}, "elf"),
    ({"elf": {"bits": 64}}, "elf.machine"), ({"pip": "x" * 200}, "pip"), ({"executable": None}, "executable")])
def test_a_malformed_probe_is_a_clear_error(bad: dict[str, Any], key: str) -> None:
    with pytest.raises(BoardPythonError, match=key) as err:
        BoardPython.from_probe(fake_probe(**bad))
    assert isinstance(err.value, TestbedError) and isinstance(err.value, ValueError)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_missing_keys_and_unreadable_output() -> None:
    probe = fake_probe()
    del probe["site_packages"]
    with pytest.raises(BoardPythonError, match="missing key 'site_packages'"):
        BoardPython.from_probe(probe)
    with pytest.raises(BoardPythonError, match="expected a JSON object"):
        BoardPython.from_probe([1, 2])  # type: ignore[arg-type]
    with pytest.raises(BoardPythonError, match="JSON object"):
        BoardPython.from_probe_output("Traceback (most recent call last):\n  SyntaxError")
    with pytest.raises(BoardPythonError, match="printed nothing"):
        BoardPython.from_probe_output("\n")
    assert BoardPython.from_probe_output("motd\n" + json.dumps(fake_probe()) + "\n").minor == "3.11"


def test_check_names_every_reason() -> None:
    assert BoardPython.from_probe(fake_probe()).check(env="venv") == []
    musl = BoardPython.from_probe(fake_probe(glibc=None, musl=True)).check()
    assert any(r.startswith("musl at /usr/bin/python3; expected a glibc Linux") for r in musl)
    assert any("armv6l" in r and "expected one of x86_64, aarch64, armv7l" in r
               for r in BoardPython.from_probe(fake_probe(machine="armv6l", platform="linux-armv6l")).check())
    assert any("free-threaded" in r for r in BoardPython.from_probe(fake_probe(version=[3, 13, 1], abiflags="t")).check())
    assert any("pypy" in r for r in BoardPython.from_probe(fake_probe(implementation="pypy")).check())
    no_ensurepip = BoardPython.from_probe(fake_probe(ensurepip=False))
    assert no_ensurepip.check() == [] and no_ensurepip.check(env="python") == []
    assert any("apt install python3.11-venv" in r for r in no_ensurepip.check(env="venv-system"))
    no_pip = BoardPython.from_probe(fake_probe(pip=None))
    assert no_pip.check(env="venv") == [] and any("pip is not importable" in r for r in no_pip.check(env="python"))
    with pytest.raises(BoardPythonError, match="venv, venv-system, python"):
        no_pip.check(env="conda")


def test_group_key_separates_what_needs_other_wheels() -> None:
    a = BoardPython.from_probe(fake_probe())
    assert a.group_key == "cpython-3.11-aarch64-glibc2.36"
    assert BoardPython.from_probe(fake_probe(version=[3, 11, 9], executable="/opt/py")).group_key == a.group_key
    for other in (fake_probe(version=[3, 13, 0]), fake_probe(glibc="2.35"), fake_probe(pointer_bits=32, elf=ARMHF)):
        assert BoardPython.from_probe(other).group_key != a.group_key


# -- requirements and argv builders -----------------------------------------------------------

def test_requirements_for_each_runtime_and_env() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base, extras = project["dependencies"], project["optional-dependencies"]
    assert requirements_for(runtime="tflite", env="venv") == [*base, *extras["tflite"]]
    assert requirements_for(runtime="tflite", env="venv-system") == [*base, *extras["tflite"]]
    assert requirements_for(runtime="torch", env="venv") == [*base, *extras["torch"]]
    assert requirements_for(runtime="torch", env="venv-system") == base   # the vendor's torch stays
    assert requirements_for(runtime="tflite", env="python") == requirements_for(runtime="torch", env="python") == []
    with pytest.raises(WheelhouseError, match="tflite, torch"):
        requirements_for(runtime="onnx", env="venv")
    with pytest.raises(WheelhouseError, match="venv, venv-system, python"):
        requirements_for(runtime="torch", env="conda")


def test_requirements_from_installed_metadata_when_no_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    from_tree = requirements_for(runtime="tflite", env="venv")
    monkeypatch.setattr(wh, "_source_root", lambda: None)
    # the installed metadata's specifiers are normalized ("paho-mqtt<3,>=2.0"); the projects are the same
    assert [wh._name_of(r) for r in requirements_for(runtime="tflite", env="venv")] == \
        [wh._name_of(r) for r in from_tree]
    assert "torch>=2.2" in requirements_for(runtime="torch", env="venv")
    assert not any(r.startswith("torch") for r in requirements_for(runtime="torch", env="venv-system"))
    with pytest.raises(WheelhouseError, match="not from a source tree"):
        project_wheel(cache_dir=Path("/nonexistent"))


def test_argv_builders_and_missing(local: BoardPython) -> None:
    assert install_argv(venv_python="/w/venv/bin/python", wheel_dir="/w/wheels", requirements=["numpy>=1.24"]) == [
        "/w/venv/bin/python", "-m", "pip", "install", "--no-index", "--find-links", "/w/wheels",
        "--disable-pip-version-check", "--no-input", "-q", "numpy>=1.24"]
    assert venv_argv(python="/usr/bin/python3", path="/w/venv", system_site=False) == [
        "/usr/bin/python3", "-m", "venv", "/w/venv"]
    assert venv_argv(python="/usr/bin/python3", path="/w/venv", system_site=True) == [
        "/usr/bin/python3", "-m", "venv", "--system-site-packages", "/w/venv"]
    with pytest.raises(WheelhouseError):
        install_argv(venv_python="p", wheel_dir="d", requirements=["--index-url=http://evil"])
    with pytest.raises(WheelhouseError):
        install_argv(venv_python="p", wheel_dir="d", requirements=[])
    argv = download_argv(board=local, requirements=["numpy"], dest="/d")
    assert argv[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == local.minor
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"] == list(local.platforms)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--abi"] == [local.interpreter, "abi3", "none"]
    assert argv[-3:] == ["-d", "/d", "numpy"]
    files = {"a.whl": "1", "b.whl": "2", "c.whl": "3"}
    assert missing(files, {"a.whl": "1", "b.whl": "x", "z.whl": "9"}) == ["b.whl", "c.whl"]
    assert missing(files, files) == [] and missing({}, files) == []


# -- real wheelhouses -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(index: None, local: BoardPython, tmp_path_factory: pytest.TempPathFactory) -> tuple[Wheelhouse, Path, float]:
    cache = tmp_path_factory.mktemp("wheelhouse-cache")
    t0 = time.monotonic()
    house = build_wheelhouse(board=local, requirements=requirements_for(runtime="tflite", env="venv"),
                             cache_dir=cache)
    return house, cache, time.monotonic() - t0


def test_wheelhouse_for_this_python_is_complete_and_cached(built: tuple[Wheelhouse, Path, float],
                                                          local: BoardPython, monkeypatch: pytest.MonkeyPatch) -> None:
    house, cache, seconds = built
    size = house.size
    print(f"\ncold wheelhouse for {local.describe()}: {seconds:.1f} s, {len(house.files)} wheels, "
          f"{size / 1e6:.1f} MB")
    assert not house.cached and house.path.is_dir() and house.path.parent.parent == cache
    names = {n.split("-")[0].lower() for n in house.files}
    assert {"numpy", "paho_mqtt", "pyserial", "zstandard", "lz4", "cobs", "ai_edge_litert", "hbc_testbed"} <= names
    assert house.project_wheel is not None and house.project_wheel.startswith("hbc_testbed-")
    assert all(local.accepts(n) for n in house.files)
    manifest = json.loads((house.path / wh.MANIFEST).read_text())
    assert {n: e["sha256"] for n, e in manifest["files"].items()} == house.files
    assert manifest["group"] == local.group_key
    assert all(sha256_file(house.path / n) == sha for n, sha in house.files.items())
    assert not [p for p in house.path.parent.iterdir() if p.name.startswith(".tmp-")]

    mtime = house.path.stat().st_mtime_ns

    def no_pip(*a: Any, **k: Any) -> Any:
        raise AssertionError(f"pip ran again: {a}")
    monkeypatch.setattr(wh, "_run", no_pip)
    again = build_wheelhouse(board=local, requirements=requirements_for(runtime="tflite", env="venv"),
                             cache_dir=cache)
    assert again.cached and again.path == house.path and again.files == house.files and again.key == house.key
    assert house.path.stat().st_mtime_ns == mtime


def test_wheelhouse_installs_offline_into_a_fresh_venv(built: tuple[Wheelhouse, Path, float],
                                                       tmp_path: Path) -> None:
    python = PYENV / "3.11.7" / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} is not installed")
    house = built[0]
    venv = tmp_path / "venv"
    subprocess.run(venv_argv(python=str(python), path=str(venv), system_site=False), check=True, timeout=300)
    vpy = str(venv / "bin" / "python")
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}   # no configured find-links or indexes: the wheelhouse only
    env.pop("PYTHONPATH", None)
    argv = install_argv(venv_python=vpy, wheel_dir=str(house.path),
                        requirements=[*requirements_for(runtime="tflite", env="venv"), "hbc-testbed"])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    code = ("import nodes, nodes.agentconfig, ai_edge_litert, numpy, zstandard, lz4, cobs, serial, paho.mqtt\n"
            "from ai_edge_litert.interpreter import Interpreter\n"
            "print(nodes.__file__)")
    done = subprocess.run([vpy, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith(str(venv))   # from the installed wheel, not this checkout


def test_a_broken_cached_wheelhouse_is_rebuilt(built: tuple[Wheelhouse, Path, float], local: BoardPython,
                                               tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(built[1], cache, symlinks=True)
    house = build_wheelhouse(board=local, requirements=requirements_for(runtime="tflite", env="venv"),
                             cache_dir=cache)
    assert house.cached
    victim = next(n for n in house.files if n.startswith("numpy"))
    for folder in (house.path, *(cache / "wheels").iterdir()):
        (folder / victim).unlink()
    again = build_wheelhouse(board=local, requirements=requirements_for(runtime="tflite", env="venv"),
                             cache_dir=cache)
    assert not again.cached and (again.path / victim).is_file() and again.files == house.files


def test_project_wheel_is_cached_by_source_hash(built: tuple[Wheelhouse, Path, float],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cache = built[1]
    first = project_wheel(cache_dir=cache)
    assert first.name == built[0].project_wheel

    def no_pip(*a: Any, **k: Any) -> Any:
        raise AssertionError("pip ran again")
    monkeypatch.setattr(wh, "_run", no_pip)
    assert project_wheel(cache_dir=cache) == first


def test_no_wheel_of_a_compiled_package_names_it(index: None, tmp_path: Path) -> None:
    for machine, elf in (("armv7l", ARMHF), ("ppc64le", None)):
        board = BoardPython.from_probe(fake_probe(version=[3, 13, 5], machine=machine, platform=f"linux-{machine}",
                                                  pointer_bits=32 if elf else 64, elf=elf, glibc="2.41"))
        with pytest.raises(WheelhouseError) as err:
            build_wheelhouse(board=board, requirements=["ai-edge-litert>=2.0"], cache_dir=tmp_path,
                             include_project=False)
        msg = str(err.value)
        assert msg.startswith(f"no wheel of ai-edge-litert for CPython 3.13 on {machine} (glibc 2.41)"), msg
        assert "\n" not in msg and "Traceback" not in msg
    assert not list((tmp_path / "wheels").iterdir())   # nothing half-built left in the cache


def _sdist(folder: Path, name: str, *, compiled: bool) -> None:
    """A minimal setuptools source release of ``name`` (pure, or with a C extension)."""
    mod = name.replace("-", "_")
    files = {
        "pyproject.toml": (f'[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
                           f'[project]\nname = "{name}"\nversion = "0.1"\n'
                           + ("" if compiled else f'[tool.setuptools]\npy-modules = ["{mod}"]\n')),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{mod}.py": "VALUE = 1\n",
    }
    if compiled:
        files["setup.py"] = (f"from setuptools import setup, Extension\n"
                             f"setup(ext_modules=[Extension('{mod}_c', ['{mod}_c.c'])], py_modules=['{mod}'])\n")
        files[f"{mod}_c.c"] = ("#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "
                               f"\"{mod}_c\", 0, -1, 0}};\nPyMODINIT_FUNC PyInit_{mod}_c(void) "
                               "{ return PyModule_Create(&m); }\n")
    with tarfile.open(folder / f"{mod}-0.1.tar.gz", "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{mod}-0.1/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.slow
def test_a_source_only_dependency_is_built_when_pure_python_and_refused_when_compiled(
        index: None, tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    _sdist(links, "hbc-tb-toy-pure", compiled=False)
    _sdist(links, "hbc-tb-toy-native", compiled=True)
    board = BoardPython.from_probe(fake_probe())   # aarch64, CPython 3.11: built here on another machine
    house = build_wheelhouse(board=board, requirements=["hbc-tb-toy-pure", "pyserial==3.5"], cache_dir=tmp_path,
                             pip_args=["--find-links", str(links)], include_project=False)
    assert house.from_source == ("hbc-tb-toy-pure",)
    assert sorted(house.files) == ["hbc_tb_toy_pure-0.1-py3-none-any.whl", "pyserial-3.5-py2.py3-none-any.whl"]
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the compiled half needs one")
    with pytest.raises(WheelhouseError, match=r"^no wheel of hbc-tb-toy-native for CPython 3\.11 on aarch64 "
                                              r"\(glibc 2\.36\); its source release builds a compiled wheel"):
        build_wheelhouse(board=board, requirements=["hbc-tb-toy-native"], cache_dir=tmp_path,
                         pip_args=["--find-links", str(links)], include_project=False)


def test_dependencies_the_boards_markers_need_are_fetched(index: None, tmp_path: Path) -> None:
    """pip evaluates `x; python_version < "3.11"` with this machine's Python: a 3.10 board (JetPack
    6) would miss anyio's exceptiongroup and typing_extensions without the second round."""
    if sys.version_info < (3, 11):
        pytest.skip("needs a laptop Python newer than the board's 3.10")
    board = BoardPython.from_probe(fake_probe(version=[3, 10, 12], glibc="2.35"))
    house = build_wheelhouse(board=board, requirements=["anyio==4.4.0"], cache_dir=tmp_path, include_project=False)
    names = {n.split("-")[0].lower() for n in house.files}
    assert {"anyio", "idna", "sniffio", "exceptiongroup", "typing_extensions"} <= names
