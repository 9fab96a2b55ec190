"""Deploying a bundle to boards, and the agent processes of local (simulated) boards.

Holds ``agent_config`` (the typed board config, ``nodes.agentconfig``, that a board's agent
reads as agent.json), ``deploy_local`` (copies a board's shard files and its sample inputs
into its board directory, checking hashes, and writes agent.json) and
``AgentProcess`` (``python -m nodes.agent`` as a subprocess with its log in the board dir,
terminated in ``finally``; ``prefix`` runs it through e.g. ``ip netns exec NS``, which execs,
so the pid is the agent's own). SSH deploy to physical boards builds on the same agent.json.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linkemu.profile import LinkProfile
from nodes.agentconfig import (BoardConfig, Broker, EdgeConfig, EnergyConfig, InboundLink, MergeSpec, TransportEnd,
                               WearableConfig, WearableLink)
from testbed.bundle import BundleError, sha256_file, shard_for
from testbed.config import BoardSpec, Inventory, LinkSpec
from testbed.errors import RunError

SAMPLES_FILE = "samples.npy"  # a wearable's local copy of the sample inputs, beside its agent.json


def agent_config(*, inventory: Inventory, board: BoardSpec, manifest: dict[str, Any], assignment: Any,
                 broker_host: str, broker_port: int, deadline_ms: float, profiles: dict[str, LinkProfile],
                 endpoint: Callable[[LinkSpec, str], dict[str, Any]], telemetry_hz: float = 2.0,
                 quantize: str = "none", shapers: Mapping[str, str] | None = None,
                 broker_login: Mapping[str, str | None] | None = None) -> BoardConfig:
    """The board config (agent.json) of ``board``; ``profiles`` are the profiles the agents'
    user-space shapers apply (the links' effective profiles, faults merged; ideal where the
    kernel shapes), ``endpoint(link, "tx" | "rx")`` gives each end's transport settings,
    ``shapers`` says which shaper each link uses (default "user"; reported in the link
    telemetry). The shard file is the one the board's runtime loads (``quantize``: which
    LiteRT variant ``tflite`` boards get). ``broker_login`` is the board's broker login as
    agent.json carries it (username, password_file, ca_file, cert_file, key_file: names of
    files, never a password); None: anonymous."""
    energy = None if board.energy is None else EnergyConfig(meter=board.energy.meter, settings=board.energy.settings,
                                                            kind=board.kind)
    common: dict[str, Any] = dict(bench=inventory.bench, board=board.name, runtime=board.runtime,
                                  broker=Broker(host=broker_host, port=broker_port, **(broker_login or {})), telemetry_hz=telemetry_hz,
                                  energy=energy)
    if board.role == "wearable":
        shard = shard_for(manifest, role="student", index=int(assignment), runtime=board.runtime,
                          quantize=quantize)
        link = inventory.link_from(board.name)
        return WearableConfig(
            **common, shard=shard["file"], shard_index=int(shard["part"]), samples=SAMPLES_FILE,
            link=WearableLink(name=link.name, transport=TransportEnd.of(endpoint(link, "tx")),
                              profile=profiles[link.name], encoding=link.encoding, compression=link.compression,
                              compression_level=link.compression_level,
                              shaper=(shapers or {}).get(link.name, "user")))
    shard = shard_for(manifest, role="merge", runtime=board.runtime, quantize=quantize)
    return EdgeConfig(
        **common,
        merge=MergeSpec(shard=shard["file"], parts=tuple(range(int(manifest["students"]))),
                        student_part=tuple(manifest["student_part"]), part_dim=int(manifest["part_dim"]),
                        deadline_ms=deadline_ms, rule=manifest["merge_rule"]),
        inbound=tuple(InboundLink(name=lk.name, transport=TransportEnd.of(endpoint(lk, "rx")))
                      for lk in inventory.links if lk.dst == board.name))


def deploy_local(*, bundle_dir: Path, board_dir: Path, manifest: dict[str, Any], cfg: BoardConfig,
                 samples: np.ndarray | None) -> Path:
    """Copy the shard ``cfg`` names into ``board_dir`` (hash-checked), save ``samples`` there
    (a wearable's inputs) and write agent.json; returns its path."""
    board_dir.mkdir(parents=True, exist_ok=True)
    shard_file = cfg.shard_file
    entry = next(e for s in manifest["shards"] for e in (s, *s.get("alternates", ())) if e["file"] == shard_file)
    dst = board_dir / shard_file
    shutil.copyfile(bundle_dir / shard_file, dst)
    if sha256_file(dst) != entry["sha256"]:
        raise BundleError(f"{dst}: sha256 differs from the manifest after copying")
    if samples is not None:
        np.save(board_dir / SAMPLES_FILE, np.ascontiguousarray(samples, dtype=np.float32))
    return cfg.write(board_dir / "agent.json")


@dataclass
class AgentProcess:
    """A local agent subprocess. ``with AgentProcess(name=..., config=...) as p: p.pid``."""

    name: str
    config: Path
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    prefix: Sequence[str] = ()
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log: Any = field(default=None, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.config.parent / "agent.log"

    def start(self) -> AgentProcess:
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **self.env}
        root = str(Path(__file__).resolve().parent.parent)  # so an uninstalled checkout works too
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self._proc = subprocess.Popen([*self.prefix, self.python, "-m", "nodes.agent",
                                           "--config", str(self.config.resolve())],
                                          stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.config.parent, env=env)
        except OSError as exc:
            self._log.close()
            raise RunError(f"cannot start agent {self.name}: {exc}") from exc
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def poll(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def kill(self) -> None:
        """SIGKILL, as a fault: no clean disconnect, the broker publishes the last will."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, *, timeout: float = 5.0) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                if self.wait(timeout) is None:
                    self._proc.kill()
                    self._proc.wait(timeout=timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
