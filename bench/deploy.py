"""SSH deploy onto real OpenSSH boards (sshd in network namespaces), against plain `scp -r`.

Boards: `tests/sshboards.py`'s `SshBench` (one sshd per board, each in its own network namespace
on a veth; login as root with a per-run ed25519 client key; host keys pinned in a known_hosts
file). Every board is `env: python` with this venv's interpreter, as in tests/test_remote.py.
Each board gets a staged folder of its own: agent.json (~3 KB), shard_<board>.pt (200 KB of
random bytes) and samples.npy (~150 KB of float32), plus this project's wheel (built once
before any timing; cached by content hash).

Measured, for 1, 4 and 16 boards (--quick: 1 and 4), on fresh boards each time:
- cold: `with Boards(inventory, names)` (the connections: key exchange, host key check, login),
  then on every board at once `push_board`: one command reads what the board has, one SFTP
  session sends the wheel and the staged files, one script checks their sha256 on the board,
  unpacks the pure wheel into <workdir>/lib, writes env.json, renames the bundle folder and
  switches `current`. The timed region opens before
  the connections and closes after they are closed: connection setup is counted.
  `env_for` (hashing the cached wheel) and staging the files are done before the timer starts.
- scp: the baseline, in the same run: `scp -r -o BatchMode=yes -i KEY -o UserKnownHostsFile=PINNED
  WHEEL STAGED_DIR root@board:DIR/`, one scp process per board, all started at once; timed from
  the first start to the last exit. The (empty) target folder is made before the timer starts.
  It copies the same bytes and installs nothing. cold_ratio = cold_s / scp_s (target <= 1.2).
- warm: the same boards again with nothing changed (a second `with Boards(...)` and push_board,
  which reads the board's state in one command and stops there): time and payload bytes (target <= 1.5 s for 16 boards, 0 bytes).
- parallel_ratio = cold_s at the largest count / cold_s at 1 board (target <= 2).
Board-side work (sshd sessions, sha256sum, pip) runs on this machine's CPUs for every board at
once, unlike a bench of real boards, each with its own CPU. bash sources the login user's
~/.bashrc for every command sshd runs (non-interactive ones too): a heavy one (e.g. `pyenv init`)
is paid per command. --clean-login starts each board's sshd in a private mount namespace where
that file is empty (nothing outside the namespace changes), to measure without it.
With --reps R (default 3; --quick: 1) every count is measured R times on freshly emptied
workdirs; the rows give the medians. The 1-minute load average (os.getloadavg()) is printed
beside every figure. Root and OpenSSH's sshd needed; otherwise one line and exit code 2.

Usage: python bench/deploy.py [--quick] [--json] [--reps R] [--clean-login] [--cache DIR]
With --json the last line of stdout is
{"rows": [{"boards", "cold_s", "scp_s", "cold_ratio", "warm_s", "warm_payload_bytes", ...}],
 "parallel_ratio", "load_avg"}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sshboards import SshBench, make_client_key, sshboards_unavailable  # noqa: E402

COUNTS = (1, 4, 16)
QUICK_COUNTS = (1, 4)
SHARD_BYTES = 200 * 1024
SAMPLES_SHAPE = (150, 256)          # float32: 153,600 B of data + the .npy header
TARGETS = {"cold_ratio": 1.2, "warm_s_16": 1.5, "parallel_ratio": 2.0}


def load() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]


def default_cache_dir() -> Path:
    """As testbed.orchestrator.default_cache_dir (not imported: that pulls in torch)."""
    if os.environ.get("HBC_TESTBED_CACHE"):
        return Path(os.environ["HBC_TESTBED_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hbc-testbed"


# ---------------------------------------------------------------------------- setup (untimed)


def write_inventory(path: Path, bench: SshBench, *, key: Path, known_hosts: Path, python: str) -> Path:
    """An inventory of the bench's boards, as tests/test_remote.py writes one, except that every ssh
    board is a wearable and the edge is a `kind: sim` board on this machine (so that 1 board is a
    valid bench too; the edge is not deployed to)."""
    lines = [f"bench: deploy{bench.tag}", "broker: {mode: embedded}",
             f"ssh: {{known_hosts: {known_hosts}, key: {key}}}", "boards:"]
    for b in bench.boards:
        lines += [f"  {b.name}:", "    role: wearable", "    kind: rpi4", "    connect: ssh",
                  f"    host: {b.host}", f"    user: {b.user}", "    runtime: torch", f"    python: {python}",
                  "    env: python", f"    workdir: {b.workdir}"]
    lines += ["  hub:", "    role: edge", "    kind: sim", "links:"]
    lines += [f"  - {{from: {b.name}, to: hub, transport: mqtt, profile: ideal}}" for b in bench.boards]
    path.write_text("\n".join(lines) + "\n")
    return path


def stage_board(folder: Path, name: str, *, role: str, seed: int) -> Path:
    """A board's staged files: agent.json (a few KB), its shard (random bytes), samples.npy."""
    import numpy as np
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shard = f"shard_{name}.pt"
    (folder / shard).write_bytes(rng.bytes(SHARD_BYTES))
    np.save(folder / "samples.npy", rng.standard_normal(SAMPLES_SHAPE).astype(np.float32))
    cfg = {"board": name, "role": role, "runtime": "torch", "shard_file": shard,
           "broker": {"host": "10.0.0.1", "port": 1883, "keepalive_s": 30},
           "deadline_ms": 250, "quantize": "none", "samples_file": "samples.npy",
           "input": {"shape": [1, 256], "dtype": "float32"}, "output": {"shape": [1, 64], "dtype": "float32"},
           "links": {f"{name}-edge": {"transport": "mqtt", "profile": {
               "name": "hbc-164k", "rate_bps": 164000, "delay_ms": 2.0, "jitter_ms": 0.5, "loss": 0.0,
               "mtu": 255, "phy_overhead_bytes": 12}}},
           "topics": {"data": f"tb/bench/data/{name}", "control": f"tb/bench/control/{name}",
                      "status": f"tb/bench/status/{name}"},
           "sha256": {shard: "0" * 64, "samples.npy": "0" * 64},
           "notes": ["synthetic agent config of realistic size for bench/deploy.py"] * 30}
    (folder / "agent.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


def local_board_python(python: str):
    """The BoardPython of `python`, probed here as doctor probes a board (the boards are this machine)."""
    from testbed.remote.boardpython import PROBE_SCRIPT, BoardPython
    done = subprocess.run([python, "-c", PROBE_SCRIPT], capture_output=True, text=True, check=True, timeout=60)
    return BoardPython.from_probe_output(done.stdout)


def hide_login_rc(root: Path, user: str = "root") -> Path | None:
    """--clean-login: every board's sshd is started in a private mount namespace where the login
    user's ~/.bashrc is an empty file (bash sources ~/.bashrc for every command sshd runs, also
    non-interactive ones). Nothing outside that namespace changes. Returns the rc file hidden."""
    import pwd

    import sshboards
    rc = Path(pwd.getpwnam(user).pw_dir) / ".bashrc"
    if not rc.is_file():
        return None
    empty = root / "empty.bashrc"
    empty.write_text("")
    plain = sshboards.sshd_argv

    def wrapped(ns: str, *, config: Path, log: Path) -> list[str]:
        # `exec` keeps the pid: the Popen's pid is still sshd's, as SshBoard expects
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sshd-clean-login", str(empty), str(rc),
                *plain(ns, config=config, log=log)]
    sshboards.sshd_argv = wrapped
    return rc


def empty_workdirs(bench: SshBench) -> None:
    for b in bench.boards:
        for child in b.workdir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


# ---------------------------------------------------------------------------- timed parts


def time_scp(bench: SshBench, *, key: Path, known_hosts: Path, wheel: Path, staged: dict[str, Path],
             rep: int) -> tuple[float, int]:
    """Plain OpenSSH scp of the wheel and the staged folder to every board at once: (seconds, bytes)."""
    jobs = []
    for b in bench.boards:
        target = b.workdir.parent / f"scp{rep}"
        target.mkdir()                      # empty; shared filesystem, made before the timer
        argv = ["scp", "-q", "-r", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-i", str(key), "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", str(wheel), str(staged[b.name]), f"{b.user}@{b.host}:{target}/"]
        jobs.append((b, target, argv))
    t0 = time.perf_counter()
    procs = [(b, target, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)) for b, target, argv in jobs]
    outs = [(b, target, p, p.communicate(timeout=300)) for b, target, p in procs]
    elapsed = time.perf_counter() - t0
    total = 0
    for b, target, p, (_out, err) in outs:
        if p.returncode != 0:
            raise SystemExit(f"scp to {b.name} failed ({p.returncode}): {err.strip()[-400:]}")
        want = [target / wheel.name, *(target / staged[b.name].name / f.name for f in staged[b.name].iterdir())]
        for path in want:
            if not path.is_file():
                raise SystemExit(f"scp to {b.name}: {path} missing after the copy")
        total += sum(p.stat().st_size for p in want)
    return elapsed, total


def time_deploy(inv, names: list[str], envs: dict, staged: dict[str, Path]) -> dict:
    """One deploy with the project's remote code, connections included: seconds, payload bytes,
    and where the time went (connect; the slowest board's env and bundle pushes; closing)."""
    from testbed.remote.deploy import BoardBundle, push_board
    from testbed.remote.ssh import Boards

    async def one(s):
        t0 = time.perf_counter()
        env, bundle = await push_board(s, env=envs[s.board.name],
                                       bundle=BoardBundle.from_dir(s.board.name, staged[s.board.name]))
        return env, bundle, time.perf_counter() - t0, 0.0

    t0 = time.perf_counter()
    with Boards(inv, names) as boards:
        t_conn = time.perf_counter()
        if boards.failed:
            raise SystemExit("; ".join(o.error or "" for o in boards.failed.values()))
        res = boards.each(one)
        t_work = time.perf_counter()
    elapsed = time.perf_counter() - t0
    bad = [o.error for o in res.values() if not o.ok]
    if bad:
        raise SystemExit("deploy failed: " + "; ".join(str(e) for e in bad))
    vals = [o.value for o in res.values()]
    return {"s": elapsed, "bytes": sum(e.bytes + b.bytes for e, b, _, _ in vals),
            "files": sum(len(e.files) + len(b.files) for e, b, _, _ in vals),
            "connect_s": t_conn - t0, "push_s": max(v[2] for v in vals),
            "close_s": t0 + elapsed - t_work}


def check_deployed(bench: SshBench, staged: dict[str, Path]) -> None:
    for b in bench.boards:
        cur = (b.workdir / "current").resolve()
        for f in staged[b.name].iterdir():
            if (cur / f.name).read_bytes() != f.read_bytes():
                raise SystemExit(f"{b.name}: {f.name} on the board differs from the staged file")
        if not (b.workdir / "lib" / "testbed" / "__init__.py").is_file():
            raise SystemExit(f"{b.name}: the project wheel is not installed in {b.workdir / 'lib'}")


# ---------------------------------------------------------------------------- main


def fmt_load(la) -> str:
    return f"load {la[0]:.2f}"


def measure_count(n: int, *, reps: int, root: Path, key: Path, wheel: Path, python: str, board_python,
                  cache_dir: Path) -> dict:
    from testbed.config.inventory import load_inventory
    from testbed.remote.rollout import env_for

    names = [f"b{i:02d}" for i in range(n)]
    with SshBench(root=root / f"n{n}", names=names, client_key=key) as bench:
        known = root / f"n{n}" / "known_hosts"
        known.write_text(bench.known_hosts_text())
        inv = load_inventory(write_inventory(root / f"n{n}" / "inventory.yaml", bench, key=key, known_hosts=known,
                                             python=python))
        staged = {b.name: stage_board(root / f"n{n}" / "staged" / b.name, b.name,
                                      role=inv.boards[b.name].role, seed=1000 * n + i)
                  for i, b in enumerate(bench.boards)}
        envs = {name: env_for(inv.boards[name], board_python, cache_dir=cache_dir) for name in names}
        reps_out = []
        for rep in range(reps):
            if rep:
                empty_workdirs(bench)
            scp_s, scp_bytes = time_scp(bench, key=key, known_hosts=known, wheel=wheel, staged=staged, rep=rep)
            scp_load = load()
            cold = time_deploy(inv, names, envs, staged)
            cold_load = load()
            check_deployed(bench, staged)
            warm = time_deploy(inv, names, envs, staged)
            warm_load = load()
            r = {"scp_s": scp_s, "scp_bytes": scp_bytes, "scp_load": scp_load, "cold": cold, "cold_load": cold_load,
                 "warm": warm, "warm_load": warm_load}
            reps_out.append(r)
            print(f"  {n:>2} board(s) rep {rep + 1}/{reps}: cold {cold['s']:.3f} s ({fmt_load(cold_load)}), "
                  f"scp {scp_s:.3f} s ({fmt_load(scp_load)}), warm {warm['s']:.3f} s "
                  f"{warm['bytes']} B ({fmt_load(warm_load)})", flush=True)
    med = statistics.median
    cold_s = med([r["cold"]["s"] for r in reps_out])
    scp_s = med([r["scp_s"] for r in reps_out])
    warm_s = med([r["warm"]["s"] for r in reps_out])
    return {"boards": n, "cold_s": round(cold_s, 3), "scp_s": round(scp_s, 3),
            "cold_ratio": round(cold_s / scp_s, 2), "warm_s": round(warm_s, 3),
            "warm_payload_bytes": max(r["warm"]["bytes"] for r in reps_out),
            "cold_payload_bytes": reps_out[0]["cold"]["bytes"], "scp_bytes": reps_out[0]["scp_bytes"],
            "cold_connect_s": round(med([r["cold"]["connect_s"] for r in reps_out]), 3),
            "cold_push_s": round(med([r["cold"]["push_s"] for r in reps_out]), 3),
            "cold_close_s": round(med([r["cold"]["close_s"] for r in reps_out]), 3),
            "warm_connect_s": round(med([r["warm"]["connect_s"] for r in reps_out]), 3),
            "warm_push_s": round(med([r["warm"]["push_s"] for r in reps_out]), 3),
            "warm_close_s": round(med([r["warm"]["close_s"] for r in reps_out]), 3),
            "reps": reps, "cold_s_all": [round(r["cold"]["s"], 3) for r in reps_out],
            "scp_s_all": [round(r["scp_s"], 3) for r in reps_out],
            "warm_s_all": [round(r["warm"]["s"], 3) for r in reps_out],
            "load_cold": [r["cold_load"][0] for r in reps_out], "load_scp": [r["scp_load"][0] for r in reps_out],
            "load_warm": [r["warm_load"][0] for r in reps_out], "load_avg": list(load())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 and 4 boards, one repetition (within 60 s)")
    ap.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per board count (default 3; --quick: 1)")
    ap.add_argument("--clean-login", action="store_true",
                    help="boards' sshd sees an empty ~/.bashrc (private mount namespace); see the docstring")
    ap.add_argument("--cache", type=Path, default=None, help="wheel cache (default $HBC_TESTBED_CACHE or "
                                                               "~/.cache/hbc-testbed)")
    args = ap.parse_args(argv)
    why = sshboards_unavailable()
    if why is None and shutil.which("scp") is None:
        why = "the scp baseline needs OpenSSH's scp (apt-get install openssh-client)"
    if why:
        print(f"skipped: {why}")
        return 2
    counts = QUICK_COUNTS if args.quick else COUNTS
    reps = args.reps or (1 if args.quick else 3)
    cache_dir = args.cache or default_cache_dir()
    python = sys.executable

    from testbed.remote.wheelhouse import project_wheel
    started = time.perf_counter()
    wheel = project_wheel(cache_dir=cache_dir)          # built (or found cached) before any timing
    board_python = local_board_python(python)
    root = Path(tempfile.mkdtemp(prefix="hbc-deploy-bench-"))
    rows = []
    try:
        key = make_client_key(root / "client").private
        hidden = hide_login_rc(root) if args.clean_login else None
        if args.clean_login:
            print(f"--clean-login: boards' sshd sees {hidden or 'no ~/.bashrc'} as an empty file", flush=True)
        print(f"ssh deploy bench: boards {list(counts)}, {reps} rep(s) each (median), env: python ({python}), "
              f"wheel {wheel.name} {wheel.stat().st_size} B; {fmt_load(load())} on {os.cpu_count()} CPU(s)", flush=True)
        for n in counts:
            rows.append(measure_count(n, reps=reps, root=root, key=key, wheel=wheel, python=python,
                                      board_python=board_python, cache_dir=cache_dir))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    first, last = rows[0], rows[-1]
    parallel_ratio = round(last["cold_s"] / first["cold_s"], 2)
    # the same ratio for scp: what the machine's shared CPUs allow (every board's sshd runs here)
    scp_parallel_ratio = round(last["scp_s"] / first["scp_s"], 2)
    print()
    print("cold = with Boards(...) (connections counted) + push_board (state, one SFTP session, one finishing script);")
    print("scp = scp -r of the wheel and the staged folder, one process per board, all at once; medians of reps")
    for r in rows:
        ok = "ok" if r["cold_ratio"] <= TARGETS["cold_ratio"] else "MISSED"
        print(f"{r['boards']:>2} boards  cold {r['cold_s']:7.3f} s {r['cold_payload_bytes']:>9} B  "
              f"[connect {r['cold_connect_s']:.3f}, push {r['cold_push_s']:.3f}, "
              f"close {r['cold_close_s']:.3f}]  "
              f"| baseline scp {r['scp_s']:7.3f} s {r['scp_bytes']:>9} B | ratio {r['cold_ratio']:6.2f} "
              f"(target <= {TARGETS['cold_ratio']}: {ok}) | load {r['load_cold']} (scp {r['load_scp']})")
    for r in rows:
        target = f"<= {TARGETS['warm_s_16']} s for 16 boards, 0 B"
        ok = "ok" if r["warm_payload_bytes"] == 0 and (r["boards"] != 16 or r["warm_s"] <= TARGETS["warm_s_16"]) \
            else "MISSED"
        print(f"{r['boards']:>2} boards  warm {r['warm_s']:7.3f} s {r['warm_payload_bytes']:>9} B  "
              f"[connect {r['warm_connect_s']:.3f}, push {r['warm_push_s']:.3f}, "
              f"close {r['warm_close_s']:.3f}] | baseline cold {r['cold_s']:7.3f} s | ratio "
              f"{r['warm_s'] / r['cold_s']:6.2f} (target {target}: {ok}) | load {r['load_warm']}")
    la = load()
    ok = "ok" if parallel_ratio <= TARGETS["parallel_ratio"] else "MISSED"
    print(f"parallel  cold {last['cold_s']:.3f} s at {last['boards']} boards | baseline cold {first['cold_s']:.3f} s "
          f"at 1 board | ratio {parallel_ratio:.2f} (target <= {TARGETS['parallel_ratio']}: {ok}) | "
          f"load {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    print(f"parallel  scp  {last['scp_s']:.3f} s at {last['boards']} boards | baseline scp {first['scp_s']:.3f} s "
          f"at 1 board | ratio {scp_parallel_ratio:.2f} (every board's sshd shares this machine's "
          f"{os.cpu_count()} cores)")
    print(f"took {time.perf_counter() - started:.1f} s")
    if args.json:
        print(json.dumps({"rows": rows, "parallel_ratio": parallel_ratio, "scp_parallel_ratio": scp_parallel_ratio,
                          "load_avg": list(la),
                          "clean_login": bool(args.clean_login),
                          "cpus": os.cpu_count(), "reps": reps, "wheel_bytes": wheel.stat().st_size,
                          "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
