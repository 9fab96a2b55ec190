"""paho-mqtt 2.x helpers shared by the control plane and the MQTT data-plane transport.

Holds ``MqttClient``: a connected paho client with its network loop in a background thread,
auto-reconnect, and a context manager that disconnects in ``finally``. Topic naming lives
here too so every component agrees on ``tb/<bench>/...``. ``Login`` is how a client proves
who it is (user name, password, TLS files); its password never shows in a repr, and
``read_password_file`` reads one from the 0600 file it is handed in. A broker that refuses the
login is a ``TransportError`` at once (no retries until the timeout), naming the reason.
"""
from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from nodes.errors import TransportError

MessageHandler = Callable[[str, bytes], None]


def topic(bench: str, plane: str, name: str) -> str:
    """``tb/<bench>/<plane>/<name>``; plane is ctl | tele | status | data."""
    return f"tb/{bench}/{plane}/{name}"


@dataclass(frozen=True)
class Login:
    """A client's credentials: ``username``/``password`` (None: anonymous) and TLS: ``ca_file``
    (TLS on, the broker's certificate checked against it), ``cert_file``/``key_file`` (a client
    certificate). ``password`` is left out of the repr."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def settings(self) -> dict[str, str]:
        """The fields that are set, as MQTT transport settings (``nodes.transport_settings``)."""
        return {k: v for k, v in (("username", self.username), ("password", self.password),
                                  ("ca_file", self.ca_file), ("cert_file", self.cert_file),
                                  ("key_file", self.key_file)) if v is not None}

    @classmethod
    def of(cls, settings: dict[str, object]) -> Login:
        """The inverse of ``settings``: a Login from a transport's settings (absent keys: None)."""
        def get(k: str) -> str | None:
            v = settings.get(k)
            return None if v is None else str(v)
        return cls(username=get("username"), password=get("password"), ca_file=get("ca_file"),
                   cert_file=get("cert_file"), key_file=get("key_file"))


def read_password_file(path: str | Path) -> str:
    """The password in ``path``: its first line, without the line end. TransportError, naming
    the file (never its content), when it cannot be read or is empty."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TransportError(f"broker password file {path}: cannot read ({exc.strerror or exc})") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise TransportError(f"broker password file {path}: expected the password on its first line; the file is empty")
    return lines[0]


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttClient:
    """One broker connection. ``on_message(topic, payload)`` runs on paho's network thread."""

    def __init__(self, *, host: str, port: int, client_id: str, will: Will | None = None,
                 on_message: MessageHandler | None = None, keepalive: int = 10,
                 max_queued: int = 0, login: Login | None = None) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self._subs: dict[str, int] = {}
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._answered = threading.Event()   # the broker answered a CONNECT (accepted or refused)
        self.refused: str | None = None      # the broker's reason when it refused our login
        self._handler = on_message
        self.disconnects = 0
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv311)
        login = login or Login()
        if login.username is not None:
            self._client.username_pw_set(login.username, login.password)
        if login.tls:
            try:
                self._client.tls_set(ca_certs=login.ca_file, certfile=login.cert_file, keyfile=login.key_file,
                                     cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise TransportError(f"MQTT TLS files (ca {login.ca_file}, cert {login.cert_file}, key "
                                     f"{login.key_file}): cannot load ({exc})") from None
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        if max_queued:
            self._client.max_queued_messages_set(max_queued)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._keepalive = keepalive

    # -- lifecycle -------------------------------------------------------------------------
    def connect(self, *, timeout: float = 10.0) -> MqttClient:
        try:
            self._client.connect(self.host, self.port, keepalive=self._keepalive)
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with MQTT broker {self.host}:{self.port} failed ({exc})") from exc
        except OSError as exc:
            raise TransportError(f"cannot reach MQTT broker {self.host}:{self.port} ({exc})") from exc
        self._client.loop_start()
        if not self._answered.wait(timeout) or not self._connected.is_set():
            self._client.disconnect()
            self._client.loop_stop()
            if self.refused is not None:
                raise TransportError(f"MQTT broker {self.host}:{self.port} refused {self.client_id!r}: {self.refused}")
            raise TransportError(f"MQTT broker {self.host}:{self.port} did not accept {self.client_id!r} "
                                 f"within {timeout:.0f} s")
        return self

    def close(self, *, timeout: float = 2.0) -> None:
        """Clean DISCONNECT (so the broker does not publish the last will), then stop the loop."""
        try:
            if self._connected.is_set():
                self._disconnected.clear()
                self._client.disconnect()
                self._disconnected.wait(timeout)
            else:
                self._client.disconnect()
        finally:
            self._client.loop_stop()

    def __enter__(self) -> MqttClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- messaging -------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        self._subs[topic_filter] = qos
        self._client.subscribe(topic_filter, qos=qos)

    def publish(self, topic_name: str, payload: bytes | str, *, qos: int = 0, retain: bool = False,
                wait: float | None = None) -> bool:
        """Publish; returns False when paho refused it (queue full, not connected with QoS 0)."""
        info = self._client.publish(topic_name, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        if wait is not None:
            try:
                info.wait_for_publish(timeout=wait)
            except (RuntimeError, ValueError):
                return False
        return True

    # -- paho callbacks --------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object,
                    properties: object) -> None:
        if getattr(reason_code, "is_failure", False):
            self.refused = str(reason_code)
            self._answered.set()
            return
        self.refused = None
        for flt, qos in self._subs.items():  # re-subscribe after a reconnect
            client.subscribe(flt, qos=qos)
        self._connected.set()
        self._answered.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object,
                       properties: object) -> None:
        self._connected.clear()
        self._disconnected.set()
        self.disconnects += 1

    @staticmethod
    def _on_socket_open(client: mqtt.Client, userdata: object, sock: object) -> None:
        # Small control and data messages must not wait for Nagle + delayed ACK (~40 ms on Linux).
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self._handler is not None:
            self._handler(msg.topic, msg.payload)
