"""Agents on ssh boards: started detached from the SSH session, found again only by what we recorded.

Holds ``unit_name`` (``hbc-tb-<bench>-<board>``), ``start_agent`` (a transient systemd unit where
the board runs systemd and we may start one: as root or with ``sudo -n``; else ``setsid`` with a
pid file, so a dropped laptop connection does not end the run), ``agent_state`` (alive, pid,
unit, run id, log, current bundle), ``stop_agent`` (TERM, then KILL after a grace time; also runs
the clear commands of any kernel shaping we recorded in ``run/shaping.json``), ``kill_agent``
(SIGKILL, as a fault), ``log_tail`` and ``pull_log``. ``RemoteAgent`` gives the orchestrator the
same handle a local ``AgentProcess`` does (poll, kill, stop, log_tail).

What we started is recorded in ``<workdir>/run/agent.json``; a pid is acted on only while its
command line is still ``-m nodes.agent`` with our config (a recycled pid is left alone).
It must not push files (``testbed.remote.deploy``) or decide when agents start (the orchestrator).
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.config import BoardSpec
from testbed.remote.deploy import board_python, sftp_path
from testbed.remote.ssh import Boards, RemoteError, Session, board_path, quote_path, where

__all__ = ["unit_name", "start_agent", "agent_state", "stop_agent", "kill_agent", "log_tail", "pull_log",
           "RemoteAgent", "record_shaping", "AGENT_RECORD"]

AGENT_RECORD = "run/agent.json"
STOP_GRACE_S = 10


def unit_name(bench: str, board: str) -> str:
    return f"hbc-tb-{bench}-{board}"


async def _home(s: Session) -> str:
    done = await s.run("printf %s \"$HOME\"")
    return done.stdout.strip()


async def _resolve(s: Session, path: str) -> str:
    if path.startswith("~/"):
        return (await _home(s)).rstrip("/") + path[1:]
    return path


async def _systemd(s: Session) -> bool:
    done = await s.run("[ -d /run/systemd/system ] && command -v systemd-run >/dev/null && "
                       "{ [ \"$(id -u)\" = 0 ] || sudo -n -- systemctl --version >/dev/null 2>&1; }", check=False)
    return done.code == 0


async def start_agent(s: Session, *, bench: str, run_id: str, use_systemd: bool | None = None) -> dict[str, Any]:
    """Start the agent of ``current/agent.json`` detached; returns the record written on the board."""
    board = s.board
    await stop_agent(s, clear_shaping=False)   # one agent of ours per board
    cfg = await _resolve(s, board_path(board, "current", "agent.json"))
    cwd = await _resolve(s, board_path(board, "current"))
    log = await _resolve(s, board_path(board, "logs", f"{run_id}.log"))
    python, extra = board_python(board)
    python = await _resolve(s, python)
    env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           **{k: await _resolve(s, v) for k, v in extra.items()}}
    argv = [python, "-m", "nodes.agent", "--config", cfg]
    record: dict[str, Any] = {"run": run_id, "log": log, "config": cfg, "started_ns": time.time_ns()}
    await s.run(f"mkdir -p {quote_path(board_path(board, 'logs'))} {quote_path(board_path(board, 'run'))}")
    if use_systemd is None:
        use_systemd = await _systemd(s)
    if use_systemd:
        unit = unit_name(bench, board.name)
        props = ["--collect", f"--unit={unit}", f"--working-directory={cwd}", "-p", f"StandardOutput=append:{log}",
                 "-p", "StandardError=inherit", *[f"--setenv={k}={v}" for k, v in env.items()]]
        if board.user and board.user != "root":
            props.append(f"--uid={board.user}")
        await s.run(["systemctl", "reset-failed", unit], sudo=True, check=False)
        await s.run(["systemd-run", "--quiet", *props, *argv], sudo=True)
        pid = await s.run(["systemctl", "show", "-p", "MainPID", "--value", unit], check=False)
        record.update(unit=unit, pid=int(pid.stdout.strip() or 0) or None)
    else:
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # only the agent goes to the background, its output to the log: the channel closes at once
        done = await s.run(f"cd {shlex.quote(cwd)} || exit 1; {envs} setsid {shlex.join(argv)} >> {shlex.quote(log)} "
                           f"2>&1 < /dev/null & echo $!")
        record.update(unit=None, pid=int(done.stdout.strip()))
    await s.run(f"cat > {quote_path(board_path(board, AGENT_RECORD))}", input=json.dumps(record) + "\n")
    return record


async def _record(s: Session) -> dict[str, Any] | None:
    done = await s.run(f"cat {quote_path(board_path(s.board, AGENT_RECORD))} 2>/dev/null", check=False)
    try:
        rec = json.loads(done.stdout) if done.stdout.strip() else None
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    # the board's file: a pid that is not a positive int, or a path that is not a string, is dropped
    # (we then act on nothing rather than on a wrong process)
    pid = rec.get("pid")
    return {**{k: v for k, v in rec.items() if isinstance(v, str) and k in ("run", "log", "config", "unit")},
            "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 1 << 22 else None}


def _ours(rec: dict[str, Any]) -> str:
    """A shell test: is pid still our agent (its command line names our config)?"""
    pid = int(rec.get("pid") or 0)
    return (f"[ {pid} -gt 0 ] && [ -r /proc/{pid}/cmdline ] && "
            f"tr '\\0' ' ' < /proc/{pid}/cmdline | grep -qF -- {shlex.quote('nodes.agent --config ' + str(rec.get('config')))}")


async def agent_state(s: Session) -> dict[str, Any]:
    """What runs on the board: our agent's record and whether it is alive; the current bundle."""
    rec = await _record(s) or {}
    alive = False
    if rec.get("pid"):
        alive = (await s.run(_ours(rec), check=False)).code == 0
    cur = await s.run(f"readlink {quote_path(board_path(s.board, 'current'))}", check=False)
    py, extra = board_python(s.board)
    envs = " ".join(f"{k}={quote_path(v)}" for k, v in extra.items())
    ver = await s.run(f"{envs} {quote_path(py)} -c 'import importlib.metadata as m; print(m.version(\"hbc-testbed\"))'",
                      check=False)
    return {"alive": alive, "pid": rec.get("pid"), "unit": rec.get("unit"), "run": rec.get("run"),
            "log": rec.get("log"), "bundle": cur.stdout.strip().rsplit("/", 1)[-1] or None,
            "version": ver.stdout.strip() or None}


async def kill_agent(s: Session) -> bool:
    """SIGKILL our agent (a fault: no clean disconnect, the broker sends its last will)."""
    rec = await _record(s)
    if not rec or not rec.get("pid"):
        return False
    done = await s.run(f"{_ours(rec)} && kill -KILL {int(rec['pid'])}", check=False)
    return done.code == 0


async def stop_agent(s: Session, *, clear_shaping: bool = True, grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop what we started on the board (and clear the shaping we recorded); returns notes."""
    notes: list[str] = []
    rec = await _record(s)
    if rec and rec.get("unit"):
        done = await s.run(["systemctl", "stop", str(rec["unit"])], sudo=True, check=False)
        notes.append(f"stopped unit {rec['unit']}" if done.code == 0 else f"unit {rec['unit']}: {done.stderr.strip()[:120]}")
    elif rec and rec.get("pid"):
        pid = int(rec["pid"])
        script = (f"if {_ours(rec)}; then kill -TERM {pid}; i=0; while {_ours(rec)} && [ $i -lt {int(grace_s * 10)} ]; "
                  f"do sleep 0.1; i=$((i+1)); done; if {_ours(rec)}; then kill -KILL {pid}; echo killed; "
                  f"else echo stopped; fi; else echo none; fi")
        done = await s.run(script, check=False, timeout=grace_s + 30)
        state = done.stdout.strip()
        if state != "none":
            notes.append(f"{state} agent pid {pid}")
    if clear_shaping:
        notes += await _clear_shaping(s)
    return notes


async def record_shaping(s: Session, clear: list[list[str]]) -> None:
    """Remember the commands that undo the shaping we applied (``testbed stop`` runs them)."""
    await s.run(f"mkdir -p {quote_path(board_path(s.board, 'run'))} && "
                f"cat > {quote_path(board_path(s.board, 'run', 'shaping.json'))}", input=json.dumps(clear) + "\n")


async def _clear_shaping(s: Session) -> list[str]:
    path = board_path(s.board, "run", "shaping.json")
    done = await s.run(f"cat {quote_path(path)} 2>/dev/null", check=False)
    try:
        clear = json.loads(done.stdout) if done.stdout.strip() else []
    except ValueError:
        clear = []
    notes = []
    for argv in clear if isinstance(clear, list) else []:
        if isinstance(argv, list) and argv and argv[0] in ("tc", "nft"):
            await s.run([str(a) for a in argv], sudo=True, check=False)
            notes.append("cleared: " + shlex.join(map(str, argv)))
    await s.run(f"rm -f {quote_path(path)}", check=False)
    return notes


async def log_tail(s: Session, *, run_id: str | None = None, lines: int = 100) -> str:
    log = await _log_path(s, run_id)
    done = await s.run(["tail", "-n", str(lines), log], check=False)
    return done.stdout


async def _log_path(s: Session, run_id: str | None) -> str:
    if run_id is None:
        rec = await _record(s)
        if not rec or not rec.get("log"):
            raise RemoteError(f"{where(s.board)}: no agent of ours has run here yet (no {AGENT_RECORD})")
        return str(rec["log"])
    if "/" in run_id or run_id.startswith("."):
        raise RemoteError(f"bad run id {run_id!r}; expected a run directory's name")
    return await _resolve(s, board_path(s.board, "logs", f"{run_id}.log"))


async def pull_log(s: Session, dest: Path, *, run_id: str) -> Path | None:
    """Copy the board's log of ``run_id`` to ``dest`` (a file); None when the board has none."""
    log = await _log_path(s, run_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        async with s.conn.start_sftp_client() as sftp:
            await sftp.get(sftp_path(log), str(dest))
    except Exception:   # noqa: BLE001 - a missing log is reported by the caller, the run goes on
        return None
    return dest


@dataclass
class RemoteAgent:
    """The orchestrator's handle on an ssh board's agent (as ``AgentProcess`` is for a local one)."""

    boards: Boards
    board: BoardSpec
    bench: str
    run_id: str
    record: dict[str, Any] = field(default_factory=dict)
    _checked: float = 0.0
    _exit: int | None = None

    def start(self) -> RemoteAgent:
        self.record = self.boards.call(start_agent(self.boards.live(self.board.name), bench=self.bench,
                                                   run_id=self.run_id))
        return self

    def poll(self) -> int | None:
        """None while the agent runs; checked on the board at most once a second."""
        if self._exit is not None or time.monotonic() - self._checked < 1.0:
            return self._exit
        self._checked = time.monotonic()
        try:
            st = self.boards.call(agent_state(self.boards.live(self.board.name)), timeout=30)
        except Exception:   # noqa: BLE001 - an unreachable board is not an exited agent
            return None
        if not st["alive"]:
            self._exit = -1
        return self._exit

    def kill(self) -> None:
        self.boards.call(kill_agent(self.boards.live(self.board.name)), timeout=30)

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._checked = 0.0
            if self.poll() is not None:
                return self._exit
            time.sleep(0.2)
        return None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.boards.call(log_tail(self.boards.live(self.board.name), run_id=self.run_id,
                                             lines=lines), timeout=30)
        except Exception:   # noqa: BLE001
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, *, timeout: float = 5.0) -> None:
        try:
            self.boards.call(stop_agent(self.boards.live(self.board.name), clear_shaping=False,
                                        grace_s=timeout), timeout=timeout + 60)
        except Exception:   # noqa: BLE001 - stop is best effort in teardown; testbed stop retries
            pass

    def __enter__(self) -> RemoteAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
