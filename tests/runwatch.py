"""Watching a run from outside, for whole-run tests: ``wait_until`` a condition on what the run
writes, its ``run_events`` so far, and the process table from /proc (a process's state, parent and
start time, so a reused pid is not mistaken for the one started; a process tree; command lines).
Linux only; no psutil (not a dependency).
"""
from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(cond: Callable[[], T | None], what: str, *, proc: subprocess.Popen[str],
               timeout: float = 300.0) -> T:
    """``cond()``'s first truthy value; fails if the run ends first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert proc.poll() is None, f"the run ended while waiting for {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)   # polling files and /proc that other processes write: no event to wait on


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


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
