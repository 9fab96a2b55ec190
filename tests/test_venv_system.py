"""env venv-system on a stand-in JetPack Python: the system's numpy (NVIDIA's torch is compiled
against numpy 1.x) stays the one the venv imports when the wheelhouse holds numpy 2.

The stand-in is a copy of pyenv's CPython 3.10 (JetPack 6's Python) in a temporary folder, with
numpy installed into its own site-packages, playing the system numpy; a pyenv Python relocates
(its sys.prefix is the copy's). The venv is made and filled offline by the project's own argv
builders and by deploy's own install script, from a wheelhouse built for that interpreter.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.config import BoardSpec
from testbed.remote.boardpython import PROBE_SCRIPT, BoardPython
from testbed.remote.deploy import _install_script
from testbed.remote.rollout import env_for
from testbed.remote.wheelhouse import (Wheelhouse, build_wheelhouse, install_argv, requirements_for,
                                       system_pins_argv, venv_argv)

BASE = Path("/root/.pyenv/versions/3.10.13")
REQS = requirements_for(runtime="torch", env="venv-system")
CHECK = ("import numpy, nodes, nodes.agent\n"
         "print(numpy.__version__); print(numpy.__file__); print(nodes.__file__)")


def _env() -> dict[str, str]:
    """pip sees the wheelhouse only: no configured indexes, find-links or constraints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _system_python(root: Path, numpy: str) -> Path:
    """A copy of the pyenv 3.10 with ``numpy==<numpy>`` in its own site-packages."""
    if not (BASE / "bin" / "python3.10").exists():
        pytest.skip(f"{BASE} is not installed")
    copy = root / "system"
    shutil.copytree(BASE, copy, symlinks=True, ignore=lambda d, names: [n for n in names if n == "__pycache__"
                                                                         or (n == "test" and d.endswith("python3.10"))])
    python = copy / "bin" / "python3.10"
    done = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert done.stdout.strip() == str(copy), f"the copied Python does not relocate: {done.stdout} {done.stderr}"
    # from the index, like test_wheelhouse's fetches: a binary wheel into the copy's site-packages
    done = subprocess.run([str(python), "-m", "pip", "install", "--only-binary=:all:", "--disable-pip-version-check",
                           "-q", f"numpy=={numpy}"], capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if done.returncode != 0:
        pytest.skip(f"numpy {numpy} for Python 3.10 is not on the index: {done.stderr.strip().splitlines()[-1:]}")
    return python


def _probe(python: Path) -> BoardPython:
    done = subprocess.run([str(python), "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 0, done.stderr
    return BoardPython.from_probe_output(done.stdout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("venv-system-cache")


@pytest.fixture(scope="module")
def jetson(index: None, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BoardPython, Wheelhouse]:
    """The stand-in system Python with NVIDIA-like numpy 1.26.4, its probe and its wheelhouse."""
    python = _system_python(tmp_path_factory.mktemp("jetpack"), "1.26.4")
    board = _probe(python)
    assert board.minor == "3.10" and board.executable == str(python) and not board.in_venv
    house = build_wheelhouse(board=board, requirements=REQS, cache_dir=cache)
    numpy = [n for n in house.files if n.startswith("numpy-")]
    assert len(numpy) == 1 and numpy[0].startswith("numpy-2."), numpy   # the conflict is real
    assert not any(n.startswith("torch-") for n in house.files)
    return python, board, house


def _check(venv: Path) -> tuple[str, str, str]:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", CHECK], capture_output=True, text=True, timeout=120,
                          env=_env(), cwd=venv.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    version, numpy_file, nodes_file = done.stdout.split()
    return version, numpy_file, nodes_file


@pytest.mark.slow
def test_pip_keeps_the_system_numpy_in_a_venv_system_venv(jetson: tuple[Path, BoardPython, Wheelhouse],
                                                          tmp_path: Path) -> None:
    """What pip does with deploy's argv, without and with the pins: `numpy>=1.24` is already
    satisfied by the system's 1.26.4, so the wheelhouse's numpy 2 is not installed."""
    python, _board, house = jetson
    system = python.parent.parent
    for pinned in (False, True):
        venv = tmp_path / f"venv-{pinned}"
        subprocess.run(venv_argv(python=str(python), path=str(venv), system_site=True), check=True, timeout=300,
                       env=_env())
        vpy = str(venv / "bin" / "python")
        constraint = None
        if pinned:
            done = subprocess.run(system_pins_argv(venv_python=vpy, requirements=REQS), capture_output=True,
                                  text=True, timeout=120, env=_env())
            assert done.returncode == 0 and done.stdout == "numpy==1.26.4\n", done.stderr
            constraint = str(tmp_path / "pins.txt")
            Path(constraint).write_text(done.stdout)
        for reqs in (REQS, [str(house.path / house.project_wheel)]):   # dependencies, then our wheel
            done = subprocess.run(install_argv(venv_python=vpy, wheel_dir=str(house.path), requirements=reqs,
                                               constraint=constraint),
                                  capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-2000:]
        version, numpy_file, nodes_file = _check(venv)
        assert version == "1.26.4"
        assert numpy_file.startswith(str(system / "lib" / "python3.10" / "site-packages")), numpy_file
        assert not (venv / "lib" / "python3.10" / "site-packages" / "numpy").exists()
        assert nodes_file.startswith(str(venv)), nodes_file   # our wheel, from the wheelhouse


def _deploy_install(board: BoardSpec, python: BoardPython, cache: Path, workdir: Path) -> subprocess.CompletedProcess:
    """deploy's own install script, run here as the board's shell would, on the wheels it received."""
    env = env_for(board, python, cache_dir=cache)
    wheels = workdir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name, path in env.wheels.items():
        shutil.copy2(path, wheels / name)
    return subprocess.run(["bash", "-c", "set -e; " + _install_script(board, env)], capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=workdir)


def _board(python: Path, workdir: Path) -> BoardSpec:
    return BoardSpec(name="jetson", role="edge", kind="jetson", connect="ssh", runtime="torch", host="h",
                     python=str(python), workdir=str(workdir), env="venv-system")


@pytest.mark.slow
def test_deploy_keeps_the_system_numpy(jetson: tuple[Path, BoardPython, Wheelhouse], cache: Path,
                                       tmp_path: Path) -> None:
    python, board_python, _house = jetson
    workdir = tmp_path / "hbc-testbed"
    board = _board(python, workdir)
    for _ in range(2):   # a first deploy, then one over the existing venv (an env change)
        done = _deploy_install(board, board_python, cache, workdir)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (workdir / "system-pins.txt").read_text() == "numpy==1.26.4\n"
        version, numpy_file, nodes_file = _check(workdir / "venv")
        assert version == "1.26.4" and numpy_file.startswith(str(python.parent.parent / "lib")), numpy_file
        assert nodes_file.startswith(str(workdir / "venv")), nodes_file


@pytest.mark.slow
def test_deploy_refuses_a_system_numpy_below_the_floor_instead_of_shadowing_it(
        index: None, cache: Path, tmp_path: Path) -> None:
    """numpy 1.23.5 (Ubuntu 22.04's apt numpy is 1.21.5) does not satisfy `numpy>=1.24`: without
    the pins pip installs the wheelhouse's numpy 2 into the venv, over it; deploy refuses instead."""
    python = _system_python(tmp_path, "1.23.5")
    board_python = _probe(python)
    system = python.parent.parent
    house = build_wheelhouse(board=board_python, requirements=REQS, cache_dir=cache)

    # what pip alone does: numpy 2 lands in the venv and shadows the system's (the bug the pins prevent)
    bare = tmp_path / "bare"
    subprocess.run(venv_argv(python=str(python), path=str(bare), system_site=True), check=True, timeout=300,
                   env=_env())
    done = subprocess.run(install_argv(venv_python=str(bare / "bin" / "python"), wheel_dir=str(house.path),
                                       requirements=REQS), capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    shadow = subprocess.run([str(bare / "bin" / "python"), "-c", "import numpy; print(numpy.__version__)"],
                            capture_output=True, text=True, timeout=120, env=_env())
    assert shadow.stdout.startswith("2."), shadow.stdout

    workdir = tmp_path / "hbc-testbed"
    done = _deploy_install(_board(python, workdir), board_python, cache, workdir)
    assert done.returncode == 4, (done.returncode, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"env venv-system keeps the system's numpy 1.23.5 ({system}/lib/python3.10/site-packages): "
                    f"the vendor's torch is built against it, but it does not satisfy numpy>=1.24; upgrade it "
                    f"there within 1.x (pip install 'numpy>=1.24,<2'), or use env: venv"), last
    assert not (workdir / "venv" / "lib" / "python3.10" / "site-packages" / "numpy").exists()

    # a venv an earlier deploy filled with numpy 2 is named, not kept
    done = subprocess.run(system_pins_argv(venv_python=str(bare / "bin" / "python"), requirements=REQS),
                          capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 4 and done.stderr.startswith(f"the venv at {bare} has its own numpy 2."), done.stderr
