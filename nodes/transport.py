"""Data-plane transports: one facade, backends chosen by name from a link's ``transport.type``.

Holds the ``Transport`` ABC (send a frame, deliver received frames to a callback, counters,
context manager) and the MQTT backend (one topic per link, QoS 0 by default: a lost frame is
a lost frame). Serial and BLE backends plug into the same registry. Each backend's settings and
their checks live in ``nodes.transport_settings``. Transports move opaque frame bytes; encoding
and link shaping happen elsewhere.
"""
from __future__ import annotations

import itertools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from nodes.errors import TransportError
from nodes.mqtt import Login, MqttClient
from nodes.registry import Registry
from nodes.transport_settings import check_settings

FrameHandler = Callable[[bytes], None]


@dataclass
class TransportCounters:
    frames_sent: int = 0
    bytes_sent: int = 0
    send_failures: int = 0
    frames_received: int = 0
    bytes_received: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Transport(ABC):
    """One end of one link."""

    type_name = "?"

    def __init__(self) -> None:
        self.counters = TransportCounters()
        self._receiver: FrameHandler | None = None

    @abstractmethod
    def open(self) -> Transport:
        """Connect; returns self."""

    @abstractmethod
    def _send(self, frame: bytes) -> bool:
        """Backend send; False when the frame was refused."""

    @abstractmethod
    def close(self) -> None:
        """Disconnect and release everything this transport opened."""

    def send(self, frame: bytes) -> bool:
        ok = self._send(frame)
        if ok:
            self.counters.frames_sent += 1
            self.counters.bytes_sent += len(frame)
        else:
            self.counters.send_failures += 1
        return ok

    def on_frame(self, handler: FrameHandler) -> None:
        """Register the callback that receives every frame (called from a transport thread)."""
        self._receiver = handler

    def _deliver(self, frame: bytes) -> None:
        self.counters.frames_received += 1
        self.counters.bytes_received += len(frame)
        if self._receiver is not None:
            self._receiver(frame)

    def __enter__(self) -> Transport:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


TRANSPORTS: Registry[Transport] = Registry("transport", error=TransportError)
_ids = itertools.count()


@TRANSPORTS.register("mqtt")
class MqttTransport(Transport):
    """Frames as MQTT messages on one topic (the link's), through a broker."""

    type_name = "mqtt"

    def __init__(self, *, host: str, port: int, topic: str, receive: bool, qos: int = 0,
                 max_queued: int = 1000, client_id: str | None = None, **more: object) -> None:
        super().__init__()
        s = check_settings("mqtt", {"host": host, "port": port, "topic": topic, "receive": receive, "qos": qos,
                                    "max_queued": max_queued, "client_id": client_id, **more})
        self.topic, self.qos, self.receive = s["topic"], s["qos"], s["receive"]
        cid = s["client_id"] or f"data-{os.getpid()}-{next(_ids)}"
        self._client = MqttClient(host=s["host"], port=s["port"], client_id=cid, max_queued=s["max_queued"],
                                  on_message=lambda _t, payload: self._deliver(payload), login=Login.of(s))

    def open(self) -> MqttTransport:
        if self.receive:
            self._client.subscribe(self.topic, qos=self.qos)
        self._client.connect()
        return self

    def _send(self, frame: bytes) -> bool:
        return self._client.publish(self.topic, frame, qos=self.qos)

    def close(self) -> None:
        self._client.close()


# Backends with their own dependencies are imported only when a link uses them.
TRANSPORTS.register_lazy("serial", "nodes.serial_transport:SerialTransport")
TRANSPORTS.register_lazy("ble", "nodes.ble_transport:BleTransport")


def open_transport(type_name: str, **settings: object) -> Transport:
    """Construct (not yet open) the transport backend called ``type_name``."""
    return TRANSPORTS.get(type_name)(**settings)
