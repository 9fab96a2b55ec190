"""The board agent: ``python -m nodes.agent --config agent.json``.

Holds the process that runs on every board. It connects to the control plane (MQTT topics
``tb/<bench>/ctl|tele|status/<board>``, retained status with a last-will "offline"), loads its
shard, opens its data-plane transports and then obeys commands:

- wearable: on ``trigger`` it runs its student shard on its local copy of sample *i*, encodes
  the output as a wire frame and sends it through the link emulator (user-space shaper) on its
  egress; it reports compute / encode / shaping / send times and bytes per sample.
- edge: it decodes the frames of its inbound links, merges parts per sample until all arrive or
  the deadline passes (zero-filling what is missing), runs the merge shard and publishes the
  prediction with which parts arrived.

It never imports ``testbed``. All blocking work runs on one worker thread per agent so paho's
network thread only enqueues.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from linkemu.profile import LinkProfile
from linkemu.shaper import ShapedSender
from nodes.clocksync import ClockEstimate, ClockSyncClient
from nodes.codec import Decoder, encode_frame, run_id_hash
from nodes.vocab import COMPRESSIONS, ENCODINGS
from nodes.errors import NodeError
from nodes.merge import Merger
from nodes.mqtt import MqttClient, Will, topic
from nodes.runtime import Runtime, open_runtime
from nodes.transport import Transport, open_transport

_STOP = object()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def load_config(path: Path) -> dict[str, Any]:
    """Read agent.json; relative file names in it are relative to its folder."""
    cfg = json.loads(Path(path).read_text())
    cfg["_dir"] = str(Path(path).resolve().parent)
    return cfg


class Agent:
    """One board's agent. Use as a context manager; ``serve()`` blocks until ``stop``."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.board: str = cfg["board"]
        self.role: str = cfg["role"]
        self.bench: str = cfg["bench"]
        self._dir = Path(cfg["_dir"])
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._stopped = threading.Event()
        self._run_hash = 0
        self._seq = 0
        self._t0: float | None = None
        self._runtime: Runtime | None = None
        self._merge_rt: Runtime | None = None
        self._transports: list[Transport] = []
        self._sender: ShapedSender | None = None
        self._pending_meta: deque[dict[str, Any]] = deque()
        self._decoder = Decoder()
        self._merger: Merger | None = None
        self._samples: np.ndarray | None = None
        self._frame_ts: OrderedDict[tuple[int, int], tuple[int, int]] = OrderedDict()
        self._clock: ClockEstimate | None = None
        self._clock_sync = ClockSyncClient(lambda p: self._ctl.publish(self._topic("time"), p, qos=0))
        broker = cfg["broker"]
        self._ctl = MqttClient(
            host=broker["host"], port=int(broker["port"]), client_id=f"agent-{self.bench}-{self.board}",
            will=Will(self._topic("status"), self._status_payload("offline")),
            on_message=self._on_control)

    # -- plumbing --------------------------------------------------------------------------
    def _topic(self, plane: str) -> str:
        return topic(self.bench, plane, self.board)

    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self._dir / p

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
        except ValueError as exc:
            self.tele("error", error=f"bad control message: {exc}")
            return
        if msg["cmd"] == "time":
            self._clock_sync.on_reply(msg, t4=t4)
            return
        self._inbox.put(("cmd", msg))

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Agent:
        self._ctl.connect()
        self.status("starting")
        self._ctl.subscribe(self._topic("ctl"), qos=1)
        try:
            self._clock = self._clock_sync.run(probes=int(self.cfg.get("clock_probes", 8)))
            self._load()
        except Exception as exc:
            self.status("error", error=str(exc), wait=2.0)
            self._ctl.close()
            raise
        self.status("ready", runtime=self.cfg["runtime"], clock=self._clock.as_dict() if self._clock else None)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._sender is not None:
                self._sender.close()
                self._report_link()
            for tr in reversed(self._transports):
                tr.close()
            if self._merger is not None:
                self._report_edge()
            for rt in (self._merge_rt, self._runtime):
                if rt is not None:
                    rt.close()
            # wait for the PUBACK: disconnecting before it makes the broker publish the last will
            self.status("stopped", wait=2.0)
        finally:
            self._ctl.close()

    def _load(self) -> None:
        if self.role == "wearable":
            self._load_wearable()
        elif self.role == "edge":
            self._load_edge()
        else:
            raise NodeError(f"role must be wearable or edge, got {self.role!r}")
        self._wait_links_up()

    def _wait_links_up(self, timeout_s: float = 30.0) -> None:
        """Connection-oriented links (BLE) must be up before this board says ready."""
        for tr in self._transports:
            wait = getattr(tr, "wait_connected", None)
            if callable(wait) and not wait(timeout_s):
                raise NodeError(f"{tr.type_name} link did not come up within {timeout_s:.0f} s")

    def _load_wearable(self) -> None:
        self._runtime = open_runtime(self.cfg["runtime"], self._path(self.cfg["shard"]))
        self._samples = np.load(self._path(self.cfg["samples"]), mmap_mode="r")
        self._runtime.run(np.asarray(self._samples[:1]))  # warm-up, so the first sample is not an outlier
        link = self.cfg["link"]
        tr = open_transport(link["transport"]["type"], receive=False,
                            **{k: v for k, v in link["transport"].items() if k != "type"})
        self._transports.append(tr.open())
        try:
            self._encoding = ENCODINGS[link.get("encoding", "f32")]
            self._compression = COMPRESSIONS[link.get("compression", "none")]
            self._compression_level = link.get("compression_level")
        except KeyError as exc:
            raise NodeError(f"link {link['name']}: unknown encoding/compression {exc}; expected "
                            f"{', '.join(ENCODINGS)} and {', '.join(COMPRESSIONS)}") from None
        try:   # a bad level or a missing zstandard/lz4 fails here, once, not on every frame
            encode_frame(np.zeros(1, np.float32), run_id=0, sample_id=0, shard=0, seq=0, send_ts_ns=0,
                         encoding=self._encoding, compression=self._compression,
                         compression_level=self._compression_level)
        except (ValueError, ModuleNotFoundError) as exc:
            raise NodeError(f"link {link['name']}: {exc}") from None
        self._sender = ShapedSender(self._send_frame, LinkProfile.from_dict(link["profile"]))

    def _load_edge(self) -> None:
        merge = self.cfg["merge"]
        self._merger = Merger(parts=merge["parts"], part_dim=merge["part_dim"],
                              deadline_s=merge["deadline_ms"] / 1000.0, rule=merge.get("rule", "concat"),
                              student_part=merge.get("student_part"))
        self._merge_rt = open_runtime(self.cfg["runtime"], self._path(merge["shard"]))
        self._merge_rt.run(np.zeros((1, self._merger.slots * merge["part_dim"]), dtype=np.float32))
        for link in self.cfg["inbound"]:
            tr = open_transport(link["transport"]["type"], receive=True,
                                **{k: v for k, v in link["transport"].items() if k != "type"})
            tr.on_frame(lambda data: self._inbox.put(("frame", data, time.monotonic(), time.time_ns())))
            self._transports.append(tr.open())

    # -- main loop -------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._inbox.put(_STOP)

    def serve(self) -> None:
        period = 1.0 / float(self.cfg.get("telemetry_hz", 2.0))
        next_tele = time.monotonic() + period
        while True:
            now = time.monotonic()
            timeout = next_tele - now
            if self._merger is not None and (dl := self._merger.next_deadline()) is not None:
                timeout = min(timeout, dl - now)
            try:
                item = self._inbox.get(timeout=max(0.0, timeout))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None and item[0] == "cmd":
                if not self._command(item[1]):
                    return
            elif item is not None and item[0] == "frame":
                self._frame(item[1], item[2], item[3])
            if self._merger is not None:
                for merged in self._merger.expire(time.monotonic()):
                    self._emit(merged)
            if time.monotonic() >= next_tele:
                next_tele += period
                self._periodic()

    def _command(self, msg: dict[str, Any]) -> bool:
        cmd = msg["cmd"]
        if cmd == "start":
            self._run_hash = run_id_hash(str(msg.get("run", "")))
            self._ensure_started()
            self.status("running", run=msg.get("run"))
        elif cmd == "trigger":
            self._trigger(int(msg["sample"]))
        elif cmd == "stop":
            return False
        else:
            self.tele("error", error=f"unknown command {cmd!r}; expected start, trigger, stop")
        return True

    def _ensure_started(self) -> None:
        """Start the link emulator's clock (outage schedule) once, at the first start or trigger."""
        if self._t0 is None:
            self._t0 = time.monotonic()
            if self._sender is not None:
                self._sender.start(t0=self._t0)

    # -- wearable --------------------------------------------------------------------------
    def _trigger(self, sample: int) -> None:
        if self._merger is not None:
            self._merger.expect(sample, time.monotonic())
            return
        assert self._runtime is not None and self._samples is not None and self._sender is not None
        self._ensure_started()
        if not 0 <= sample < len(self._samples):
            self.tele("error", error=f"sample {sample} out of range 0..{len(self._samples) - 1}")
            return
        t0 = time.perf_counter()
        out = self._runtime.run(np.asarray(self._samples[sample:sample + 1]))
        t1 = time.perf_counter()
        self._seq += 1
        frame = encode_frame(out[0], run_id=self._run_hash, sample_id=sample, shard=int(self.cfg["shard_index"]),
                             seq=self._seq, send_ts_ns=time.time_ns(), encoding=self._encoding,
                             compression=self._compression, compression_level=self._compression_level)
        t2 = time.perf_counter()
        meta = {"sample": sample, "compute_ms": _ms(t1 - t0), "encode_ms": _ms(t2 - t1), "bytes": len(frame),
                "submitted": time.monotonic()}
        self._pending_meta.append(meta)
        verdict = self._sender.submit(frame)
        if verdict.deliver_at is None:
            self._pending_meta.pop()
            meta.pop("submitted")
            self.tele("sample", **meta, verdict=verdict.reason)

    def _send_frame(self, frame: bytes) -> None:
        """Called by the shaper's worker at each frame's delivery time, in order."""
        meta = self._pending_meta.popleft() if self._pending_meta else {}
        t0 = time.monotonic()
        ok = self._transports[0].send(frame)
        t1 = time.monotonic()
        submitted = meta.pop("submitted", t0)
        self.tele("sample", **meta, shaping_ms=_ms(t0 - submitted), send_ms=_ms(t1 - t0),
                  verdict="sent" if ok else "send_failed")

    def _report_link(self) -> None:
        assert self._sender is not None
        self.tele("link", link=self.cfg["link"]["name"], **self._sender.snapshot(),
                  shaper=self.cfg["link"].get("shaper", "user"), transport=_transport_stats(self._transports[0]))

    # -- edge ------------------------------------------------------------------------------
    def _frame(self, data: bytes, arrived_at: float, arrived_ns: int) -> None:
        assert self._merger is not None
        frame = self._decoder.decode(data)
        if frame is None:
            return
        self._frame_ts[(frame.sample_id, frame.shard)] = (frame.send_ts_ns, arrived_ns)
        while len(self._frame_ts) > 10_000:  # late frames of merged samples are never popped
            self._frame_ts.popitem(last=False)
        merged = self._merger.add(frame.sample_id, frame.shard, frame.array, arrived_at)
        if merged is not None:
            self._emit(merged)

    def _emit(self, merged: Any) -> None:
        assert self._merge_rt is not None
        t0 = time.perf_counter()
        logits = self._merge_rt.run(merged.inputs)[0]
        t1 = time.perf_counter()
        transit = {str(p): self._frame_ts.pop((merged.sample_id, p)) for p in merged.arrived
                   if (merged.sample_id, p) in self._frame_ts}
        self.tele("result", sample=merged.sample_id, pred=int(np.argmax(logits)), arrived=list(merged.arrived),
                  missing=list(merged.missing), merge_ms=_ms(t1 - t0), waited_ms=_ms(merged.waited_s),
                  transit=transit)

    def _report_edge(self) -> None:
        assert self._merger is not None
        self.tele("edge", decode=self._decoder.stats.as_dict(), merge=self._merger.stats.as_dict(),
                  transports={lk["name"]: _transport_stats(tr) for lk, tr in zip(self.cfg["inbound"], self._transports)})

    def _periodic(self) -> None:
        if self._sender is not None:
            self._report_link()
        if self._merger is not None:
            self._report_edge()


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


def main(argv: list[str] | None = None, *, install_signals: bool = True,
         on_ready: Callable[[Agent], None] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodes.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="agent.json written by the orchestrator")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except (OSError, ValueError) as exc:
        print(f"agent: {args.config}: cannot read config ({exc})", file=sys.stderr)
        return 2
    try:
        with Agent(cfg) as agent:
            if install_signals:
                signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
                signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
            if on_ready:
                on_ready(agent)
            agent.serve()
    except NodeError as exc:
        print(f"agent {cfg.get('board')}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
