"""The commands that act on a physical bench's ssh boards: doctor, deploy, status, logs, stop, trust.

Holds one function per command, each taking keyword options and returning an exit code (0 when
every board did what was asked, 1 when any did not; each board's result is printed on its own,
one board's failure never hides another's). Printing is here; the work is in ``testbed.remote``
and, for deploy, the orchestrator (which stages each board's files exactly as a run does).
"""
from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.config import Inventory, load_inventory
from testbed.errors import ConfigError

__all__ = ["doctor_command", "deploy_command", "status_command", "logs_command", "stop_command",
           "trust_command", "ssh_names"]


def _console(*, stderr: bool = False) -> Any:
    from rich.console import Console
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def ssh_names(inv: Inventory, names: list[str] | None) -> list[str]:
    """The named boards (all ssh boards when none are named); an unknown or non-ssh name is a
    ConfigError listing the ssh boards."""
    ssh = [b.name for b in inv.boards.values() if b.connect == "ssh"]
    if not names:
        if not ssh:
            raise ConfigError("no board has connect: ssh; these commands act on physical boards",
                              file=str(inv.path))
        return ssh
    for n in names:
        if n not in ssh:
            raise ConfigError(f"board {n!r} is not an ssh board of this bench; expected one of "
                              f"{', '.join(ssh) or '(none)'}", file=str(inv.path))
    return list(names)


def doctor_command(*, inventory: Path, names: list[str] | None = None, as_json: bool = False,
                   cache: Path | None = None) -> int:
    from testbed.orchestrator import default_cache_dir
    from testbed.remote.doctor import as_json as to_json
    from testbed.remote.doctor import doctor, render_table, summary_line

    inv = load_inventory(inventory)
    reports = doctor(inv, names=ssh_names(inv, names), cache_dir=cache or default_cache_dir())
    console = _console(stderr=as_json)
    console.print(render_table(reports))
    console.print(summary_line(reports))
    if as_json:
        sys.stdout.write(json.dumps(to_json(reports)) + "\n")
    return 0 if all(r.ok for r in reports.values()) else 1


def deploy_command(*, inventory: Path, experiment: Path | None, names: list[str] | None = None,
                   bundle: Path | None = None, cache: Path | None = None, as_json: bool = False,
                   require_signed: Sequence[Path] = ()) -> int:
    """Deploy ``experiment`` (or the experiment a ``bundle`` carries) to the chosen ssh boards.
    With ``require_signed`` (public key files) the ``bundle`` must be signed by one of them: it is
    checked before anything of the bundle is read (its experiment copy included) and before any
    board is contacted."""
    from testbed.bundle import bundle_experiment
    from testbed.config import load_experiment
    from testbed.orchestrator import Orchestrator, check_runnable, default_cache_dir, prepare_bundle, require_bundle

    inv = load_inventory(inventory)
    require_bundle(require_signed, bundle)
    if require_signed and bundle is not None:
        from testbed.signing import verify_bundle
        verify_bundle(bundle, trusted=list(require_signed))
    if experiment is None:
        if bundle is None:
            raise ConfigError("give EXPERIMENT.yaml or --bundle DIR", file="testbed deploy")
        experiment = bundle_experiment(bundle)
    exp = load_experiment(experiment)
    chosen = ssh_names(inv, names)
    check_runnable(inv)
    cache = cache or default_cache_dir()
    console = _console(stderr=as_json)
    prepared = prepare_bundle(exp, cache_dir=cache, inventory=inv, bundle_dir=bundle, trusted=require_signed)
    orch = Orchestrator(inventory=inv, experiment=exp, prepared=prepared, run_dir=cache / "deploy-runs" / "none",
                        cache_dir=cache)
    outcomes = orch.deploy(names=chosen, staging=cache / "staging" / inv.bench)
    rows = {}
    for name, o in outcomes.items():
        if o.ok and o.value is not None:
            r = o.value
            rows[name] = {"ok": True, "bundle": r.bundle.key, "env": r.env.key, "bytes": r.bytes,
                          "files": r.env.files + r.bundle.files}
            what = f"{len(rows[name]['files'])} file(s), {r.bytes} bytes" if r.bytes else "nothing changed, 0 bytes"
            console.print(f"[green]{name}[/]: bundle {r.bundle.key}, env {r.env.key}: {what}")
        else:
            rows[name] = {"ok": False, "error": o.error}
            console.print(f"[red]{name}[/]: {o.error}")
    if as_json:
        sys.stdout.write(json.dumps({"boards": rows}) + "\n")
    return 0 if all(r["ok"] for r in rows.values()) else 1


def status_command(*, inventory: Path, names: list[str] | None = None, as_json: bool = False) -> int:
    from rich.table import Table

    from testbed.remote.agents import agent_state
    from testbed.remote.ssh import Boards

    inv = load_inventory(inventory)
    chosen = ssh_names(inv, names)
    with Boards(inv, chosen) as boards:
        got = boards.each(agent_state)
    t = Table(title=f"bench {inv.bench}")
    for col in ("board", "agent", "pid / unit", "run", "bundle", "hbc-testbed"):
        t.add_column(col)
    rows = {}
    for name, o in got.items():
        if not o.ok:
            t.add_row(name, f"[red]{o.error}[/]", "", "", "", "")
            rows[name] = {"ok": False, "error": o.error}
            continue
        st = o.value or {}
        rows[name] = {"ok": True, **st}
        t.add_row(name, "[green]running[/]" if st["alive"] else "stopped", str(st.get("unit") or st.get("pid") or ""),
                  str(st.get("run") or ""), str(st.get("bundle") or "none"), str(st.get("version") or "not installed"))
    _console(stderr=as_json).print(t)
    if as_json:
        sys.stdout.write(json.dumps({"boards": rows}) + "\n")
    return 0 if all(r["ok"] for r in rows.values()) else 1


def logs_command(*, inventory: Path, board: str, run_id: str | None = None, follow: bool = False,
                 lines: int = 100) -> int:
    from testbed.remote.agents import _log_path, log_tail
    from testbed.remote.ssh import Boards, RemoteError

    inv = load_inventory(inventory)
    name = ssh_names(inv, [board])[0]
    with Boards(inv, [name]) as boards:
        if name in boards.failed:
            raise RemoteError(str(boards.failed[name].error))
        session = boards.session(name)
        if not follow:
            sys.stdout.write(boards.call(log_tail(session, run_id=run_id, lines=lines)))
            return 0
        path = boards.call(_log_path(session, run_id))

        async def follow_log() -> None:
            async with session.conn.create_process(shlex.join(["tail", "-n", str(int(lines)), "-F", path])) as proc:
                async for line in proc.stdout:
                    sys.stdout.write(line)
                    sys.stdout.flush()
        try:
            boards.call(follow_log())
        except KeyboardInterrupt:
            return 0
    return 0


def stop_command(*, inventory: Path, names: list[str] | None = None) -> int:
    from testbed.remote.agents import stop_agent
    from testbed.remote.ssh import Boards

    inv = load_inventory(inventory)
    chosen = ssh_names(inv, names)
    with Boards(inv, chosen) as boards:
        got = boards.each(stop_agent)
    console = _console()
    for name, o in got.items():
        if o.ok:
            console.print(f"[green]{name}[/]: " + ("; ".join(o.value or []) or "nothing of ours was running"))
        else:
            console.print(f"[red]{name}[/]: {o.error}")
    return 0 if all(o.ok for o in got.values()) else 1


def trust_command(*, inventory: Path, board: str, yes: bool = False) -> int:
    """Show the key ``board`` offers and pin it (re-pin it after a reflash)."""
    import asyncio

    from testbed.remote.hostkeys import KnownHosts, fingerprint
    from testbed.remote.ssh import offered_host_key

    inv = load_inventory(inventory)
    name = ssh_names(inv, [board])[0]
    b = inv.boards[name]
    assert inv.ssh is not None
    key = asyncio.run(offered_host_key(inv, b))
    known = KnownHosts(inv.ssh.known_hosts)
    old = known.keys_for(str(b.host), b.port or 22)
    fp = fingerprint(key)
    if any(k.public_data == key.public_data for k in old):
        print(f"{name}: {fp} is already pinned in {inv.ssh.known_hosts}")
        return 0
    print(f"{name} ({b.host}:{b.port or 22}) offers {key.get_algorithm()} key {fp}")
    if old:
        print(f"  it replaces the pinned {', '.join(fingerprint(k) for k in old)}")
    print("  compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the board's console")
    if not yes:
        if not sys.stdin.isatty():
            print("testbed: error: not pinned: confirm with --yes (no terminal to ask on)", file=sys.stderr)
            return 1
        if input("pin it? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not pinned")
            return 1
    known.pin(str(b.host), b.port or 22, key, comment=f"{inv.bench}/{name}")
    print(f"{name}: pinned {fp} in {inv.ssh.known_hosts}")
    return 0
