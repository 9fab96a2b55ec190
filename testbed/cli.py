"""The ``testbed`` command line: argument parsing and wiring, nothing else.

Commands: ``inventory check``, ``run``, ``demo``, ``partition``, ``profile``, ``link``, ``monitor --replay``,
``sweep`` (testbed.sweepcmd), ``report`` and ``compare`` (testbed.reportcmd), ``keygen`` and ``verify``
(testbed.signcmd), and for ssh boards ``doctor``, ``deploy``, ``status``, ``logs``, ``stop``, ``trust``. Errors a user can fix
(bad YAML, missing dataset, agents that never come up) are printed on one line without a
traceback and give a non-zero exit: 2 for configuration and input errors, 1 for run failures.

Long work talks: training, partitioning and exporting (in ``run``, ``demo`` and ``partition``,
with or without ``--json``) report progress on stderr, as a bar when stderr is a terminal and
as plain lines otherwise (phase, step/total, elapsed; at most one line every few seconds per
phase, plus its start and its end). With ``--json``, stdout carries only the JSON line, last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from linkemu.errors import HarnessError
from testbed.errors import ConfigError

DEMO_DIR = Path(__file__).resolve().parent / "demo"


def _console(*, stderr: bool) -> Any:
    import os

    from rich.console import Console
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=200)  # logs and pipes: no truncated tables
    return console


def cmd_inventory_check(args: argparse.Namespace) -> int:
    from testbed.config import load_inventory
    from testbed.inventory_view import inventory_tables

    inv = load_inventory(args.file)
    console = _console(stderr=False)
    console.print(f"[bold]{inv.path}[/]: bench [cyan]{inv.bench}[/], broker {inv.broker.mode}"
                  + (f" {inv.broker.host}:{inv.broker.port}" if inv.broker.host else "")
                  + f", {len(inv.boards)} boards, {len(inv.links)} links: OK")
    for table in inventory_tables(inv):
        console.print(table)
    return 0


PLAIN_EVERY_S = 5.0   # plain progress lines: at most one per phase in this many seconds (plus start and end)


class _Progress:
    """Progress of long work on stderr, as a context manager yielding the callback
    ``(phase, step, total, loss=None)``: a transient rich bar when stderr is a terminal, else
    plain lines. It writes to a duplicate of stderr taken on entry, so it still reaches the
    terminal while a bundle build sends fd 2 to its log (testbed.partition.build)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.stream: IO[str] = sys.stderr
        self._own = False
        self._bar: Any = None
        self._task: Any = None
        self._phase = ""
        self._phase_t0 = 0.0
        self._last = 0.0

    def __enter__(self) -> _Progress:
        try:
            self.stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8",
                                    errors="replace")
            self._own = True
        except (AttributeError, OSError, ValueError):   # stderr without a descriptor (captured)
            self.stream = sys.stderr
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(file=self.stream, highlight=False), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("preparing", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        if self._own:
            self.stream.close()

    def __call__(self, phase: str, step: int, total: int, loss: float | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, total=total or None, description=phase)
            return
        now = time.monotonic()
        if phase != self._phase:
            self._phase, self._phase_t0, self._last = phase, now, 0.0
        done = total > 0 and step >= total
        if not (done or step == 0 or now - self._last >= PLAIN_EVERY_S):
            return
        self._last = now
        took = now - self._phase_t0
        if step == 0:
            text = phase if total <= 1 else f"{phase}: {total} steps"
        elif done:
            text = f"{phase} done in {took:.1f} s" if total <= 1 else \
                f"{phase} done: {total} steps in {took:.1f} s" + self._loss(loss)
        else:
            left = took / step * (total - step)
            text = (f"{phase}: {step}/{total} ({100 * step / total:.0f} %)" + self._loss(loss)
                    + f", about {left:.0f} s left")
        self.stream.write(f"[{now - self.t0:6.0f} s] {text}\n")
        self.stream.flush()

    def say(self, line: str) -> None:
        """One line for the user, on the same stream (above the bar when there is one)."""
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    @staticmethod
    def _loss(loss: float | None) -> str:
        return "" if loss is None or math.isnan(loss) else f", loss {loss:.4f}"


def _load_run(inventory_path: Path, experiment_path: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    """The inventory and the experiment of ``testbed run`` / ``demo``, with the flags' overrides."""
    from testbed.config import load_experiment, load_inventory, with_overrides

    inv = load_inventory(inventory_path, **_set_overrides(args.set_inventory, flag="--set-inventory"))
    exp = load_experiment(experiment_path, **_set_overrides(args.set, flag="--set"))
    overrides, sources = _overrides(args)
    if overrides:
        exp = with_overrides(exp, **overrides, sources=sources)
    return inv, exp


def _set_overrides(items: list[str] | None, *, flag: str) -> dict[str, Any]:
    """``--set KEY=VALUE`` flags as the loaders' ``overrides`` and ``sources`` (an invalid value
    names the flag and the key)."""
    from testbed.config.overlay import parse_assignment

    pairs = [parse_assignment(item, flag=flag) for item in items or ()]
    if not pairs:
        return {}
    return {"overrides": dict(pairs), "sources": {key: flag for key, _ in pairs}}


def _run(inventory_path: Path, experiment_path: Path, args: argparse.Namespace) -> int:
    inv, exp = _load_run(inventory_path, experiment_path, args)
    return run_loaded(inv, exp, args)


def run_loaded(inv: Any, exp: Any, args: argparse.Namespace) -> int:
    """Run an already loaded (and overridden) experiment on an already loaded inventory, with
    ``args``'s run options (headless, json, cache, bundle, threads): prepare the bundle, run,
    print the summary (and the JSON line last on stdout)."""
    from testbed.config import check_compatible
    from testbed.orchestrator import (Orchestrator, check_runnable, default_cache_dir, new_run_id, prepare_bundle,
                                      require_bundle, run_log)

    check_compatible(exp, inv)
    check_runnable(inv)
    trusted = [Path(p) for p in getattr(args, "require_signed", None) or ()]
    require_bundle(trusted, Path(args.bundle) if args.bundle else None)   # before a run directory is made
    console = _console(stderr=args.json)
    cache = Path(args.cache) if args.cache else default_cache_dir()
    bundle = Path(args.bundle) if args.bundle else None
    if getattr(args, "prepare_only", False):   # the bundle only: no boards, no run directory
        with _Progress() as progress:
            prepared = prepare_bundle(exp, cache_dir=cache, progress=progress, inventory=inv, bundle_dir=bundle,
                                      threads=args.threads, say=progress.say, trusted=trusted)
        return _print_prepared(prepared, console=console, as_json=args.json)
    run_dir = Path(exp.run.output) / f"{new_run_id()}-{exp.name}"
    with run_log(run_dir) as log:
        log.line(f"testbed run {exp.path} on {inv.path} ({exp.name}), cache {cache}")
        if not args.json:
            what = f"{exp.partition.method} partition" if exp.partition is not None else "jointly trained"
            console.print(f"model: {exp.students} students ({what}) on {exp.dataset.name} (cache {cache})")
        with _Progress() as progress:
            def say(line: str) -> None:
                log.line(line)
                progress.say(line)
            prepared = prepare_bundle(exp, cache_dir=cache, progress=progress, inventory=inv, bundle_dir=bundle,
                                      threads=args.threads, say=say, trusted=trusted)
        log.add_build_log(prepared.build_log)
        if prepared.signer is not None:
            console.print(f"bundle: signed by {prepared.signer.describe()}, trusted by "
                          f"{prepared.signer.trusted_file}", markup=False)
            log.line(f"bundle {prepared.bundle_dir}: signed by {prepared.signer.describe()}, trusted by "
                     f"{prepared.signer.trusted_file}")
        tr = prepared.training
        how = ("loaded from cache" if tr.get("cached") else
               f"trained in {tr['train_seconds']} s" if tr.get("train_seconds") is not None else "built")
        if args.bundle:
            how = f"bundle {args.bundle} ({prepared.manifest.get('method')})"
        threads = (prepared.manifest.get("numerics") or {}).get("threads")
        console.print(f"model: {how}, offline test accuracy {tr['test_accuracy']:.4f}"
                      + (f" (torch threads {threads})" if threads else ""))
        log.line(f"bundle {prepared.bundle_dir}: {how}, offline test accuracy {tr['test_accuracy']:.4f}")
        orch = Orchestrator(inventory=inv, experiment=exp, prepared=prepared, run_dir=run_dir, cache_dir=cache)
        try:
            if args.headless:
                summary = orch.run()
            else:
                from testbed.dashboard import LiveDashboard
                with LiveDashboard(orch.state, console=console):
                    summary = orch.run()
        except KeyboardInterrupt:   # the run stopped its boards and wrote its summary: say where, then exit 130
            _print_stopped(console, orch, args)
            raise
    if orch.state.broker.get("fallback_reason"):
        console.print(f"[yellow]broker: {orch.state.broker.get('kind')} instead of mosquitto: "
                      f"{orch.state.broker['fallback_reason']}[/]")
    summary["model"] = {"test_accuracy": tr["test_accuracy"], "cached": bool(tr.get("cached")),
                        "train_seconds": tr.get("train_seconds"), "threads": threads}
    _print_summary(console, summary)
    if args.json:
        sys.stdout.write(json.dumps(summary, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    return 0


def _print_prepared(prepared: Any, *, console: Any, as_json: bool) -> int:
    """--prepare-only: the bundle the run would deploy, built or loaded, and nothing run."""
    tr = prepared.training
    console.print(f"bundle {prepared.bundle_dir}: {'loaded from the cache' if tr.get('cached') else 'built'}, "
                  f"offline test accuracy {tr['test_accuracy']:.4f}", markup=False)
    if as_json:
        doc = {"bundle_dir": str(prepared.bundle_dir), "cached": bool(tr.get("cached")),
               "test_accuracy": tr["test_accuracy"], "method": prepared.manifest.get("method")}
        sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    return 0


def _print_stopped(console: Any, orch: Any, args: argparse.Namespace) -> None:
    """After Ctrl-C: the run's summary (interrupted, with what was triggered and resolved), its
    directory, and with --json the summary's JSON line, as a finished run prints them."""
    path = orch.run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = orch.state.summary()   # interrupted before the summary was written
    _print_summary(console, summary)
    if args.json:
        sys.stdout.write(json.dumps(summary, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def _print_summary(console: Any, s: dict[str, Any]) -> None:
    from testbed.runstate import drop_causes

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    lat = s["latency_ms"]
    if s.get("stopped"):
        console.print(f"[bold red]{s['stopped']['state']}[/] ({s['stopped']['reason']}): {s['triggered']} of "
                      f"{s['samples']} samples triggered, {s['unresolved']} unresolved")
    console.print(
        f"[bold]{s['samples']} samples[/]: {s['complete']} complete, {s['partial']} partial, "
        f"{s['timed_out']} timed out | accuracy {pct(s['accuracy'])} (all parts {pct(s['accuracy_all_parts'])}, "
        f"partial {pct(s['accuracy_partial'])}, during outage {pct(s['accuracy_during_outage'])} "
        f"of {s['samples_during_outage']}) | latency p50 {lat['p50']} ms, p95 {lat['p95']} ms")
    for lk in s["links"]:
        causes = drop_causes(lk)
        console.print(f"  link {lk['name']}: {lk['bytes']} B delivered in {lk['frames']} frames, "
                      f"{lk['dropped']} dropped" + (f" ({causes})" if causes else ""))
    console.print(f"run directory: [bold]{s['run_dir']}[/]")


def _overrides(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The experiment overrides the flags ask for, and the flag each overridden key came from
    (so an invalid value names the flag the user gave)."""
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for flag, attr, key in (("--samples", "samples", "samples"), ("--rate", "rate", "rate_hz"),
                            ("--output", "output", "output")):
        if getattr(args, attr) is not None:
            out[key] = getattr(args, attr)
            sources[f"run.{key}"] = flag
    if args.no_faults:
        out["faults"] = ()
        sources["faults"] = "--no-faults"
    train: dict[str, Any] = {}
    if getattr(args, "dataset", None):
        out["dataset"] = args.dataset
        sources["dataset"] = "--dataset"
        if args.dataset == "digits" and args.epochs is None:
            train["epochs"] = 20  # 1,347 training images: more passes, still seconds
            sources["train"] = "--dataset"
    if args.epochs is not None:
        train["epochs"] = args.epochs
        sources["train"] = "--epochs"
    if train:
        out["train"] = train
    return out, sources


def cmd_run(args: argparse.Namespace) -> int:
    return _run(Path(args.inventory), Path(args.experiment), args)


def cmd_demo(args: argparse.Namespace) -> int:
    return _run(DEMO_DIR / "inventory.yaml", DEMO_DIR / "experiment.yaml", args)


def cmd_monitor(args: argparse.Namespace) -> int:
    from testbed.dashboard import replay

    path = Path(args.replay)
    if path.is_dir():
        path = path / "events.jsonl"
    if not path.is_file():
        raise ConfigError("no such events file; expected a run directory or its events.jsonl",
                          file=f"--replay {path}")
    from testbed.runstate import read_events
    if not any(ev.get("type") == "run_start" for ev in read_events(path)):
        raise ConfigError("not a run's event log (no run_start event); expected a run directory or its events.jsonl",
                          file=f"--replay {path}")
    st = replay(path, console=_console(stderr=False), speed=args.speed)
    if args.json:
        sys.stdout.write(json.dumps(st.summary(), separators=(",", ":")) + "\n")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from rich.table import Table

    from testbed.profiler import LINK_PRESETS, fashion_input, parse_shape, profile_model
    from testbed.zoo import ZOO

    if args.model not in ZOO:
        raise ConfigError(f"unknown model {args.model!r}; expected one of {', '.join(sorted(ZOO))}", file="MODEL")
    try:
        shape = parse_shape(args.input)
    except ValueError as exc:
        raise ConfigError(str(exc), file="--input") from None
    real = None
    if not args.no_real and shape[1] * shape[2] <= 1024 * 1024:
        real = fashion_input(shape)
    rows = profile_model(args.model, input_shape=shape, real_input=real)
    console = _console(stderr=args.json)
    table = Table(title=f"{args.model} at {'x'.join(map(str, shape))}: activation sizes and f32 airtime"
                  + ("" if real is not None else " (no real input: compression not measured)"))
    for col in ("#", "layer", "kind", "shape", "values", "f32 B", "f16 B", "int8 B", "zstd f32", "zstd int8",
                *(p.replace("hbc-", "") for p in LINK_PRESETS)):
        table.add_column(col, justify="left" if col in ("layer", "kind", "shape") else "right", no_wrap=True)

    def b(n: int | None) -> str:
        return "–" if n is None else f"{n:,}"

    def t(sec: float) -> str:
        return f"{sec * 1000:.3g}ms" if sec < 1 else f"{sec:.3g}s"

    for r in rows:
        table.add_row(str(r.index), r.name, r.kind, "x".join(map(str, r.shape)), f"{r.values:,}", b(r.bytes_f32),
                      b(r.bytes_f16), b(r.bytes_int8), b(r.zstd_f32), b(r.zstd_int8),
                      *(t(r.airtime_s[p]) for p in LINK_PRESETS))
    console.print(table)
    if real is not None:
        console.print("compression: zstd level 3 on one Fashion-MNIST test image resized to the input, through "
                      "randomly initialised weights (seed 0); trained weights compress differently")
    if args.json:
        doc = {"model": args.model, "input": list(shape), "real_input": real is not None,
               "layers": [r.as_dict() for r in rows]}
        sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from testbed.config import load_experiment, load_inventory
    from testbed.orchestrator import default_cache_dir
    from testbed.partition.build import default_out_dir
    from testbed.partition.report import render_bundle
    from testbed.training import configure_numerics

    exp = load_experiment(args.experiment)
    if exp.partition is None:
        raise ConfigError("no partition section; expected partition: with method nonn | resilient | layer",
                          file=str(exp.path), key="partition")
    inv = load_inventory(args.inventory) if args.inventory else None
    if inv is None and exp.partition.method == "layer" and Path("inventory.yaml").exists():
        inv = load_inventory("inventory.yaml")
    cache = Path(args.cache) if args.cache else default_cache_dir()
    out = Path(args.out) if args.out else default_out_dir(exp, compare=args.compare)
    key = None
    if args.sign:   # before any work: a wrong path, a public key, a key others can read are refused now
        from testbed.signing import load_private_key
        key = load_private_key(Path(args.sign))
    configure_numerics(threads=args.threads)
    console = _console(stderr=args.json)
    with _Progress() as progress:
        if args.compare:
            from testbed.partition.build import compare
            doc = compare(exp, out_dir=out, cache_dir=cache, progress=progress, force=args.force, sign=key)
        else:
            from testbed.partition.build import write_bundle
            built = write_bundle(exp, out_dir=out, cache_dir=cache, inventory=inv, progress=progress,
                                 force=args.force, sign=key)
    signed = [f"signed by {key.fingerprint} ({key.path}): manifest.sig"] if key is not None else []
    if args.compare:
        for line in [*doc.pop("text"), *doc.pop("notes"), *signed]:
            console.print(line, markup=False)
    else:
        m = built.manifest
        doc = {"bundle": str(built.bundle_dir), "method": m["method"], "seconds": built.seconds,
               "bundle_key": m.get("bundle_key"), "numerics": m.get("numerics"), "evaluation": m.get("evaluation", {})}
        for line in [*render_bundle(m, bundle_dir=built.bundle_dir), *built.notes, *signed]:
            console.print(line, markup=False, soft_wrap=True)
    if key is not None:
        doc["signed_by"] = key.fingerprint
    if args.json:
        sys.stdout.write(json.dumps(doc, separators=(",", ":"), default=str) + "\n")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    from testbed.linkcmd import link_command

    return link_command(args.action, inventory_path=Path(args.inventory), dry_run=args.dry_run, link=args.link,
                        backend=args.backend)


def cmd_doctor(args: argparse.Namespace) -> int:
    from testbed.benchcmd import doctor_command
    return doctor_command(inventory=Path(args.inventory), names=args.board, as_json=args.json,
                          cache=Path(args.cache) if args.cache else None)


def cmd_deploy(args: argparse.Namespace) -> int:
    from testbed.benchcmd import deploy_command
    return deploy_command(inventory=Path(args.inventory), names=args.board,
                          experiment=Path(args.experiment) if args.experiment else None,
                          bundle=Path(args.bundle) if args.bundle else None,
                          cache=Path(args.cache) if args.cache else None, as_json=args.json,
                          require_signed=[Path(p) for p in args.require_signed or ()])


def cmd_status(args: argparse.Namespace) -> int:
    from testbed.benchcmd import status_command
    return status_command(inventory=Path(args.inventory), names=args.board, as_json=args.json)


def cmd_logs(args: argparse.Namespace) -> int:
    from testbed.benchcmd import logs_command
    return logs_command(inventory=Path(args.inventory), board=args.board, run_id=args.run, follow=args.follow,
                        lines=args.lines)


def cmd_stop(args: argparse.Namespace) -> int:
    from testbed.benchcmd import stop_command
    return stop_command(inventory=Path(args.inventory), names=args.board)


def cmd_trust(args: argparse.Namespace) -> int:
    from testbed.benchcmd import trust_command
    return trust_command(inventory=Path(args.inventory), board=args.board, yes=args.yes)


def _add_bench_commands(sub: Any) -> None:
    """doctor, deploy, status, logs, stop, trust: the commands for ssh boards."""
    def cmd(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--inventory", default="inventory.yaml")
        p.set_defaults(func=func)
        return p
    p = cmd("doctor", "preflight every ssh board (changes nothing on them)", cmd_doctor)
    p.add_argument("--board", action="append", help="only this board (repeatable)")
    p.add_argument("--cache", help="where each board group's wheelhouse is built and cached (default "
                                   "$HBC_TESTBED_CACHE or ~/.cache/hbc-testbed)")
    p.add_argument("--json", action="store_true", help="print one JSON object last on stdout")
    p = cmd("deploy", "put each ssh board's environment and files on it (only what changed)", cmd_deploy)
    p.add_argument("experiment", nargs="?", help="the experiment (optional with --bundle: the bundle carries the "
                                                 "one it was built from)")
    p.add_argument("--bundle", help="deploy this bundle directory (from `testbed partition`) instead of building one")
    _add_require_signed(p)
    p.add_argument("--board", action="append", help="only this board (repeatable)")
    p.add_argument("--cache", help="model and wheelhouse cache (default $HBC_TESTBED_CACHE or ~/.cache/hbc-testbed)")
    p.add_argument("--json", action="store_true", help="print one JSON object last on stdout")
    p = cmd("status", "what runs on each ssh board: agent, run, bundle, version", cmd_status)
    p.add_argument("board", nargs="*")
    p.add_argument("--json", action="store_true", help="print one JSON object last on stdout")
    p = cmd("logs", "a board's agent log", cmd_logs)
    p.add_argument("board")
    p.add_argument("--run", help="the log of this run id (default: the latest run)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    p.add_argument("--lines", "-n", type=int, default=100)
    p = cmd("stop", "stop our agents and clear our tc/nft on the boards", cmd_stop)
    p.add_argument("board", nargs="*")
    p = cmd("trust", "pin (or re-pin) a board's SSH host key in the bench's known_hosts", cmd_trust)
    p.add_argument("board")
    p.add_argument("--yes", action="store_true", help="pin without asking")


def _add_run_options(p: argparse.ArgumentParser, *, demo: bool) -> None:
    p.add_argument("--headless", action="store_true", help="no live dashboard")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line last on stdout")
    p.add_argument("--samples", type=int, help="override run.samples")
    p.add_argument("--rate", type=float, help="override run.rate_hz")
    p.add_argument("--output", help="override run.output (folder for run directories)")
    p.add_argument("--no-faults", action="store_true", help="drop the experiment's fault schedule")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--cache", help="model cache folder (default $HBC_TESTBED_CACHE or ~/.cache/hbc-testbed)")
    p.add_argument("--bundle", help="deploy this bundle directory (from `testbed partition`) instead of building one")
    _add_require_signed(p)
    _add_threads_option(p)
    p.add_argument("--prepare-only", action="store_true",
                   help="build (or load from the cache) the bundle this run would deploy, then stop: no boards, "
                        "no run directory (with --json: its folder as JSON)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set an experiment key (dotted, e.g. run.deadline_ms=200 or partition.method=nonn; the value "
                        "is YAML), checked by the file's rules; repeatable")
    p.add_argument("--set-inventory", action="append", metavar="KEY=VALUE",
                   help="set an inventory key, e.g. links.*.profile.rate_bps=164000 (links by name or * for every "
                        "link); repeatable")
    if demo:
        p.add_argument("--dataset", choices=("fashion-mnist", "digits"), help="override the demo's dataset")


def _add_require_signed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--require-signed", action="append", metavar="PUBKEY",
                   help="refuse the --bundle unless it is signed by a key in this public key file (KEY.pub, or a "
                        "list of keys one a line), checked before anything of the bundle is read; repeatable")


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 1, got {text!r}")
    return n


def _add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads, default=None, metavar="N",
                   help="torch threads for training and evaluation (default 1, on every machine: another count "
                        "adds in another order and trains other weights, cached under their own key)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testbed", description="Distributed NN inference over emulated "
                                     "human body communication links, on a bench of boards.")
    sub = parser.add_subparsers(dest="command", required=True)
    inv = sub.add_parser("inventory", help="inspect an inventory file")
    inv_sub = inv.add_subparsers(dest="inventory_command", required=True)
    chk = inv_sub.add_parser("check", help="validate inventory.yaml and print its boards and links")
    chk.add_argument("file", nargs="?", default="inventory.yaml")
    chk.set_defaults(func=cmd_inventory_check)
    run = sub.add_parser("run", help="run an experiment on the inventory's boards")
    run.add_argument("experiment")
    run.add_argument("--inventory", default="inventory.yaml")
    _add_run_options(run, demo=False)
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="the whole pipeline on simulated boards on this machine")
    _add_run_options(demo, demo=True)
    demo.set_defaults(func=cmd_demo)
    part = sub.add_parser("partition", help="partition a teacher into shards (nonn | resilient | layer) and write "
                                            "a bundle")
    part.add_argument("experiment", help="experiment YAML with a partition section")
    part.add_argument("--compare", action="store_true",
                      help="NoNN and the resilient method on the same teacher and seed, with a resilience "
                           "table and plot")
    part.add_argument("--out", help="bundle directory (default bundles/<experiment name>; --compare: default "
                                    "bundles/<experiment name>-compare, one bundle per method inside it); a new "
                                    "or empty folder, else refused")
    part.add_argument("--force", action="store_true",
                      help="replace an earlier output of testbed partition in the folder (only the files it "
                           "wrote; anything else there is kept)")
    part.add_argument("--inventory", help="inventory.yaml (the layer split reads link rate and board kinds)")
    part.add_argument("--cache", help="model cache folder (default $HBC_TESTBED_CACHE or ~/.cache/hbc-testbed)")
    part.add_argument("--sign", metavar="KEY",
                      help="sign the bundle (with --compare: each method's) with this Ed25519 private key "
                           "(testbed keygen; keep it out of shared folders): manifest.sig beside manifest.json")
    _add_threads_option(part)
    part.add_argument("--json", action="store_true", help="print one JSON object (bundle, evaluation) last on stdout")
    part.set_defaults(func=cmd_partition)
    link = sub.add_parser("link", help="kernel (tc) shaping of the inventory's IP links")
    link.add_argument("action", choices=("apply", "clear", "show"))
    link.add_argument("--inventory", default="inventory.yaml")
    link.add_argument("--link", help="only this link")
    link.add_argument("--dry-run", action="store_true", help="print the exact commands, run nothing")
    link.add_argument("--backend", choices=("netem", "tbf", "htb"), help="default: what the kernel supports")
    link.set_defaults(func=cmd_link)
    prof = sub.add_parser("profile", help="per-layer activation sizes and airtime of a model")
    prof.add_argument("model", help="alexnet | vgg16 | resnet18 | resnet50")
    prof.add_argument("--input", default="3x224x224", help="input CxHxW (default 3x224x224)")
    prof.add_argument("--no-real", action="store_true", help="skip the real-input compression figures")
    prof.add_argument("--json", action="store_true", help="print one JSON object (layers) last on stdout")
    prof.set_defaults(func=cmd_profile)
    mon = sub.add_parser("monitor", help="render a run's dashboard from its events")
    mon.add_argument("--replay", required=True, help="runs/<id>/events.jsonl (or the run directory)")
    mon.add_argument("--speed", type=float, default=0.0, help="replay pace (1 = real time; 0 = final state)")
    mon.add_argument("--json", action="store_true", help="also print the summary as JSON")
    mon.set_defaults(func=cmd_monitor)
    _add_bench_commands(sub)
    from testbed.reportcmd import add_report_commands
    from testbed.signcmd import add_sign_commands
    from testbed.sweepcmd import add_sweep_commands
    add_sweep_commands(sub, threads_option=_add_threads_option)
    add_report_commands(sub)
    add_sign_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HarnessError as exc:  # the one place a library error becomes a line and an exit code
        print(f"testbed: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("testbed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
