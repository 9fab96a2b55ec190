"""Watching a run from outside, for whole-run tests: ``start_run`` (``testbed run --headless
--json`` on the demo bench, as a child), ``wait_until`` a condition on what the run writes,
``sampling_run_dir`` once it samples, ``stop_run`` after a failed check, its ``run_events`` so
far, and the process table from /proc (a process's state, parent and start time, so a reused
pid is not mistaken for the one started; a process tree; names and command lines).
Linux only; no psutil (not a dependency).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def start_run(exp: Path, *, cwd: Path, model_cache: Path) -> subprocess.Popen[str]:
    """``testbed run EXP`` on the demo bench, headless with its JSON line, in the session's model
    cache; Ctrl-C (SIGINT) stops it as a terminal's would."""
    from conftest import DEMO_INVENTORY, ROOT, sigint_default

    env = {**os.environ, "HBC_TESTBED_CACHE": str(model_cache),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.Popen([sys.executable, "-m", "testbed", "run", str(exp), "--inventory", str(DEMO_INVENTORY),
                             "--headless", "--json"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=sigint_default)


def wait_until(cond: Callable[[], T | None], what: str, *, proc: subprocess.Popen[str],
               timeout: float = 300.0) -> T:
    """``cond()``'s first truthy value; fails if the run ends first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert proc.poll() is None, f"the run ended while waiting for {what}: {(proc.communicate()[1] or '')[-2000:]}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)   # polling files and /proc that other processes write: no event to wait on


def stop_run(proc: subprocess.Popen[str], *, grace: float = 60.0) -> None:
    """After a failed check: Ctrl-C the run, so it stops what it started; SIGKILL after ``grace`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def sampling_run_dir(runs: Path, *, proc: subprocess.Popen[str]) -> Path:
    """The run directory under ``runs`` once its run has started sampling."""
    def sampling() -> Path | None:
        for ev in runs.glob("*/events.jsonl"):
            if '"sampling_start"' in ev.read_text():
                return ev.parent
        return None
    return wait_until(sampling, "sampling to start", proc=proc)


def run_events(run_dir: Path) -> list[dict]:
    """The run's events so far (a line being written is left for the next look)."""
    out = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent pid, start time in clock ticks) of ``pid``; None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) ": state, ppid, ...
    if fields[0] in ("Z", "X"):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def processes() -> dict[int, tuple[str, int, int]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := proc_stat(int(entry.name))) is not None:
            out[int(entry.name)] = st
    return out


def descendants(root: int) -> set[tuple[int, int]]:
    """Every live process under ``root``, as (pid, start time) so a reused pid is not mistaken."""
    procs = processes()
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        for pid, (_, ppid, start) in procs.items():
            if ppid == parent and (pid, start) not in found:
                found.add((pid, start))
                todo.append(pid)
    return found


def alive(pid: int, start: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[2] == start


def comm(pid: int) -> str:
    """The process's name (its executable's, as the kernel keeps it)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
