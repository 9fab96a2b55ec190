"""Running an experiment on a bench: the laptop side of ``testbed run`` and ``testbed demo``.

Holds ``prepare_bundle`` (train or load the model from the cache, export shards; a partition
experiment's bundle is the one ``testbed partition`` wrote when its key is this experiment's,
else the cache's, see testbed/partition/build.py's ``cached_bundle``; a bundle given with
``--bundle`` and ``--require-signed`` has its signature checked before anything of it is read,
testbed.signing), sample selection and
``Orchestrator``: builds the run's one fault schedule (``testbed.faults``) and
plans its kernel-shaped links (``testbed.shaping``) before anything starts, makes the netns
boards' namespaces, starts (or reaches) the broker (listening on each namespace's veth too,
plus a data-plane port that the kernel classifies), deploys local boards and starts their
agents (inside their namespace where they have one), waits for every board to report ready,
applies the kernel links' plans on ``tb0``, starts the run clock (the kernel links' outages,
the agents' shapers and the fault events all run from its time zero), then triggers samples
at the configured rate, injects faults on schedule, collects predictions, counts samples that
never complete, and writes ``runs/<id>/`` (run.json, events.jsonl, summary.json). Rendering is
not done here: the dashboard subscribes to the event log.

The run's own log, ``runs/<id>/testbed.log`` (``run_log``): while a ``testbed run`` lasts, Python
logging and warnings of the whole process (third-party packages: torchao, asyncssh, paho) go
there instead of the terminal, and so does the third-party output of a bundle built for the run
(``RunLog.add_build_log``: what testbed.partition.build captured from fd 1 and 2 while exporting,
absl and TensorFlow's C++ logging included).

The broker's logins: an embedded broker gets fresh users for the run (``BrokerAuth``: the
orchestrator and each board, each limited by an ACL) unless the inventory says
``anonymous: true``. A board's agent.json names its user and a password *file*, never the
password: a local board's file lives in a private temporary folder outside the run directory
(removed at the end); an ssh board's is pushed over SSH (stdin, 0600) into ``<workdir>/run/`` just
before its agent starts and removed after it stops, at a fixed path, so agent.json and the
deploy cache's bundle key stay the same from run to run. No password reaches run.json, the
events or a log.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import queue
import secrets
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from linkemu.errors import LinkError
from linkemu.netns import BOARD_MTU
from linkemu.profile import PRESETS, LinkProfile
from linkemu.tc import SHAPED_CLASS, KernelLink, plan, probe
from nodes.agentconfig import RunStart
from nodes.clocksync import reply as clock_reply
from nodes.mqtt import Login, MqttClient, topic
from nodes.transport_settings import LOCAL_PAIR
from testbed.broker import (ORCHESTRATOR_USER, BrokerAuth, EmbeddedBroker, ExternalBroker, auth_kind, board_user,
                            external_login, free_port)
from testbed.bundle import MANIFEST, export_bundle, load_manifest
from testbed.config import BoardSpec, Experiment, Inventory, LinkSpec, check_compatible
from testbed.data import Dataset, load_dataset
from testbed.deploy import AgentProcess, agent_config, deploy_local
from testbed.remote.network import MQTT_PORT, board_route, broker_address_for, ssh_data_port
from testbed.errors import ConfigError, RunError
from testbed.hashing import plain
from testbed.fabric import NETNS_DEV, BoardNamespaces, LocalFabric, check_netns
from testbed.faults import FaultEvent, FaultSchedule, RunClock
from testbed.messages import Malformed, Rejected, parse
from testbed.powerlog import PowerLog
from testbed.runstate import EventLog, RunState
from testbed.shaping import KERNEL_SSH, KernelShaped, naming_link, plan_kernel_links
from testbed.signing import Signer, SignatureError, verify_bundle

if TYPE_CHECKING:
    from testbed.remote.ssh import Boards

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)
RUN_LOG = "testbed.log"   # the laptop side's own log in a run directory
STOP_WAIT_S = 15.0         # how long agents have to stop after the stop command before they are killed


@dataclass
class RunLog:
    """The open ``runs/<id>/testbed.log`` of ``run_log``."""

    path: Path

    def line(self, text: str) -> None:
        logging.getLogger("testbed").info(text)

    def add_build_log(self, build_log: Path | None) -> None:
        """Append the third-party output a bundle build captured (``Prepared.build_log``)."""
        if build_log is None or not Path(build_log).is_file():
            return
        self.line(f"third-party output of the bundle build ({build_log}):")
        for handler in logging.getLogger().handlers:
            handler.flush()
        with open(self.path, "a") as out, open(build_log, errors="replace") as src:
            shutil.copyfileobj(src, out)


@contextmanager
def run_log(run_dir: Path) -> Iterator[RunLog]:
    """Route Python logging (INFO and up) and warnings of this whole process into
    ``run_dir/testbed.log`` while the block runs (the run directory is made here); the logging
    configuration is restored after."""
    path = Path(run_dir) / RUN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield RunLog(path=path)
    except BaseException as exc:
        logging.getLogger("testbed").error("stopped: %s", f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def default_cache_dir() -> Path:
    """``$HBC_TESTBED_CACHE``, else ``$XDG_CACHE_HOME/hbc-testbed``, else ~/.cache/hbc-testbed."""
    if os.environ.get("HBC_TESTBED_CACHE"):
        return Path(os.environ["HBC_TESTBED_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hbc-testbed"


@dataclass(frozen=True)
class Prepared:
    bundle_dir: Path
    manifest: dict[str, Any]
    dataset: Dataset
    training: dict[str, Any]
    notes: tuple[str, ...] = ()      # lines for the user: which bundle and why (e.g. one not used)
    build_log: Path | None = None    # third-party output of a bundle built now (testbed.partition.build)
    signer: Signer | None = None     # who signed a given bundle, when a signature was required (verified)


def prepare_bundle(experiment: Experiment, *, cache_dir: Path, progress: ProgressFn | None = None,
                   inventory: Inventory | None = None, bundle_dir: Path | None = None,
                   threads: int | None = None, partition_dir: Path | None = None,
                   say: Callable[[str], None] | None = None, trusted: Sequence[Path] = ()) -> Prepared:
    """The bundle to deploy: ``bundle_dir`` as given (verified), the experiment's partition
    bundle (testbed.partition.build.cached_bundle: ``partition_dir``, default the folder
    ``testbed partition`` writes, when it holds this experiment's key; else the cache's, built
    there when missing), or the spine's jointly trained students (trained or loaded from the
    cache, then exported). ``say`` hears each of ``Prepared.notes`` as soon as it is known.

    ``trusted`` (public key files, ``--require-signed``): ``bundle_dir`` must be signed by one of
    them (testbed.signing.verify_bundle, checked before anything of the bundle is read; the
    signer is ``Prepared.signer``). Without ``bundle_dir`` it is refused (ConfigError): a bundle
    built here from the experiment is this machine's own and carries no signature.

    First it sizes this process's torch threads to ``threads`` (None: testbed.training's
    DEFAULT_THREADS, 1; see ``configure_numerics``): the weights depend on the count, and so do the
    keys they are cached under."""
    require_bundle(trusted, bundle_dir)
    from testbed.training import configure_numerics   # torch: laptop side only
    configure_numerics(threads=threads)
    if bundle_dir is not None:
        return _given_bundle(experiment, Path(bundle_dir), trusted=tuple(Path(p) for p in trusted))
    if experiment.partition is not None:
        return _partition_bundle(experiment, cache_dir=cache_dir, progress=progress, inventory=inventory,
                                 written=partition_dir, say=say)
    from testbed import weightcache
    from testbed.model import StudentsConfig, load_or_train

    ds = load_dataset(experiment.dataset.name, path=experiment.dataset.path, seed=experiment.seed)
    m, tr = experiment.model, experiment.train
    assert m is not None and tr is not None
    cfg = StudentsConfig(dataset=ds.name, input_shape=ds.input_shape, num_classes=len(ds.classes),
                         students=m.students, width=m.width, out_dim=m.out_dim, epochs=tr.epochs,
                         batch_size=tr.batch_size, lr=tr.lr, subset=tr.subset, seed=experiment.seed)
    cb = (lambda step, total, _loss: progress("train", step, total)) if progress else None
    data_id = weightcache.data_identity(ds)   # one identity: the bundle's folder is the weights' folder
    model, record = load_or_train(cfg, ds, cache_dir=cache_dir, progress=cb, identity=data_id)
    bundle_dir = weightcache.entry_dir(Path(cache_dir) / cfg.key(), identity={"data": data_id}) / "bundle"
    try:
        manifest = load_manifest(bundle_dir)
    except Exception:
        shutil.rmtree(bundle_dir, ignore_errors=True)
        export_bundle(model, cfg, out_dir=bundle_dir, classes=ds.classes,
                      evaluation={"test_accuracy": record["test_accuracy"]})
        manifest = load_manifest(bundle_dir)
    return Prepared(bundle_dir=bundle_dir, manifest=manifest, dataset=ds, training=record)


def require_bundle(trusted: Sequence[Path], bundle_dir: Path | None) -> None:
    """``--require-signed`` needs ``--bundle``: ConfigError (exit 2) naming the flag otherwise (a
    bundle built here from the experiment is this machine's own and carries no signature)."""
    if trusted and bundle_dir is None:
        raise ConfigError("expected --bundle DIR with it (a signature is checked on a bundle that was handed to "
                          "you; one built here from the experiment is this machine's own and is not signed)",
                          file="--require-signed")


def _given_bundle(experiment: Experiment, bundle_dir: Path, *, trusted: Sequence[Path] = ()) -> Prepared:
    """``bundle_dir`` as the user gave it: with ``trusted``, its signature checked first (nothing
    of the bundle is read before), then the manifest loaded (every shard's sha256 checked) and
    matched to what was signed; then checked against the experiment."""
    signer = verify_bundle(bundle_dir, trusted=trusted) if trusted else None
    manifest = load_manifest(bundle_dir)
    if signer is not None:
        _check_signed_manifest(bundle_dir, manifest, signer)
    if manifest.get("dataset") != experiment.dataset.name:
        raise RunError(f"{bundle_dir}: bundle was built for dataset {manifest.get('dataset')!r}; the experiment "
                       f"uses {experiment.dataset.name!r}")
    if int(manifest["students"]) != experiment.students:
        raise RunError(f"{bundle_dir}: bundle has {manifest['students']} student shards; the experiment assigns "
                       f"{experiment.students}")
    ds = load_dataset(experiment.dataset.name, path=experiment.dataset.path, seed=experiment.seed)
    return Prepared(bundle_dir=bundle_dir, manifest=manifest, dataset=ds, training=_bundle_record(manifest, True),
                    signer=signer)


def _check_signed_manifest(bundle_dir: Path, manifest: dict[str, Any], signer: Signer) -> None:
    """The manifest ``load_manifest`` returned is the one ``signer`` verified: manifest.json
    still hashes to the verified sha256 and reads as the same document (SignatureError when it
    was swapped between the two reads)."""
    path = bundle_dir / MANIFEST
    try:
        data = path.read_bytes()
        same = json.dumps(json.loads(data), sort_keys=True) == json.dumps(manifest, sort_keys=True)
    except (OSError, ValueError, RecursionError) as exc:
        raise SignatureError(f"{path}: cannot read it again after its signature was checked ({exc}); expected the "
                             f"manifest as signed") from None
    if hashlib.sha256(data).hexdigest() != signer.manifest_sha256 or not same:
        raise SignatureError(f"{path}: changed while it was being read (its sha256 is no longer the one "
                             f"{signer.describe()} signed); expected the manifest as signed")


def _partition_bundle(experiment: Experiment, *, cache_dir: Path, progress: ProgressFn | None,
                      inventory: Inventory | None, written: Path | None,
                      say: Callable[[str], None] | None) -> Prepared:
    from testbed.partition.build import cached_bundle, default_out_dir  # torch: laptop side only

    cb = (lambda phase, step, total, _loss: progress(phase, step, total)) if progress else None
    built = cached_bundle(experiment, cache_dir=cache_dir, inventory=inventory, progress=cb,
                          written=written if written is not None else default_out_dir(experiment), say=say)
    record = {**_bundle_record(built.manifest, built.cached), "bundle_key": built.manifest.get("bundle_key")}
    return Prepared(bundle_dir=built.bundle_dir, manifest=built.manifest, dataset=built.dataset,
                    training=record, notes=built.notes, build_log=built.build_log)


def _bundle_record(manifest: dict[str, Any], cached: bool) -> dict[str, Any]:
    ev = manifest.get("evaluation", {})
    return {"test_accuracy": float(ev.get("test_accuracy", float("nan"))), "cached": cached,
            "train_seconds": None, "method": manifest.get("method"), "numerics": manifest.get("numerics")}


def select_samples(ds: Dataset, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` test samples in a seeded random order (cycling if n exceeds the test set)."""
    order = np.random.default_rng(seed).permutation(len(ds.y_test))
    idx = np.resize(order, n)
    return ds.x_test[idx], ds.y_test[idx], idx


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def check_runnable(inventory: Inventory) -> None:
    """Refuse, before anything is started or contacted, a bench this version cannot run: a link
    end made on this machine (a pty pair, bumble's virtual controllers) on an ssh board, netns
    boards without root or ``ip netns``."""
    for i, link in enumerate(inventory.links):
        key, local, what = LOCAL_PAIR.get(link.transport.type, (None, None, None))
        if key is None or link.transport.settings.get(key) != local:
            continue
        for end in (link.src, link.dst):
            if inventory.boards[end].connect == "ssh":
                raise RunError(f"{inventory.path}:{inventory.line_of(f'links[{i}].transport.{key}') or '?'}: "
                               f"links[{i}].transport.{key}: {local!r} ({what}) is made on this machine and cannot reach "
                               f"ssh board {end}; expected the board's device (e.g. port: /dev/ttyAMA0, "
                               f"edge_port: /dev/ttyTHS1)")
    if ssh_boards(inventory):
        from testbed.remote.ssh import check_pinned   # asyncssh: only for benches with ssh boards
        check_pinned(inventory)
    check_netns(inventory)


def ssh_boards(inventory: Inventory) -> list[str]:
    return [b.name for b in inventory.boards.values() if b.connect == "ssh"]


@dataclass
class _Pending:
    trigger_at: float
    label: int


@dataclass
class Orchestrator:
    """One run. ``run()`` returns the summary; everything it starts is stopped in ``finally``."""

    inventory: Inventory
    experiment: Experiment
    prepared: Prepared
    run_dir: Path
    state: RunState = field(default_factory=RunState)
    ready_timeout_s: float = 90.0
    on_log: Callable[[EventLog], None] | None = None
    _log: EventLog | None = field(default=None, init=False)
    _msgs: queue.Queue = field(default_factory=queue.Queue, init=False)
    _agents: dict[str, AgentProcess] = field(default_factory=dict, init=False)
    _ctl: MqttClient | None = field(default=None, init=False)
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    _remote: Boards | None = field(default=None, init=False)
    _power: PowerLog | None = field(default=None, init=False)
    _malformed: Malformed = field(default_factory=Malformed, init=False)
    _auth: BrokerAuth | None = field(default=None, init=False, repr=False)   # the embedded broker's users
    _secrets: Path | None = field(default=None, init=False)   # local boards' password files (not in run_dir)

    # -- helpers ---------------------------------------------------------------------------
    def _event(self, event_type: str, /, **fields: Any) -> None:
        assert self._log is not None
        self._log.write(event_type, **fields)

    def _on_mqtt(self, topic_name: str, payload: bytes) -> None:
        if "/time/" in topic_name:  # clock sync: answer at once, on paho's thread, with fresh stamps
            t2 = time.time_ns()
            answer = clock_reply(payload, received_ns=t2)
            if answer is not None and self._ctl is not None:
                self._ctl.publish(topic_name.replace("/time/", "/ctl/"), answer, qos=0)
            return
        self._msgs.put((topic_name, payload, time.monotonic()))

    def _write_run_json(self, run_id: str, broker: Any, seed: int, *, spaces: BoardNamespaces,
                        kernel: dict[str, KernelShaped], data_port: int | None, schedule: FaultSchedule) -> None:
        from importlib import metadata

        def version(pkg: str) -> str | None:
            try:
                return metadata.version(pkg)
            except metadata.PackageNotFoundError:
                return None

        doc = {"run": run_id, "created": datetime.now(timezone.utc).isoformat(), "seed": seed,
               "inventory": {"path": str(self.inventory.path), "text": self.inventory.path.read_text()},
               "experiment": {"path": str(self.experiment.path), "text": self.experiment.path.read_text(),
                              "effective": plain(self.experiment)},
               "bundle": {"dir": str(self.prepared.bundle_dir), "method": self.prepared.manifest.get("method"),
                          "config_key": self.prepared.manifest.get("bundle_key",
                                                                   self.prepared.manifest.get("config_key")),
                          "evaluation": self.prepared.manifest["evaluation"],
                          "signed_by": self.prepared.signer.record() if self.prepared.signer is not None else None},
               "training": self.prepared.training,
               "broker": {"kind": broker.kind, "host": broker.host, "port": broker.port,
                          "fallback_reason": broker.fallback_reason, **self._auth_record(),
                          "listeners": [list(li) for li in getattr(broker, "listeners", ())],
                          "data_port": data_port},
               "netns": spaces.as_dict() if spaces.spaces else None,
               "shaping": {lk.name: self._shaping_record(lk.name, kernel, data_port)
                           for lk in self.inventory.links},
               "faults": schedule.as_dict(),
               "versions": {"python": platform.python_version(), "platform": platform.platform(),
                            **{p: version(p) for p in ("hbc-testbed", "torch", "numpy", "paho-mqtt", "rich")}}}
        (self.run_dir / "run.json").write_text(json.dumps(doc, indent=2))

    @staticmethod
    def _shaping_record(name: str, kernel: dict[str, KernelShaped], data_port: int | None) -> dict[str, Any]:
        k = kernel.get(name)
        if k is None:
            return {"shaper": "user", "where": "the sending agent's egress (linkemu shaper)"}
        if k.choice.kind == KERNEL_SSH:   # the board's interface is found at apply time: kernel_stats has it
            return {"shaper": k.shaper, "where": f"board {k.board}'s interface toward the broker, TCP to port "
                                                 f"{data_port} (kernel_stats: dev, apply, clear)",
                    "board": k.board, "agent_profile": "ideal (the user-space shaper is off for this link)"}
        p = plan(k.profile, NETNS_DEV, backend=k.backend, dport=data_port, mtu=BOARD_MTU)
        return {"shaper": k.shaper, "where": f"{NETNS_DEV} egress of the sender's namespace, TCP to port {data_port}",
                "board": k.board, "apply": p.apply, "clear": p.clear, "notes": p.notes,
                "agent_profile": "ideal (the user-space shaper is off for this link)"}

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        check_compatible(self.experiment, self.inventory)
        check_runnable(self.inventory)
        exp, inv = self.experiment, self.inventory
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_id = self.run_dir.name
        x, labels, _ = select_samples(self.prepared.dataset, exp.run.samples, seed=exp.seed)
        schedule = FaultSchedule.build(inv, exp)
        profiles = schedule.profiles
        with ExitStack() as stack:
            self._log = stack.enter_context(EventLog(self.run_dir / "events.jsonl"))
            self._power = stack.enter_context(PowerLog(self.run_dir / "power", boards=inv.boards))
            self._log.subscribe(self.state.apply)
            if self.on_log:
                self.on_log(self._log)
            self._connect_remote(stack)
            kernel = self._plan_kernel(profiles)
            shapers = {lk.name: kernel[lk.name].shaper if lk.name in kernel else "user" for lk in inv.links}
            data_port = self._data_port(kernel)
            spaces = stack.enter_context(BoardNamespaces(inventory=inv))
            for note in spaces.notes:
                self._event("fabric", note=note)
            self._make_logins(stack)
            broker = stack.enter_context(self._broker(spaces, data_port, kernel))
            self._write_run_json(run_id, broker, exp.seed, spaces=spaces, kernel=kernel, data_port=data_port,
                                 schedule=schedule)
            self._event("run_start", run=run_id, run_dir=str(self.run_dir), samples=exp.run.samples,
                        rate_hz=exp.run.rate_hz, dataset=self.prepared.dataset.name,
                        broker={"kind": broker.kind, "port": broker.port, "fallback_reason": broker.fallback_reason,
                                **self._auth_record()},
                        boards=[{"name": b.name, "role": b.role, "kind": b.kind, "runtime": b.runtime}
                                for b in inv.boards.values()],
                        links=[{"name": lk.name, "src": lk.src, "dst": lk.dst, "transport": lk.transport.type,
                                "rate_bps": None if profiles[lk.name].rate_bps == float("inf")
                                else profiles[lk.name].rate_bps, "profile": profiles[lk.name].as_dict(),
                                "shaper": shapers[lk.name]}
                               for lk in inv.links],
                        faults=[plain(f) for f in exp.faults])
            ctl = stack.enter_context(MqttClient(host=broker.host, port=broker.port, login=self._own_login(),
                                                 client_id=f"orchestrator-{run_id}", on_message=self._on_mqtt))
            self._ctl = ctl
            for plane in ("status", "tele"):
                ctl.subscribe(topic(inv.bench, plane, "+"), qos=1)
            ctl.subscribe(topic(inv.bench, "time", "+"), qos=0)
            shaped: dict[str, KernelLink] = {}
            try:
                addresses = {b: self._broker_host(b, spaces, broker) for b in inv.boards}
                fabric = stack.enter_context(LocalFabric(inventory=inv, workdir=self.run_dir / "links",
                                                         broker_host=broker.host, broker_port=broker.port,
                                                         addresses=addresses,
                                                         data_ports={name: data_port for name in kernel}))
                for note in fabric.notes:
                    self._event("fabric", note=note)
                user_profiles = {**profiles, **{name: PRESETS["ideal"] for name in kernel}}
                self._start_agents(stack, broker, user_profiles, x, fabric, spaces=spaces, shapers=shapers)
                self._wait_ready()
                for name, k in kernel.items():
                    with naming_link(name):
                        shaped[name] = stack.enter_context(self._kernel_link(k, spaces, broker, data_port))
                    self._event("fabric", note=f"{name}: shaped by the kernel ({k.shaper}) on {shaped[name].plan.dev} "
                                              f"of {self._kernel_where(k, spaces)}, TCP to port {data_port} only")
                clock = RunClock.start()   # time zero of the schedule, for the kernel, the agents and us
                for link in shaped.values():
                    link.drive_outages(t0=clock.t0)
                self._sample_loop(ctl, labels, clock=clock, schedule=schedule)
                self._stop_agents(ctl)
            except KeyboardInterrupt:
                self._event("interrupted", reason="Ctrl-C (SIGINT)", triggered=self.state.triggered)
                raise
            except Exception as exc:   # the run cannot go on: its state says why, then the error is raised
                self._event("aborted", reason=str(exc)[:500], triggered=self.state.triggered)
                raise
            finally:
                if shaped:
                    self._record_kernel_stats(shaped)
                self._pull_logs(run_id)
                self._log_malformed()
                self._event("run_end")
                summary = self.state.summary()
                (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _broker(self, spaces: BoardNamespaces, data_port: int | None,
                kernel: dict[str, KernelShaped]) -> EmbeddedBroker | ExternalBroker:
        """The broker; embedded, it also listens on each namespace's host-side veth address (the
        control plane's port) and, for the senders of kernel-shaped links, on ``data_port``."""
        spec = self.inventory.broker
        if spec.mode == "external":
            return ExternalBroker(host=str(spec.host), port=int(spec.port or 1883), anonymous=spec.anonymous)
        host = spec.host or "127.0.0.1"
        remote = ssh_boards(self.inventory)
        # a physical bench's boards keep one broker port across runs (their agent.json stays the same)
        port = spec.port or (MQTT_PORT if remote else free_port(host))
        listeners = [(s.host_addr, port) for s in spaces.spaces.values()]
        if not spec.host:   # listen where each ssh board reaches this machine, never on 0.0.0.0
            listeners += sorted({(self._broker_host(b, spaces, None), port) for b in remote})
        listeners += [(self._broker_host(b, spaces, None), data_port) for b in sorted({k.board for k in kernel.values()})
                      if data_port is not None]
        return EmbeddedBroker(workdir=self.run_dir / "broker", host=host, port=port, listeners=tuple(listeners),
                              auth=self._auth)

    # -- broker logins (see the module docstring: where each password lives) ---------------
    def _make_logins(self, stack: ExitStack) -> None:
        """The embedded broker's users for this run, and the private folder of the local boards'
        password files (outside the run directory, removed when the run ends)."""
        inv = self.inventory
        if inv.broker.mode != "embedded" or inv.broker.anonymous:
            return
        self._auth = BrokerAuth.for_bench(bench=inv.bench, boards=list(inv.boards),
                                          links=[(lk.name, lk.src, lk.dst) for lk in inv.links])
        if any(b.connect != "ssh" for b in inv.boards.values()):
            self._secrets = Path(tempfile.mkdtemp(prefix="hbc-tb-login-"))   # 0700
            stack.callback(shutil.rmtree, self._secrets, True)

    def _auth_record(self) -> dict[str, Any]:
        """How clients log in to this run's broker, for run.json, the events and the summary (no
        secret), in ``testbed.broker.auth_kind``'s words (the one place for the rule)."""
        spec = self.inventory.broker
        return {"auth": auth_kind(spec), "tls": spec.mode == "external" and spec.tls}

    def _own_login(self) -> Login:
        """The orchestrator's login: its run user (embedded), or the inventory's (external)."""
        spec = self.inventory.broker
        if spec.mode == "embedded":
            if self._auth is None:
                return Login()
            return Login(username=ORCHESTRATOR_USER, password=self._auth.password(ORCHESTRATOR_USER))
        return external_login(spec)

    def _board_login(self, board: BoardSpec) -> dict[str, str | None]:
        """agent.json's login of ``board``: user name and file paths, never a password. An ssh
        board's files sit at fixed paths in its workdir's run/ (pushed at each run start)."""
        spec = self.inventory.broker
        remote = board.connect == "ssh"
        if spec.mode == "embedded":
            if spec.anonymous:
                return {}
            if remote:
                where = board_path(board, "run", _REMOTE_LOGIN["password"])
            else:
                assert self._auth is not None and self._secrets is not None
                where = str(self._secrets / f"{board.name}.password")
                _write_private(Path(where), self._auth.password(board_user(board.name)) + "\n")
            return {"username": board_user(board.name), "password_file": where}
        files = {"password": None if spec.anonymous else spec.password_file, "ca_file": spec.ca_file,
                 "cert_file": spec.cert_file, "key_file": spec.key_file}
        out: dict[str, str | None] = {"username": None if spec.anonymous else spec.username}
        for key, local in files.items():
            name = "password_file" if key == "password" else key
            out[name] = None if local is None else \
                board_path(board, "run", _REMOTE_LOGIN[key]) if remote else str(Path(local).resolve())
        return out

    def _remote_login_files(self, board: BoardSpec) -> dict[str, str]:
        """What an ssh board's login needs in its run/ folder: file name -> content."""
        spec = self.inventory.broker
        if spec.mode == "embedded":
            if self._auth is None:
                return {}
            return {_REMOTE_LOGIN["password"]: self._auth.password(board_user(board.name)) + "\n"}
        files = {"password": None if spec.anonymous else spec.password_file, "ca_file": spec.ca_file,
                 "cert_file": spec.cert_file, "key_file": spec.key_file}
        return {_REMOTE_LOGIN[k]: Path(v).read_text() for k, v in files.items() if v is not None}

    def _connect_remote(self, stack: ExitStack) -> None:
        """Sessions with every ssh board (host keys pinned); any board unreachable ends the run here."""
        names = ssh_boards(self.inventory)
        if not names:
            return
        from testbed.remote.ssh import Boards
        self._remote = stack.enter_context(Boards(self.inventory, names))
        if self._remote.failed:
            raise RunError("; ".join(o.error or o.board for o in self._remote.failed.values()))

    def _plan_kernel(self, profiles: dict[str, LinkProfile]) -> dict[str, KernelShaped]:
        remote = self._remote
        probe_ssh = (lambda name: probe(runner=remote.runner(name))) if remote is not None else None
        return plan_kernel_links(self.inventory, profiles, probe_ssh=probe_ssh)

    def _data_port(self, kernel: dict[str, KernelShaped]) -> int | None:
        """The broker port that kernel-shaped senders publish to (the kernel classifies by it):
        with ssh boards or an external broker, ``ssh_data_port`` (fixed, so a board's agent.json
        stays the same); else a free port the embedded broker also listens on."""
        if not kernel:
            return None
        if self.inventory.broker.mode == "external" or any(k.choice.kind == KERNEL_SSH for k in kernel.values()):
            return ssh_data_port(self.inventory)
        return free_port()

    def _kernel_where(self, k: KernelShaped, spaces: BoardNamespaces) -> str:
        return spaces.spaces[k.board].ns if k.board in spaces.spaces else f"board {k.board}"

    def _kernel_link(self, k: KernelShaped, spaces: BoardNamespaces, broker: Any, data_port: int | None) -> KernelLink:
        """The applied kernel link of ``k``: on tb0 in a netns board's namespace, or on an ssh
        board's interface toward the broker (its clear commands recorded on the board for
        ``testbed stop``)."""
        if k.choice.kind != KERNEL_SSH:
            return KernelLink(k.profile, NETNS_DEV, backend=k.backend, runner=spaces.runner_for(k.board),
                              dport=data_port, mtu=BOARD_MTU, drive=False)
        from testbed.remote.agents import record_shaping
        assert self._remote is not None
        runner = self._remote.runner(k.board)
        dev, mtu = board_route(runner, self._broker_host(k.board, spaces, broker))
        link = KernelLink(k.profile, dev, backend=k.backend, runner=runner, dport=data_port, mtu=mtu, drive=False)
        self._remote.call(record_shaping(self._remote.session(k.board), link.plan.clear))
        return link

    def _broker_host(self, board: str, spaces: BoardNamespaces, broker: Any) -> str:
        """Where ``board`` reaches the broker: the external broker's host; for an ssh board, the
        inventory's broker host or this machine's address on the route to the board; for a netns
        board its veth's host side; else the broker's own host."""
        spec, b = self.inventory.broker, self.inventory.boards[board]
        if b.connect == "ssh":
            return broker_address_for(self.inventory, b)
        if spec.mode == "external":
            return str(spec.host)
        return spaces.address(board, broker.host if broker is not None else "127.0.0.1")

    def _start_agents(self, stack: ExitStack, broker: Any, profiles: dict[str, LinkProfile],
                      x: np.ndarray, fabric: LocalFabric, *, spaces: BoardNamespaces,
                      shapers: dict[str, str]) -> None:
        staged: dict[str, Path] = {}
        for board in self.inventory.boards.values():
            path = self._stage(board, broker_host=self._broker_host(board.name, spaces, broker), broker_port=broker.port,
                               profiles=profiles, x=x, endpoint=fabric.endpoint, shapers=shapers,
                               dest=self.run_dir / "boards" / board.name)
            if board.connect == "ssh":
                staged[board.name] = path.parent
                continue
            self._agents[board.name] = stack.enter_context(
                AgentProcess(name=board.name, config=path, prefix=spaces.exec_prefix(board.name)))
        if staged:
            self._deploy_remote(stack, staged)

    def _stage(self, board: BoardSpec, *, broker_host: str, broker_port: int, profiles: dict[str, LinkProfile],
               x: np.ndarray, endpoint: Callable[[LinkSpec, str], dict[str, Any]], shapers: dict[str, str],
               dest: Path) -> Path:
        """Write ``board``'s files (agent.json, its shard, a wearable's samples) into ``dest``."""
        exp = self.experiment
        cfg = agent_config(inventory=self.inventory, board=board, manifest=self.prepared.manifest,
                           assignment=exp.assignment[board.name], broker_host=broker_host, broker_port=broker_port,
                           broker_login=self._board_login(board),
                           deadline_ms=exp.run.deadline_ms, profiles=profiles, endpoint=endpoint, shapers=shapers,
                           quantize=exp.partition.quantize if exp.partition is not None else "none")
        return deploy_local(bundle_dir=self.prepared.bundle_dir, board_dir=dest, manifest=self.prepared.manifest,
                            cfg=cfg, samples=x if board.role == "wearable" else None)

    def deploy(self, *, names: list[str] | None = None, staging: Path) -> dict[str, Any]:
        """``testbed deploy``: stage the ssh boards' files exactly as a run would (same broker
        address and port, same profiles), then roll them out; one Outcome per board."""
        check_compatible(self.experiment, self.inventory)
        check_runnable(self.inventory)
        inv, exp = self.inventory, self.experiment
        names = names or ssh_boards(inv)
        x, _, _ = select_samples(self.prepared.dataset, exp.run.samples, seed=exp.seed)
        profiles = FaultSchedule.build(inv, exp).profiles
        from testbed.remote.rollout import rollout
        from testbed.remote.ssh import Boards
        with ExitStack() as stack:
            self._remote = stack.enter_context(Boards(inv, ssh_boards(inv)))
            reachable = [n for n in names if n in self._remote.sessions]
            kernel = self._plan_kernel(profiles) if len(reachable) == len(ssh_boards(inv)) else {}
            shapers = {lk.name: kernel[lk.name].shaper if lk.name in kernel else "user" for lk in inv.links}
            data_port = self._data_port(kernel)
            spaces = BoardNamespaces(inventory=inv)   # not entered: only ssh boards are staged here
            port = inv.broker.port or MQTT_PORT
            addresses = {b: self._broker_host(b, spaces, None) for b in names}
            fabric = stack.enter_context(LocalFabric(inventory=inv, workdir=staging / "links", broker_host="127.0.0.1",
                                                     broker_port=port, addresses=addresses,
                                                     data_ports={name: data_port for name in kernel}))
            user_profiles = {**profiles, **{name: PRESETS["ideal"] for name in kernel}}
            staged = {}
            for name in names:
                board = inv.boards[name]
                shutil.rmtree(staging / name, ignore_errors=True)
                staged[name] = self._stage(board, broker_host=addresses[name], broker_port=port,
                                           profiles=user_profiles, x=x, endpoint=fabric.endpoint, shapers=shapers,
                                           dest=staging / name).parent
            return rollout(self._remote, inv, staged, cache_dir=self.cache_dir)

    def _deploy_remote(self, stack: ExitStack, staged: dict[str, Path]) -> None:
        """Doctor, environment and bundle on every ssh board (only what changed is sent), then
        their agents, started detached on the boards."""
        from testbed.remote.agents import RemoteAgent
        from testbed.remote.rollout import rollout
        assert self._remote is not None
        rolled = rollout(self._remote, self.inventory, staged, cache_dir=self.cache_dir)
        bad = [o.error for o in rolled.values() if not o.ok]
        if bad:
            raise RunError("deploy: " + "; ".join(str(e) for e in bad))
        for name, o in rolled.items():
            r = o.value
            assert r is not None
            self._event("deploy", board=name, bundle=r.bundle.key, env=r.env.key, bytes=r.bytes,
                        files=r.env.files + r.bundle.files)
        for name in staged:
            board = self.inventory.boards[name]
            files = self._remote_login_files(board)
            if files:   # removed after the agent stops (the exit stack unwinds in reverse)
                stack.callback(self._forget_remote_login, name, list(files))
                self._remote.call(_push_private(self._remote.live(name), files), timeout=60)
            self._agents[name] = stack.enter_context(RemoteAgent(self._remote, board, self.inventory.bench,
                                                                 self.run_dir.name))
            self._event("fabric", note=f"{name}: agent started on the board "
                                       f"({'unit ' + self._agents[name].record['unit'] if self._agents[name].record.get('unit') else 'pid ' + str(self._agents[name].record.get('pid'))})")

    def _forget_remote_login(self, name: str, files: list[str]) -> None:
        """Best effort: the run's login files off the board (the password dies with the broker anyway)."""
        assert self._remote is not None
        try:
            self._remote.call(_remove_files(self._remote.live(name), files), timeout=60)
        except Exception as exc:   # noqa: BLE001 - teardown goes on; say what was left
            self._event("error", board=name, error=f"could not remove the run's broker login files from {name}: {exc}")

    def _pull_logs(self, run_id: str) -> None:
        """Each ssh board's agent log into runs/<id>/boards/<name>/agent.log."""
        if self._remote is None:
            return
        from testbed.remote.agents import pull_log
        names = [n for n in ssh_boards(self.inventory) if n in self._remote.sessions]
        dests = {n: self.run_dir / "boards" / n / "agent.log" for n in names}
        try:
            got = self._remote.each(lambda s: pull_log(s, dests[s.board.name], run_id=run_id), names=names)
        except Exception as exc:   # noqa: BLE001 - logs are pulled best effort; say why not
            self._event("error", error=f"pulling board logs failed: {exc}")
            return
        for name, o in got.items():
            if not o.ok or o.value is None:
                self._event("error", board=name, error=f"no agent log pulled from {name}: {o.error or 'none on the board'}")

    def _record_kernel_stats(self, shaped: dict[str, KernelLink]) -> None:
        """Add each kernel-shaped link's final tc/nft counters to run.json (before they are cleared)."""
        stats: dict[str, Any] = {}
        for name, link in shaped.items():
            dev = link.plan.dev
            entry: dict[str, Any] = {"dev": dev, "outage_edges": [state for state, _ in link.edges],
                                     "apply": link.plan.apply, "clear": link.plan.clear}
            try:
                entry["qdisc"] = json.loads(link.runner.run(["tc", "-s", "-j", "qdisc", "show", "dev", dev]) or "[]")
            except (LinkError, ValueError) as exc:
                entry["qdisc"] = [{"error": str(exc)}]
            entry["class_text"] = link.runner.run(["tc", "-s", "class", "show", "dev", dev], check=False)
            if link.plan.outages:
                entry["nft"] = link.runner.run(link.plan.show[-1], check=False)
            leaf = next((q for q in entry["qdisc"] if q.get("parent") == SHAPED_CLASS), None)
            entry["shaped_bytes"] = leaf.get("bytes") if leaf else None     # the data plane's leaf qdisc
            entry["shaped_packets"] = leaf.get("packets") if leaf else None
            entry["shaped_drops"] = leaf.get("drops") if leaf else None
            stats[name] = entry
        path = self.run_dir / "run.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        doc["kernel_stats"] = stats
        path.write_text(json.dumps(doc, indent=2))

    def _drain(self, timeout: float, on_result: Callable[[dict[str, Any], float], None] | None = None) -> None:
        """Handle control-plane messages for up to ``timeout`` seconds (at least one wait)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                topic_name, payload, at = self._msgs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            self._handle(topic_name, payload, at, on_result)
            if time.monotonic() >= deadline:
                return

    def _handle(self, topic_name: str, payload: bytes, at: float,
                on_result: Callable[[dict[str, Any], float], None] | None) -> None:
        """One control-plane message, checked by its schema (``testbed.messages``): an accepted
        one becomes its event (type and time are ours), a malformed one is counted and dropped."""
        inv = self.inventory
        got = parse(topic_name, payload, bench=inv.bench, boards=inv.boards, edge=inv.edge.name)
        if isinstance(got, Rejected):
            self._count_malformed(got)
            return
        board, fields = got.board, got.fields
        if got.kind == "status":
            self._event("status", board=board, **{k: v for k, v in fields.items() if k != "role"})
        elif got.kind == "result":
            if on_result is not None:
                on_result(fields, at)
        elif got.kind == "power":
            if self._power is not None:   # the rows go to power/<board>.csv
                written = self._power.add(board, fields)
                if written is not None:
                    self._event("power", board=board, **written)
        else:
            self._event(got.kind, board=board, **fields)

    def _count_malformed(self, r: Rejected) -> None:
        """Count a dropped message; log it when its (board, reason) count is 1, 2, 4, 8, ... (a
        flood costs a few lines) and every count again at the run's end (``_log_malformed``)."""
        self._malformed.add(r)
        n = self._malformed.counts[r.board][r.reason]
        if n & (n - 1) == 0:
            self._event("malformed", board=r.board, reason=r.reason, count=n)

    def _log_malformed(self) -> None:
        for board, per in self._malformed.as_dict().items():
            for reason, n in per.items():
                if n & (n - 1):   # not already logged at this count
                    self._event("malformed", board=board, reason=reason, count=n)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            with self.state.lock:
                waiting = [b.name for b in self.state.boards.values() if b.status != "ready"]
            if not waiting:
                return
            for name in waiting:
                code = self._agents[name].poll()
                if code is not None:
                    raise RunError(f"agent {name} exited with code {code} before it was ready: "
                                   f"{self._agents[name].log_tail()}")
                if self.state.boards[name].status == "error":
                    raise RunError(f"agent {name} failed to start: "
                                   f"{self.state.boards[name].error or self._agents[name].log_tail()}")
            if time.monotonic() > deadline:
                raise RunError(f"boards not ready after {self.ready_timeout_s:.0f} s: {', '.join(waiting)}")
            self._drain(0.1)

    def _sample_loop(self, ctl: MqttClient, labels: np.ndarray, *, clock: RunClock,
                     schedule: FaultSchedule) -> None:
        exp, inv = self.experiment, self.inventory
        run_id = self.run_dir.name
        boards = list(inv.boards.values())
        order = [inv.edge.name] + [b.name for b in boards if b.role == "wearable"]
        start = json.dumps(RunStart(run=run_id, t0_ns=clock.t0_ns).to_message())
        for name in order:
            ctl.publish(topic(inv.bench, "ctl", name), start, qos=1)
        t_start = clock.t0
        self._event("sampling_start", t0_ns=clock.t0_ns)
        period = 1.0 / exp.run.rate_hz
        timeout = exp.run.timeout_ms / 1000.0
        n = exp.run.samples
        timeline = deque(self._log_skipped_faults(schedule.events(), last_at=(n - 1) * period))
        pending: dict[int, _Pending] = {}
        names = {int(s): b for b, s in exp.assignment.items() if s != "merge"}  # student shard -> board

        def during_outage(trigger_at: float) -> bool:
            return schedule.during_outage(clock.offset(trigger_at))

        def on_result(msg: dict[str, Any], at: float) -> None:
            sid = int(msg.get("sample", -1))
            p = pending.pop(sid, None)
            if p is None:
                self._event("late_result", sample=sid)
                return
            pred = int(msg.get("pred", -1))
            status = "partial" if msg.get("missing") else "complete"
            transit_ms, transit_unc = self._transit(msg.get("transit") or {}, names)
            self._event("result", sample=sid, status=status, label=p.label, pred=pred, correct=pred == p.label,
                        arrived=[names.get(int(s), str(s)) for s in msg.get("arrived", [])],
                        missing=[names.get(int(s), str(s)) for s in msg.get("missing", [])],
                        latency_ms=round((at - p.trigger_at) * 1000.0, 3), merge_ms=msg.get("merge_ms"),
                        transit_ms=transit_ms, transit_uncertainty_ms=transit_unc,
                        during_outage=during_outage(p.trigger_at))

        next_sample = 0
        while next_sample < n or pending:
            now = time.monotonic()
            while timeline and clock.at(timeline[0].at_s) <= now:
                fault = timeline.popleft()
                if fault.kind == "kill" and fault.board in self._agents:
                    self._agents[fault.board].kill()
                self._event("fault", **fault.fields())
            if next_sample < n and now >= t_start + next_sample * period:
                sid = next_sample
                pending[sid] = _Pending(trigger_at=time.monotonic(), label=int(labels[sid]))
                at_s = round(clock.offset(pending[sid].trigger_at), 6)
                # QoS 1, and the sample's timeout on the run clock: a trigger the client queued while the
                # broker was down (or one a busy board reads late) is dropped by the board once the
                # sample has timed out here, never computed for a result nobody waits for
                payload = json.dumps({"cmd": "trigger", "sample": sid, "at_s": at_s,
                                      "expires_s": round(at_s + timeout, 6)})
                for name in order:
                    ctl.publish(topic(inv.bench, "ctl", name), payload, qos=1)
                self._event("trigger", sample=sid, at_s=at_s)
                next_sample += 1
            for sid in [s for s, p in pending.items() if now - p.trigger_at > timeout]:
                p = pending.pop(sid)
                self._event("result", sample=sid, status="timed_out", label=p.label, pred=None, correct=False,
                            arrived=[], missing=[], latency_ms=None,
                            during_outage=during_outage(p.trigger_at))
            wake = [t_start + next_sample * period] if next_sample < n else []
            wake += [p.trigger_at + timeout for p in pending.values()][:1]
            wake += [clock.at(timeline[0].at_s)] if timeline else []
            self._drain(max(0.0, min(wake, default=now + 0.05) - time.monotonic()), on_result)
        # the end of an outage that began before the last sample, once the run is over
        for fault in timeline:
            self._event("fault", **fault.fields(), note="after the last sample")

    def _log_skipped_faults(self, events: list[FaultEvent], *, last_at: float) -> list[FaultEvent]:
        """The schedule's events that can take effect: a kill or an outage that would start after
        the last sample's trigger (``last_at`` s on the run clock) never fires, and is logged as
        ``fault_skipped`` with when it was due, so no record says it happened."""
        kept, open_outages = [], set()
        for ev in events:   # time order; a link's outages never overlap
            if ev.phase == "start" and ev.at_s > last_at + 1e-9:
                self._event("fault_skipped", **ev.fields(), at_s=round(ev.at_s, 6),
                            reason=f"due at {ev.at_s:g} s, after the last sample's trigger at {last_at:g} s")
                continue
            if ev.kind == "outage" and ev.phase == "start":
                open_outages.add(ev.link)
            elif ev.kind == "outage":
                if ev.link not in open_outages:   # the end of a skipped outage
                    continue
                open_outages.discard(ev.link)
            kept.append(ev)
        return kept

    def _transit(self, transit: dict[str, Any], names: dict[int, str]) -> tuple[dict[str, float], dict[str, float]]:
        """One-way wearable -> edge times of a sample's frames, each clock mapped onto ours.

        A board's clock estimate says orchestrator ≈ board + offset, ± uncertainty; a transit's
        uncertainty is the sum of both ends'. Boards without an estimate count as offset 0 with
        unknown (None -> omitted) uncertainty.
        """
        edge = self.state.boards.get(self.inventory.edge.name)
        out: dict[str, float] = {}
        unc: dict[str, float] = {}
        for shard, pair in transit.items():
            board = self.state.boards.get(names.get(int(shard), ""))
            if board is None or edge is None or not isinstance(pair, list) or len(pair) != 2:
                continue
            send_ns, recv_ns = int(pair[0]), int(pair[1])
            one_way = (recv_ns + edge.clock_offset_ms * 1e6) - (send_ns + board.clock_offset_ms * 1e6)
            out[board.name] = round(one_way / 1e6, 3)
            if board.clock_uncertainty_ms is not None and edge.clock_uncertainty_ms is not None:
                unc[board.name] = round(board.clock_uncertainty_ms + edge.clock_uncertainty_ms, 3)
        return out, unc

    def _stop_agents(self, ctl: MqttClient) -> None:
        inv = self.inventory
        for name, agent in self._agents.items():
            if agent.poll() is None:
                ctl.publish(topic(inv.bench, "ctl", name), json.dumps({"cmd": "stop"}), qos=1)

        def offline(name: str) -> bool:   # its last will came: it cannot hear the stop command
            return self.state.boards[name].status == "offline"

        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and any(a.poll() is None and not offline(n) for n, a in self._agents.items()):
            self._drain(0.1)
        self._drain(0.3)  # final telemetry and "stopped" statuses
        for name, agent in self._agents.items():
            if agent.poll() is None:   # hung (or stopped by a signal)
                why = ("is offline (the broker published its last will)" if offline(name)
                       else f"did not stop within {STOP_WAIT_S:g} s of the stop command")
                self._event("error", board=name, error=f"{name}'s agent {why}; killed (SIGKILL)")
                try:
                    agent.kill()
                except Exception as exc:   # noqa: BLE001 - teardown goes on; the agent's own stop() retries
                    self._event("error", board=name, error=f"could not kill {name}'s agent: {exc}")


_REMOTE_LOGIN = {"password": "broker.password", "ca_file": "broker-ca.pem", "cert_file": "broker-cert.pem",
                 "key_file": "broker-key.pem"}   # an ssh board's login files, in <workdir>/run/


def board_path(board: BoardSpec, *parts: str) -> str:
    from testbed.remote.ssh import board_path as on_board   # asyncssh only where ssh boards are
    return on_board(board, *parts)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


async def _push_private(s: Any, files: dict[str, str]) -> None:
    """Write ``files`` (name -> content) into the board's run/ folder, readable by the login
    user only; the content goes over the SSH channel's stdin, never on a command line."""
    from testbed.remote.ssh import quote_path
    run = board_path(s.board, "run")
    for name, text in files.items():
        await s.run(f"umask 077; mkdir -p {quote_path(run)} && cat > {quote_path(run + '/' + name)}", input=text)


async def _remove_files(s: Any, names: list[str]) -> None:
    from testbed.remote.ssh import quote_path
    run = board_path(s.board, "run")
    await s.run("rm -f " + " ".join(quote_path(run + "/" + n) for n in names), check=False)
