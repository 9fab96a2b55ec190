"""The board agent: ``python -m nodes.agent --config agent.json``.

Holds the process that runs on every board: ``Agent``, the part both roles share (the control
plane on MQTT topics ``tb/<bench>/ctl|tele|status/<board>`` with a retained status and a
last-will "offline", clock sync, the command inbox and the serve loop), its two roles, and
``agent_for`` (the role's class for a config) and ``main``. After loading its shard and opening
its data-plane transports, an agent obeys commands (``start``, ``trigger``, ``stop``):

- ``WearableAgent``: on ``trigger`` it runs its student shard on its local copy of sample *i*,
  encodes the output as a wire frame and sends it through the link emulator (user-space
  shaper) on its egress; it reports compute / encode / shaping / send times and bytes per
  sample, each delivery attributed to its own sample by the shaper's tag.
- ``EdgeAgent``: it decodes the frames of its inbound links, merges parts per sample until all
  arrive or the deadline passes (zero-filling what is missing), runs the merge shard and
  publishes the prediction with which parts arrived.

On ``start`` the link emulator's time zero is the orchestrator's (``t0_ns``), mapped onto the
board's monotonic clock with the clock-sync estimate. A ``trigger`` carries its sample's
timeout on that run clock (``expires_s``); one that arrives after it (held up by the control
plane, e.g. queued while the broker was down) is dropped and counted, not computed. A malformed
command is reported as an ``error`` telemetry and never stops the agent. It never imports
``testbed``. All blocking work runs on one worker thread per agent so paho's network thread
only enqueues.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linkemu.shaper import ShapedSender
from nodes import agentconfig
from nodes.agentconfig import AgentConfig, BoardConfig, EdgeConfig, RunStart, WearableConfig
from nodes.clocksync import ClockEstimate, ClockSyncClient
from nodes.codec import Decoder, encode_frame, run_id_hash, use_f16_backend
from nodes.energy.attribution import InferenceEnergy, Mark
from nodes.energy.board import BoardEnergy
from nodes.errors import AgentConfigError, NodeError
from nodes.merge import Merged, Merger
from nodes.mqtt import Login, MqttClient, Will, read_password_file, topic
from nodes.runtime import Runtime, configure_torch_threads, open_runtime
from nodes.transport import Transport, open_transport
from nodes.vocab import compression, encoding

_STOP = object()
LINK_UP_TIMEOUT_S = 30.0
MAX_WAIT_S = 1.0       # the serve loop wakes at least this often (no absurd queue timeouts)
MAX_T0_SKEW_S = 60.0   # a start's time zero further from now than this is not believed


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@dataclass(frozen=True)
class _Command:
    """A control message for the worker thread (already decoded, not yet checked)."""

    msg: dict[str, Any]


@dataclass(frozen=True)
class _Arrival:
    """A data-plane frame as it arrived at the edge, with both clocks stamped on arrival."""

    data: bytes
    mono: float
    wall_ns: int


@dataclass(frozen=True)
class _SampleTag:
    """What a wearable knows of one sample's frame when it submits it; the shaper hands it back
    with that frame's delivery."""

    sample: int
    compute_ms: float
    encode_ms: float
    nbytes: int
    submitted: float  # monotonic
    at_s: float       # when it was offered to the link emulator, in seconds of the run clock
    compute: tuple[Mark, Mark] | None = None   # the compute window's energy marks (a board with a meter)

    def fields(self) -> dict[str, Any]:
        return {"sample": self.sample, "compute_ms": self.compute_ms, "encode_ms": self.encode_ms,
                "bytes": self.nbytes, "at_s": round(self.at_s, 6)}


class Agent(ABC):
    """What both roles share. Use as a context manager (connect, sync clocks, load, say ready);
    ``serve()`` blocks until ``stop``."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.board = cfg.board
        self.role = cfg.role
        self.bench = cfg.bench
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._resources = ExitStack()  # transports, runtimes, shaper: closed in reverse order
        self._transports: list[Transport] = []
        self._run_hash = 0
        self._t0: float | None = None  # the run's time zero on this board's monotonic clock
        self.stale_triggers = 0        # triggers dropped because they came after their sample's timeout
        self._clock: ClockEstimate | None = None
        self._clock_sync = ClockSyncClient(lambda p: self._ctl.publish(self._topic("time"), p, qos=0))
        self._energy: BoardEnergy | None = None   # the board's power meter, when its inventory names one
        self._login = broker_login(cfg)
        self._ctl = MqttClient(
            host=cfg.broker.host, port=cfg.broker.port, client_id=f"agent-{self.bench}-{self.board}",
            will=Will(self._topic("status"), self._status_payload("offline")),
            on_message=self._on_control, login=self._login)

    # -- role hooks ------------------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None:
        """Load the shard and open the transports (registering them with ``_resources``)."""

    @abstractmethod
    def _trigger(self, sample: int) -> None:
        """The orchestrator triggered ``sample``."""

    @abstractmethod
    def _report(self) -> None:
        """Publish this role's periodic (and final) telemetry."""

    def _begin(self, t0: float) -> None:
        """The run's clock starts at monotonic ``t0`` (once)."""

    def _on_inbox(self, item: Any) -> None:
        """An inbox item that is not a command."""

    def _wake_at(self) -> float | None:
        """The next monotonic time the serve loop must wake for, besides telemetry."""
        return None

    def _tick(self, now: float) -> None:
        """Called on every turn of the serve loop."""

    def _radio(self) -> str:
        """The link profile whose radio this board keys (the model meter's radio power)."""
        return "ideal"

    def _energy_ready(self, energy: InferenceEnergy | None, payload: Any) -> None:
        """An inference filed with ``_energy.add`` has its energy (None: no reading came near it)."""

    # -- plumbing --------------------------------------------------------------------------
    def _topic(self, plane: str) -> str:
        return topic(self.bench, plane, self.board)

    def _status_payload(self, state: str, **extra: Any) -> bytes:
        return json.dumps({"board": self.board, "role": self.role, "state": state, "pid": os.getpid(),
                           "python": platform.python_version(), "net_ns": _net_ns(), **extra}).encode()

    def status(self, state: str, *, wait: float | None = None, **extra: Any) -> None:
        self._ctl.publish(self._topic("status"), self._status_payload(state, **extra), qos=1, retain=True,
                          wait=wait)

    def tele(self, kind: str, **fields: Any) -> None:
        self._ctl.publish(self._topic("tele"), json.dumps({"kind": kind, "board": self.board, **fields}), qos=1)

    def _on_control(self, _topic: str, payload: bytes) -> None:
        t4 = time.time_ns()  # first thing: the clock-sync reply's arrival stamp
        try:
            msg = json.loads(payload)
            if not isinstance(msg, dict) or "cmd" not in msg:
                raise ValueError("expected a JSON object with 'cmd'")
        except (ValueError, RecursionError) as exc:   # RecursionError: absurdly nested JSON
            self.tele("error", error=f"bad control message: {type(exc).__name__}: {str(exc)[:200]}")
            return
        if msg["cmd"] == "time":
            self._clock_sync.on_reply(msg, t4=t4)
            return
        self._inbox.put(_Command(msg))

    def _open_transport(self, spec: agentconfig.TransportEnd, *, receive: bool) -> Transport:
        try:
            settings = dict(spec.settings)
            if spec.type == "mqtt":   # a data link through the run's broker logs in as this board
                settings.update(self._login.settings())
            tr = open_transport(spec.type, receive=receive, **settings)
        except TypeError as exc:  # a setting the backend does not take, or one it needs
            raise AgentConfigError(f"{self.cfg.source}: {spec.type} transport: {exc}") from None
        if receive:
            tr.on_frame(lambda data: self._inbox.put(_Arrival(data, time.monotonic(), time.time_ns())))
        self._transports.append(self._resources.enter_context(tr))
        return tr

    def _open_runtime(self, name: str) -> Runtime:
        return self._resources.enter_context(open_runtime(self.cfg.runtime, self.cfg.path(name)))

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Agent:
        self._ctl.connect()
        self.status("starting")
        self._ctl.subscribe(self._topic("ctl"), qos=1)
        try:
            self._clock = self._clock_sync.run(probes=self.cfg.clock_probes)
            if self.cfg.energy is not None:   # first in, so last out: it measures the final sends too
                self._energy = self._resources.enter_context(BoardEnergy(self.cfg.energy, radio=self._radio()))
            self._load()
            self._wait_links_up()
        except Exception as exc:
            try:
                self.status("error", error=str(exc), wait=2.0)
                self._resources.close()
            finally:
                self._ctl.close()
            raise
        if self._energy is not None:
            self._energy.ready_at()
        self.status("ready", runtime=self.cfg.runtime, clock=self._clock.as_dict() if self._clock else None,
                    energy=self._energy.meter.describe() if self._energy and self._energy.meter else None)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._resources.close()  # the shaper drains before its transport closes; the meter closes last
            self._flush_energy(flush=True)
            self._report()
            # wait for the PUBACK: disconnecting before it makes the broker publish the last will
            self.status("stopped", wait=2.0)
        finally:
            self._ctl.close()

    def _wait_links_up(self, timeout_s: float = LINK_UP_TIMEOUT_S) -> None:
        """Connection-oriented links (BLE) must be up before this board says ready."""
        for tr in self._transports:
            wait = getattr(tr, "wait_connected", None)
            if callable(wait) and not wait(timeout_s):
                raise NodeError(f"{tr.type_name} link did not come up within {timeout_s:.0f} s")

    # -- main loop -------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._inbox.put(_STOP)

    def serve(self) -> None:
        period = 1.0 / self.cfg.telemetry_hz
        next_tele = time.monotonic() + period
        while True:
            now = time.monotonic()
            wake = self._wake_at()
            timeout = next_tele - now if wake is None else min(next_tele, wake) - now
            try:
                item = self._inbox.get(timeout=min(max(0.0, timeout), MAX_WAIT_S))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if isinstance(item, _Command):
                if not self._command(item.msg):
                    return
            elif item is not None:
                self._on_inbox(item)
            self._tick(time.monotonic())
            self._flush_energy()
            if time.monotonic() >= next_tele:
                next_tele += period
                self._report()

    def _flush_energy(self, *, flush: bool = False) -> None:
        if self._energy is not None:
            for energy, payload in self._energy.ready(flush=flush):
                self._energy_ready(energy, payload)

    def _report_power(self) -> None:
        """The meter's readings since the last report, in one message (never one per reading)."""
        batch = self._energy.batch() if self._energy is not None else None
        if batch is not None:
            self.tele("power", **batch)

    def _command(self, msg: dict[str, Any]) -> bool:
        """Obey one command; False means stop serving. A malformed one is reported, not fatal."""
        cmd = msg["cmd"]
        if cmd == "start":
            try:
                start = RunStart.from_message(msg)
            except AgentConfigError as exc:
                self.tele("error", error=str(exc))
                return True
            self._run_hash = run_id_hash(start.run)
            self._ensure_started(start)
            self.status("running", run=start.run)
        elif cmd == "trigger":
            sample = msg.get("sample")
            if isinstance(sample, bool) or not isinstance(sample, int):
                self.tele("error", error=f"trigger command: sample: expected an integer; got {sample!r}")
                return True
            expires = msg.get("expires_s")
            if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))
                                        or not math.isfinite(expires)):
                self.tele("error", error=f"trigger command: expires_s: expected seconds on the run clock; "
                                         f"got {str(expires)[:80]!r}")
                return True
            if expires is not None and self._expired(sample, expires):
                return True
            self._trigger(sample)
        elif cmd == "stop":
            return False
        else:
            self.tele("error", error=f"unknown command {cmd!r}; expected start, trigger, stop")
        return True

    def _expired(self, sample: int, expires_s: float) -> bool:
        """Whether a trigger comes after its sample's timeout (``expires_s`` on the run clock):
        the orchestrator has already counted the sample as timed out, so computing it would only
        delay the samples behind it (a backlog of triggers queued while the broker was down).
        Such a trigger is dropped and counted; the first one and the total go to this agent's
        log. Before the run clock starts nothing has expired."""
        if self._t0 is None:
            return False
        late_s = time.monotonic() - self._t0 - expires_s
        if late_s <= 0:
            return False
        self.stale_triggers += 1
        if self.stale_triggers == 1:
            print(f"agent {self.board}: trigger of sample {sample} dropped: it came {late_s:.2f} s after the "
                  f"sample's timeout (the control plane held it up); later such triggers are dropped and "
                  f"counted", file=sys.stderr, flush=True)
        return True

    def _ensure_started(self, start: RunStart | None = None) -> None:
        """Start the run's clock once: at the start command, its ``t0_ns`` mapped onto this
        board's clock with the clock-sync estimate; at arrival when there is no estimate, no
        ``t0_ns``, or a ``t0_ns`` more than MAX_T0_SKEW_S from now (a wrong clock or a forged
        command must not stall the link emulator), which is reported; at a trigger that comes
        first, now."""
        if self._t0 is not None:
            return
        if start is None:
            self._t0 = time.monotonic()
        else:
            offset_ns = self._clock.offset_ns if self._clock is not None else None
            self._t0, problem = start.board_t0(offset_ns=offset_ns, wall_ns=time.time_ns(), mono_s=time.monotonic(),
                                               max_skew_s=MAX_T0_SKEW_S)
            if problem:
                self.tele("error", error=problem)
        if self._energy is not None:
            self._energy.begin()
        self._begin(self._t0)


class WearableAgent(Agent):
    """Runs its student shard on a triggered sample and sends the encoded output, shaped, to the edge."""

    def __init__(self, cfg: WearableConfig) -> None:
        super().__init__(cfg)
        self.wcfg = cfg
        self._seq = 0
        self._encoding = encoding(cfg.link.encoding)
        self._compression = compression(cfg.link.compression)
        self._compression_level = cfg.link.compression_level
        self._runtime: Runtime | None = None
        self._samples: np.ndarray | None = None
        self._sender: ShapedSender[_SampleTag] = ShapedSender(self._deliver, cfg.link.profile)

    def _load(self) -> None:
        cfg = self.wcfg
        self._check_codec()
        self._runtime = self._open_runtime(cfg.shard)
        try:
            self._samples = np.load(cfg.path(cfg.samples), mmap_mode="r")
        except (OSError, ValueError) as exc:   # missing, or not a .npy array: one line, not a traceback
            raise AgentConfigError(f"{cfg.source}: samples: cannot load {cfg.path(cfg.samples)}: {exc}") from None
        self._runtime.run(np.asarray(self._samples[:1]))  # warm-up, so the first sample is not an outlier
        self._open_transport(cfg.link.transport, receive=False)
        self._resources.callback(self._sender.close)

    def _check_codec(self) -> None:
        """A bad compression level or a missing zstandard/lz4 fails here, once, not on every frame."""
        try:
            encode_frame(np.zeros(1, np.float32), run_id=0, sample_id=0, shard=self.wcfg.shard_index, seq=0, send_ts_ns=0,
                         encoding=self._encoding, compression=self._compression,
                         compression_level=self._compression_level)
        except (ValueError, ModuleNotFoundError) as exc:
            raise NodeError(f"link {self.wcfg.link.name}: {exc}") from None

    def _begin(self, t0: float) -> None:
        self._sender.start(t0=t0)

    def _trigger(self, sample: int) -> None:
        assert self._runtime is not None and self._samples is not None, "trigger before load"
        self._ensure_started()
        if not 0 <= sample < len(self._samples):
            self.tele("error", error=f"sample {sample} out of range 0..{len(self._samples) - 1}")
            return
        m0 = self._energy.mark() if self._energy is not None else None
        t0 = time.perf_counter()
        out = self._runtime.run(np.asarray(self._samples[sample:sample + 1]))
        t1 = time.perf_counter()
        m1 = self._energy.mark() if self._energy is not None else None
        self._seq += 1
        frame = encode_frame(out[0], run_id=self._run_hash, sample_id=sample, shard=self.wcfg.shard_index,
                             seq=self._seq, send_ts_ns=time.time_ns(), encoding=self._encoding,
                             compression=self._compression, compression_level=self._compression_level)
        t2 = time.perf_counter()
        now = time.monotonic()
        assert self._t0 is not None, "the run clock starts before the first trigger"
        tag = _SampleTag(sample=sample, compute_ms=_ms(t1 - t0), encode_ms=_ms(t2 - t1), nbytes=len(frame),
                         submitted=now, at_s=now - self._t0, compute=None if m0 is None else (m0, m1))
        verdict = self._sender.submit(frame, tag=tag)
        if not verdict.accepted:
            self._sample_tele(tag, None, **tag.fields(), verdict=verdict.reason)

    def _deliver(self, frame: bytes, tag: _SampleTag | None) -> bool:
        """Called by the shaper's worker at each frame's delivery time, with that frame's tag.

        False (or the transport's exception, raised again once the sample's verdict is out) when
        the transport did not take the frame: the shaper counts it a drop of the link (dropped_send)."""
        assert tag is not None, "every frame is submitted with its sample's tag"
        m2 = self._energy.mark() if self._energy is not None else None
        t0 = time.monotonic()
        failure: Exception | None = None
        try:
            ok = self._transports[0].send(frame)
        except Exception as exc:  # noqa: BLE001 - a send_failed verdict, then the shaper counts it
            ok, failure = False, exc
        t1 = time.monotonic()
        if self._energy is not None:   # the model meter's radio: the frame's airtime on the emulated link
            self._energy.credit_airtime(self.wcfg.link.profile.airtime_s(len(frame)))
        m3 = self._energy.mark() if self._energy is not None else None
        self._sample_tele(tag, None if m2 is None else (m2, m3), **tag.fields(), shaping_ms=_ms(t0 - tag.submitted),
                          send_ms=_ms(t1 - t0), verdict="sent" if ok else "send_failed")
        if failure is not None:
            raise failure
        return bool(ok)

    def _sample_tele(self, tag: _SampleTag, transmit: tuple[Mark, Mark] | None, **fields: Any) -> None:
        """The sample's telemetry: now, or once its energy is known when the board has a meter."""
        if self._energy is None or tag.compute is None:
            self.tele("sample", **fields)
        else:
            self._energy.add(tag.sample, compute=tag.compute, transmit=transmit, payload=fields)

    def _energy_ready(self, energy: InferenceEnergy | None, payload: Any) -> None:
        self.tele("sample", **payload, **(energy.fields() if energy is not None else {"energy_mj": None}))

    def _radio(self) -> str:
        return self.wcfg.link.profile.name

    def _report(self) -> None:
        self._report_power()
        link = self.wcfg.link
        self.tele("link", link=link.name, **self._sender.snapshot(), shaper=link.shaper,
                  transport=_transport_stats(self._transports[0]))


class EdgeAgent(Agent):
    """Decodes its inbound frames, merges the parts of each sample and publishes the prediction."""

    def __init__(self, cfg: EdgeConfig) -> None:
        super().__init__(cfg)
        self.ecfg = cfg
        merge = cfg.merge
        try:
            self._merger = Merger(parts=merge.parts, part_dim=merge.part_dim, deadline_s=merge.deadline_ms / 1000.0,
                                  rule=merge.rule, student_part=merge.student_part)
        except ValueError as exc:
            raise AgentConfigError(f"{cfg.source}: merge: {exc}") from None
        # every inbound link carries one part of part_dim values: a frame declaring more is refused from its
        # header (counted too_large), and nothing inflates past one part
        self._decoder = Decoder(max_values=merge.part_dim)
        self._merge_rt: Runtime | None = None
        self._frame_ts: OrderedDict[tuple[int, int], tuple[int, int]] = OrderedDict()

    def _load(self) -> None:
        merge = self.ecfg.merge
        self._merge_rt = self._open_runtime(merge.shard)
        self._merge_rt.run(np.zeros((1, self._merger.slots * merge.part_dim), dtype=np.float32))
        for link in self.ecfg.inbound:
            self._open_transport(link.transport, receive=True)

    def _trigger(self, sample: int) -> None:
        self._merger.expect(sample, time.monotonic())

    def _wake_at(self) -> float | None:
        return self._merger.next_deadline()

    def _tick(self, now: float) -> None:
        for merged in self._merger.expire(now):
            self._emit(merged)

    def _on_inbox(self, item: Any) -> None:
        if isinstance(item, _Arrival):
            self._frame(item)

    def _frame(self, arrival: _Arrival) -> None:
        frame = self._decoder.decode(arrival.data)
        if frame is None:
            return
        self._frame_ts[(frame.sample_id, frame.shard)] = (frame.send_ts_ns, arrival.wall_ns)
        while len(self._frame_ts) > 10_000:  # late frames of merged samples are never popped
            self._frame_ts.popitem(last=False)
        merged = self._merger.add(frame.sample_id, frame.shard, frame.array, arrival.mono)
        if merged is not None:
            self._emit(merged)

    def _emit(self, merged: Merged) -> None:
        assert self._merge_rt is not None, "merge before load"
        m0 = self._energy.mark() if self._energy is not None else None
        t0 = time.perf_counter()
        logits = self._merge_rt.run(merged.inputs)[0]
        t1 = time.perf_counter()
        if self._energy is not None and m0 is not None:
            self._energy.add(merged.sample_id, compute=(m0, self._energy.mark()), payload=merged.sample_id)
        transit = {str(p): self._frame_ts.pop((merged.sample_id, p)) for p in merged.arrived
                   if (merged.sample_id, p) in self._frame_ts}
        self.tele("result", sample=merged.sample_id, pred=int(np.argmax(logits)), arrived=list(merged.arrived),
                  missing=list(merged.missing), merge_ms=_ms(t1 - t0), waited_ms=_ms(merged.waited_s),
                  transit=transit)

    def _energy_ready(self, energy: InferenceEnergy | None, payload: Any) -> None:
        """The merge's energy, after its result went out (a result never waits for a reading)."""
        self.tele("energy", sample=payload, **(energy.fields() if energy is not None else {"energy_mj": None}))

    def _report(self) -> None:
        self._report_power()
        self.tele("edge", decode=self._decoder.stats.as_dict(), merge=self._merger.stats.as_dict(),
                  transports={lk.name: _transport_stats(tr) for lk, tr in zip(self.ecfg.inbound, self._transports)})


def agent_for(cfg: BoardConfig) -> Agent:
    """The agent of ``cfg``'s role (not yet entered)."""
    if isinstance(cfg, WearableConfig):
        return WearableAgent(cfg)
    if isinstance(cfg, EdgeConfig):
        return EdgeAgent(cfg)
    raise AgentConfigError(f"no agent for a config of type {type(cfg).__name__}")


def _net_ns() -> str | None:
    """This process's network namespace, e.g. ``net:[4026531840]`` (None off Linux)."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


def _transport_stats(tr: Transport) -> dict[str, Any]:
    """A transport's counters, plus its stream decoder's (serial) where it has one."""
    stats = dict(tr.counters.as_dict())
    extra = getattr(tr, "decoder_stats", None)
    if callable(extra):
        stats["decoder"] = extra()
    return stats


def _configure_process(cfg: agentconfig.AgentConfig) -> None:
    """The process-wide choices of a board, made once here (never in a constructor): a
    ``torch`` board runs torch on one thread and casts float16 with torch's vectorised casts;
    a LiteRT board never imports torch and keeps the numpy casts."""
    if cfg.runtime == "torch":
        configure_torch_threads(1)
        use_f16_backend("torch")


def broker_login(cfg: AgentConfig) -> Login:
    """How this board logs in to the broker: its user name, the password read from the
    config's ``password_file`` (``~`` is this user's home; relative to agent.json's folder), and
    the TLS files. AgentConfigError naming the field when the file cannot be read."""
    b = cfg.broker

    def where(name: str | None) -> str | None:
        return None if name is None else str(cfg.path(os.path.expanduser(name)))

    password = None
    if b.password_file is not None:
        try:
            password = read_password_file(where(b.password_file) or "")
        except NodeError as exc:
            raise AgentConfigError(f"{cfg.source}: broker.password_file: {exc}") from None
    return Login(username=b.username, password=password, ca_file=where(b.ca_file), cert_file=where(b.cert_file),
                 key_file=where(b.key_file))


def main(argv: list[str] | None = None, *, install_signals: bool = True,
         on_ready: Callable[[Agent], None] | None = None) -> int:
    """Run an agent; 0 after ``stop``, 2 for a config it refuses (one line on stderr, also when
    a transport refuses its settings), 1 for a board that failed to start otherwise."""
    parser = argparse.ArgumentParser(prog="python -m nodes.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="agent.json written by the orchestrator")
    args = parser.parse_args(argv)
    try:
        cfg = agentconfig.load(args.config)
        agent = agent_for(cfg)
    except AgentConfigError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        _configure_process(cfg)
        with agent:
            if install_signals:
                signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
                signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
            # one line each way in the agent's log: a board's log says when it ran and with what
            print(f"agent {cfg.board}: ready ({cfg.role}, runtime {cfg.runtime}, pid {os.getpid()}, "
                  f"config {args.config})", file=sys.stderr, flush=True)
            if on_ready:
                on_ready(agent)
            agent.serve()
    except NodeError as exc:
        print(f"agent {cfg.board}: {exc}", file=sys.stderr)
        return exc.exit_code
    stale = f" ({agent.stale_triggers} trigger(s) dropped: they came after their sample's timeout)" \
        if agent.stale_triggers else ""
    print(f"agent {cfg.board}: stopped{stale}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
