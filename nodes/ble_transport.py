"""The BLE data-plane transport: a wearable GATT peripheral notifies fragments to an edge central.

Holds ``BleTransport`` (the ``ble`` backend of the `Transport` facade), its counters, the fixed
GATT layout and ``VirtualBleLink`` (bumble's in-process virtual radio for tests and
single-process demos). The central speaks through bleak: over BlueZ, or over bumble through
``nodes.ble_bleak_bumble.BumbleBleakClient``. The settings and their checks live in
``nodes.transport_settings`` (shared with the inventory check).

Roles follow the link direction: the sending end (``receive=False``, the wearable) is the GATT
peripheral, the receiving end (``receive=True``, the edge) is the central. GATT layout (128-bit
UUIDs, fixed here and in docs/ble.md):

- service ``SERVICE_UUID``
- data characteristic ``DATA_UUID``: notify; each notification is one fragment (`nodes.ble_frag`)
- control characteristic ``CONTROL_UUID``: write with response; after subscribing the central
  writes a hello ``version u8 | payload_size u16`` (its ATT_MTU - 3). The peripheral sends only
  after a hello, with ``min(hello, own ATT_MTU - 3)`` bytes per notification.

Stacks (the ``stack`` setting): ``bumble`` (a bumble HCI transport spec in ``hci``, or an
in-process ``VirtualBleLink`` in ``link``) and ``bluez`` (bless peripheral, bleak central over
BlueZ D-Bus). The asyncio BLE stack runs on a private event loop in a background thread (or on
the ``VirtualBleLink``'s loop, which both ends of a virtual link must share); ``send`` blocks
the caller until the frame's notifications are handed to the controller, and received frames
are delivered on that loop thread.

This module must not import ``testbed``; bumble, bleak, bless and ``nodes.ble_bleak_bumble`` are
imported lazily, inside the functions that need them, so a board without BLE never needs them. It never raises from
``send``: frames sent while the link is down are counted and refused.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from nodes.ble_frag import MIN_PAYLOAD_SIZE, Reassembler, ReassemblyCounters, fragment
from nodes.errors import TransportError
from nodes.transport import Transport, TransportCounters
from nodes.transport_settings import BLE_STACKS, check_settings

__all__ = [
    "SERVICE_UUID", "DATA_UUID", "CONTROL_UUID", "STACKS", "BleCounters", "BleTransport",
    "VirtualBleLink",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_UUID = "7a4e0001-3c1b-4f5e-9d2a-6b8c1e0f5a73"
DATA_UUID = "7a4e0002-3c1b-4f5e-9d2a-6b8c1e0f5a73"
CONTROL_UUID = "7a4e0003-3c1b-4f5e-9d2a-6b8c1e0f5a73"
HELLO = struct.Struct("<BH")
HELLO_VERSION = 1
STACKS = BLE_STACKS
DEFAULT_MTU = 247                 # the ATT MTU a bumble end asks for / accepts when none is set
ADVERTISING_INTERVAL_MS = 100.0   # fast connectable advertising: a lost link comes back sooner


# ------------------------------------------------------------------------------ counters


@dataclass
class BleCounters(TransportCounters):
    """Transport counters plus the BLE link's own; ``as_dict`` flattens the reassembler's.

    ``send_failures`` = ``frames_dropped_down`` + ``frames_aborted`` + sends that timed out.
    ``link_down_s`` is cumulative over every outage after the first connection, including
    one still in progress; ``disconnects`` counts connections lost (either side's doing).
    """

    frames_dropped_down: int = 0
    frames_aborted: int = 0
    fragments_sent: int = 0
    fragments_suppressed: int = 0
    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    att_mtu: int = 0
    payload_size: int = 0
    link_down_total_s: float = 0.0
    down_since: float | None = None
    reassembly: ReassemblyCounters | None = None
    last_error: str | None = None

    def link_down_s(self, now: float | None = None) -> float:
        ongoing = 0.0 if self.down_since is None else (now or time.monotonic()) - self.down_since
        return self.link_down_total_s + ongoing

    def as_dict(self) -> dict[str, Any]:  # type: ignore[override]
        out = {k: v for k, v in asdict(self).items()
               if k not in ("reassembly", "down_since", "link_down_total_s")}
        out["link_down_s"] = round(self.link_down_s(), 6)
        if self.reassembly is not None:
            out.update({f"reassembly_{k}": v for k, v in self.reassembly.as_dict().items()})
        return out


# ------------------------------------------------------------------------------ event loop


class _LoopThread:
    """An asyncio loop running forever in a daemon thread; ``stop`` cancels its tasks and joins."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], *, timeout: float | None) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(_cancel_all_but_current(), timeout=10.0)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("BLE loop %s: tasks did not finish cancelling", self._thread.name)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10.0)
            if not self._thread.is_alive():
                self.loop.close()


async def _cancel_all_but_current() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class VirtualBleLink:
    """bumble's in-process virtual radio (a ``LocalLink`` of emulated controllers) and its loop.

    Both ends of a virtual link run on this link's one event loop thread (bumble's LocalLink
    hands packets between controllers on the running loop, so they must share it). Use as a
    context manager and close it after the transports attached to it.
    """

    def __init__(self, *, name: str = "ble-virtual-link") -> None:
        from bumble.link import LocalLink

        self.local_link = LocalLink()
        self._loop = _LoopThread(name)

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = 30.0) -> T:
        """Run ``coro`` on this link's loop (where its bumble objects live) and return its result."""
        return self._loop.call(coro, timeout=timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on this link's loop without waiting for it."""
        return self._loop.submit(coro)

    def close(self) -> None:
        self._loop.stop()

    def __enter__(self) -> VirtualBleLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ radios


def _random_static_address() -> str:
    raw = bytearray(secrets.token_bytes(6))
    raw[0] |= 0xC0                              # the two top bits of a random static address
    return ":".join(f"{b:02X}" for b in raw)


class _BumbleRadio:
    """A bumble ``Device`` on a virtual link's controller or on an HCI transport spec."""

    def __init__(self, *, name: str, address: str, link: VirtualBleLink | None, hci: str | None) -> None:
        self.name, self.address, self._link, self._hci_spec = name, address, link, hci
        self.device: Any = None
        self._controller: Any = None
        self._hci: Any = None

    async def open(self) -> Any:
        from bumble.device import Device
        from bumble.hci import Address

        if self._link is not None:
            from bumble.controller import Controller
            from bumble.host import Host
            from bumble.transport.common import AsyncPipeSink

            self._controller = Controller(f"{self.name}-controller", link=self._link.local_link)
            host = Host(self._controller, AsyncPipeSink(self._controller))
            self.device = Device(name=self.name, address=Address(self.address), host=host)
        else:
            from bumble.transport import open_transport

            self._hci = await open_transport(str(self._hci_spec))
            self.device = Device.with_hci(self.name, Address(self.address), self._hci.source,
                                          self._hci.sink)
        return self.device

    async def close(self) -> None:
        try:
            if self.device is not None:
                for conn in list(self.device.connections.values()):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.disconnect(), 2.0)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.device.power_off(), 2.0)
        finally:
            if self._controller is not None and self._link is not None:
                self._link.local_link.controllers.discard(self._controller)
            if self._hci is not None:
                await self._hci.close()


class _Peripheral:
    """What the sending end needs from a GATT server: start, notify, drop, stop."""

    def __init__(self, owner: BleTransport) -> None:
        self.owner = owner

    async def start(self) -> None:
        raise NotImplementedError

    async def notify(self, fragment_bytes: bytes) -> bool:
        raise NotImplementedError

    async def flush(self) -> None:
        """Wait until what was notified has been handed to the controller (where knowable)."""

    async def drop_connection(self) -> None:
        raise TransportError(f"ble stack {self.owner.stack!r}: the peripheral cannot drop a connection")

    async def stop(self) -> None:
        raise NotImplementedError


class _BumblePeripheral(_Peripheral):
    """Our GATT service on a bumble ``Device``; advertises again after every disconnection."""

    def __init__(self, owner: BleTransport) -> None:
        super().__init__(owner)
        self._radio = _BumbleRadio(name=owner.name, address=str(owner.address), link=owner.link,
                                   hci=owner.hci)
        self._data: Any = None
        self._conn: Any = None

    async def start(self) -> None:
        from bumble import data_types
        from bumble.core import UUID, AdvertisingData
        from bumble.gatt import Characteristic, CharacteristicValue, Service

        device = await self._radio.open()
        self._data = Characteristic(DATA_UUID, Characteristic.Properties.NOTIFY,
                                    Characteristic.Permissions.READABLE, b"")
        control = Characteristic(CONTROL_UUID, Characteristic.Properties.WRITE,
                                 Characteristic.Permissions.WRITEABLE,
                                 CharacteristicValue(write=self._on_control_write))
        device.add_service(Service(SERVICE_UUID, [self._data, control]))
        device.gatt_server.max_mtu = self.owner.mtu
        device.on(device.EVENT_CONNECTION, self._on_connection)
        await device.power_on()
        adv = AdvertisingData([data_types.Flags(AdvertisingData.Flags.LE_GENERAL_DISCOVERABLE_MODE
                                                | AdvertisingData.Flags.BR_EDR_NOT_SUPPORTED),
                               data_types.CompleteListOf128BitServiceUUIDs([UUID(SERVICE_UUID)])])
        scan = AdvertisingData([data_types.CompleteLocalName(self.owner.name)])
        await device.start_advertising(auto_restart=True, advertising_data=bytes(adv),
                                       scan_response_data=bytes(scan),
                                       advertising_interval_min=ADVERTISING_INTERVAL_MS,
                                       advertising_interval_max=ADVERTISING_INTERVAL_MS)

    def _on_connection(self, conn: Any) -> None:
        self._conn = conn
        conn.on(conn.EVENT_DISCONNECTION, lambda _reason: self._on_disconnection(conn))

    def _on_disconnection(self, conn: Any) -> None:
        if conn is self._conn:
            self._conn = None
            self.owner._link_down()

    def _on_control_write(self, conn: Any, value: bytes) -> None:
        size = _parse_hello(value)
        if size is None or conn is not self._conn:
            return
        att_mtu = conn.att_mtu
        self.owner._link_up(att_mtu=att_mtu, payload_size=min(size, att_mtu - 3))

    async def notify(self, fragment_bytes: bytes) -> bool:
        conn = self._conn
        if conn is None:
            return False
        await self._radio.device.notify_subscriber(conn, self._data, fragment_bytes)
        return True

    async def flush(self) -> None:
        conn = self._conn
        if conn is not None:
            await asyncio.wait_for(conn.cancel_on_disconnection(conn.drain()),
                                   self.owner.send_timeout_s)

    async def drop_connection(self) -> None:
        conn = self._conn
        if conn is not None:
            await conn.disconnect()

    async def stop(self) -> None:
        await self._radio.close()


class _BlessPeripheral(_Peripheral):
    """Our GATT service through bless on BlueZ (verified on hardware only, see docs/ble.md).

    bless reports neither connections nor subscriptions, so the link is up from the central's
    hello until ``is_connected()`` (polled) turns false.
    """

    POLL_S = 0.25

    def __init__(self, owner: BleTransport) -> None:
        super().__init__(owner)
        self._server: Any = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from bless import BlessServer, GATTAttributePermissions, GATTCharacteristicProperties

        self._server = BlessServer(name=self.owner.name, loop=asyncio.get_running_loop(),
                                   adapter=self.owner.adapter)
        self._server.read_request_func = lambda characteristic, **_: characteristic.value
        self._server.write_request_func = self._on_write
        await self._server.add_new_service(SERVICE_UUID)
        await self._server.add_new_characteristic(
            SERVICE_UUID, DATA_UUID, GATTCharacteristicProperties.notify, bytearray(),
            GATTAttributePermissions.readable)
        await self._server.add_new_characteristic(
            SERVICE_UUID, CONTROL_UUID, GATTCharacteristicProperties.write, bytearray(),
            GATTAttributePermissions.writeable)
        await self._server.start()
        self._watch = asyncio.get_running_loop().create_task(self._watch_connection())

    def _on_write(self, characteristic: Any, value: Any) -> None:
        if str(characteristic.uuid).lower() != CONTROL_UUID:
            return
        size = _parse_hello(bytes(value))
        if size is not None:
            self.owner._link_up(att_mtu=size + 3, payload_size=size)

    async def _watch_connection(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_S)
            if self.owner.connected and not await self._server.is_connected():
                self.owner._link_down()

    async def notify(self, fragment_bytes: bytes) -> bool:
        char = self._server.get_characteristic(DATA_UUID)
        char.value = bytearray(fragment_bytes)
        ok = bool(self._server.update_value(SERVICE_UUID, DATA_UUID))
        await asyncio.sleep(0)                  # let dbus-next write the PropertiesChanged signal
        return ok

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._server is not None:
            await self._server.stop()


def _parse_hello(value: bytes) -> int | None:
    if len(value) != HELLO.size:
        return None
    version, size = HELLO.unpack(value)
    if version != HELLO_VERSION or size < MIN_PAYLOAD_SIZE:
        return None
    return size


class _Central:
    """The receiving end: bleak's ``BleakClient`` over BlueZ, or over bumble via our backend."""

    def __init__(self, owner: BleTransport) -> None:
        self.owner = owner
        self._radio: _BumbleRadio | None = None
        self._client: Any = None
        self._lost: asyncio.Event | None = None

    async def start(self) -> None:
        if self.owner.stack == "bumble":
            self._radio = _BumbleRadio(name=f"{self.owner.name}-central",
                                       address=_random_static_address(), link=self.owner.link,
                                       hci=self.owner.hci)
            device = await self._radio.open()
            await device.power_on()

    def _client_for(self, on_lost: Callable[[Any], None]) -> Any:
        from bleak import BleakClient

        target = self.owner.address or self.owner.name
        timeout = self.owner.connect_timeout_s
        if self._radio is not None:
            from nodes.ble_bleak_bumble import BumbleBleakClient

            return BleakClient(target, on_lost, timeout=timeout, backend=BumbleBleakClient,
                               bumble_device=self._radio.device, mtu=self.owner.mtu)
        return BleakClient(target, on_lost, timeout=timeout, bluez={"adapter": self.owner.adapter})

    async def session(self) -> None:
        """One connection: connect, subscribe, say hello, then wait until it is lost."""
        lost = self._lost = asyncio.Event()
        client = self._client = self._client_for(lambda _client: lost.set())
        try:
            await asyncio.wait_for(client.connect(), self.owner.connect_timeout_s)
            char = client.services.get_characteristic(DATA_UUID)
            if char is None:
                raise TransportError(f"peripheral {self.owner.address or self.owner.name} has no "
                                     f"characteristic {DATA_UUID}")
            payload = int(char.max_write_without_response_size)
            await client.start_notify(char, self._on_notification)
            await client.write_gatt_char(CONTROL_UUID, HELLO.pack(HELLO_VERSION, payload), response=True)
            self.owner._link_up(att_mtu=payload + 3, payload_size=payload)
            await lost.wait()
        finally:
            self._client = self._lost = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2.0)

    def _on_notification(self, _char: Any, data: bytearray) -> None:
        self.owner._on_fragment(bytes(data))

    async def drop_connection(self) -> None:
        client, lost = self._client, self._lost
        if client is not None:
            await client.disconnect()
        if lost is not None:
            lost.set()

    async def stop(self) -> None:
        if self._radio is not None:
            await self._radio.close()


# ------------------------------------------------------------------------------ the transport


class BleTransport(Transport):
    """One end of a BLE link (``transport: {type: ble, ...}`` in inventory.yaml).

    Settings (keyword-only): ``receive`` (True: edge, central; False: wearable, peripheral),
    ``stack`` (``bumble`` | ``bluez``), ``address`` (the peripheral's address: its random static
    address under bumble, the Pi adapter's address under BlueZ), ``name`` (advertised name; the
    central scans for it when no address is given), ``adapter`` (BlueZ adapter, ``hci0``),
    ``hci`` (bumble HCI transport spec, e.g. ``usb:0``, ``hci-socket:0``, ``tcp-client:host:port``),
    ``link`` (a `VirtualBleLink`, bumble only, instead of ``hci``), ``mtu`` (ATT MTU the
    central requests / the peripheral accepts; bumble only, BlueZ negotiates its own),
    ``connect_timeout_s``, ``reassembly_timeout_s``, ``reconnect_delay_s``, ``send_timeout_s``.
    An unknown or invalid setting raises `nodes.transport_settings.SettingError` (a
    `TransportError`) naming it.
    """

    type_name = "ble"

    def __init__(self, *, receive: bool, stack: str = "bumble", address: str | None = None,
                 name: str = "hbc-wearable", adapter: str = "hci0", hci: str | None = None,
                 link: VirtualBleLink | None = None, mtu: int | None = None,
                 connect_timeout_s: float = 10.0, reassembly_timeout_s: float = 2.0,
                 reconnect_delay_s: float = 0.5, send_timeout_s: float = 30.0,
                 **unknown: object) -> None:
        super().__init__()
        s = check_settings("ble", {
            "receive": receive, "stack": stack, "address": address, "name": name, "adapter": adapter,
            "hci": hci, "link": link, "mtu": mtu, "connect_timeout_s": connect_timeout_s,
            "reassembly_timeout_s": reassembly_timeout_s, "reconnect_delay_s": reconnect_delay_s,
            "send_timeout_s": send_timeout_s, **unknown})
        self.receive, self.stack, self.address, self.name = s["receive"], s["stack"], s["address"], s["name"]
        self.adapter, self.hci, self.link = s["adapter"], s["hci"], s["link"]
        self.mtu: int = DEFAULT_MTU if s["mtu"] is None else s["mtu"]
        self.connect_timeout_s: float = s["connect_timeout_s"]
        self.reassembly_timeout_s: float = s["reassembly_timeout_s"]
        self.reconnect_delay_s: float = s["reconnect_delay_s"]
        self.send_timeout_s: float = s["send_timeout_s"]
        self.counters: BleCounters = BleCounters()
        self.fragment_filter: Callable[[int, int, bytes], bool] | None = None
        """Fault-injection hook on the sending end: called as ``(seq, index, fragment)`` before
        each notification; returning False suppresses that notification (counted)."""
        self._reassembler = Reassembler(self.reassembly_timeout_s)
        if self.receive:
            self.counters.reassembly = self._reassembler.counters
        self._seq = 0
        self._epoch = 0
        self._up = threading.Event()
        self._ever_up = False
        self._loop: _LoopThread | None = None
        self._owns_loop = False
        self._tasks: list[asyncio.Task[None]] = []
        self._role: _Peripheral | _Central | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> BleTransport:
        """Start the stack: advertise (wearable) or start connecting (edge); returns at once."""
        if self._loop is not None:
            raise TransportError("ble transport is already open")
        if self.link is not None:
            self._loop = self.link._loop
        else:
            self._loop, self._owns_loop = _LoopThread(f"ble-{'central' if self.receive else 'peripheral'}"), True
        try:
            self._loop.call(self._start(), timeout=self.connect_timeout_s + 10.0)
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception) and not isinstance(exc, TransportError):
                where = f"link {self.link!r}" if self.link is not None else f"hci {self.hci!r}"
                raise TransportError(f"ble transport: could not start the "
                                     f"{'central' if self.receive else 'peripheral'} "
                                     f"(stack {self.stack}, {where}): {type(exc).__name__}: {exc}") from exc
            raise
        return self

    async def _start(self) -> None:
        if self.receive:
            central = self._role = _Central(self)
            await central.start()
            self._spawn(self._central_loop(central))
            self._spawn(self._expiry_loop())
        else:
            self._role = _BumblePeripheral(self) if self.stack == "bumble" else _BlessPeripheral(self)
            await self._role.start()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.call(self._stop(), timeout=15.0)
        except Exception as exc:  # noqa: BLE001 - teardown goes on
            log.warning("ble transport: stopping the stack failed: %s", exc)
        finally:
            self._link_down_final()
            if self._owns_loop:
                loop.stop()

    async def _stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._role is not None:
            await self._role.stop()

    # -- link state ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the link can carry frames (connected, subscribed, hello exchanged)."""
        return self._up.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the link is up; False on timeout."""
        return self._up.wait(timeout)

    def _link_up(self, *, att_mtu: int, payload_size: int) -> None:
        c = self.counters
        if c.down_since is not None:
            c.link_down_total_s += time.monotonic() - c.down_since
            c.down_since = None
        c.att_mtu, c.payload_size = att_mtu, payload_size
        c.connects += 1
        self._epoch += 1
        self._ever_up = True
        self._up.set()

    def _link_down(self) -> None:
        if not self._up.is_set():
            return
        self._up.clear()
        self._epoch += 1
        self.counters.disconnects += 1
        self.counters.down_since = time.monotonic()
        self._reassembler.reset()

    def _link_down_final(self) -> None:
        c = self.counters
        if c.down_since is not None:
            c.link_down_total_s += time.monotonic() - c.down_since
            c.down_since = None
        self._up.clear()

    def drop_connection(self, *, timeout: float = 5.0) -> None:
        """Fault injection: end the current connection with a real HCI/BlueZ disconnect.

        The link then reconnects on its own. Not available on a bless peripheral.
        """
        if self._loop is None or self._role is None:
            raise TransportError("ble transport is not open")
        self._loop.call(self._role.drop_connection(), timeout=timeout)

    # -- receiving (central) -------------------------------------------------------------
    async def _central_loop(self, central: _Central) -> None:
        while True:
            try:
                await central.session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a radio error means "reconnect"
                self.counters.connect_failures += 1
                self.counters.last_error = f"{type(exc).__name__}: {exc}"
                log.info("ble central: %s", self.counters.last_error)
            finally:
                self._link_down()
            await asyncio.sleep(self.reconnect_delay_s)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reassembly_timeout_s / 2)
            self._reassembler.expire(time.monotonic())

    def _on_fragment(self, data: bytes) -> None:
        frame = self._reassembler.feed(data, time.monotonic())
        if frame is not None:
            self._deliver(frame)

    # -- sending (peripheral) ------------------------------------------------------------
    def _send(self, frame: bytes) -> bool:
        if self.receive:
            raise TransportError("ble transport: the receiving end (central) does not send")
        loop = self._loop
        if loop is None or not self._up.is_set():
            self.counters.frames_dropped_down += 1
            return False
        seq, self._seq = self._seq, (self._seq + 1) & 0xFF
        fut = loop.submit(self._notify_frame(frame, seq, self._epoch))
        if loop.in_loop_thread:                 # called from a delivery callback: do not block
            return True
        try:
            return fut.result(self.send_timeout_s)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            fut.cancel()
            self.counters.frames_aborted += 1
            return False

    async def _notify_frame(self, frame: bytes, seq: int, epoch: int) -> bool:
        assert isinstance(self._role, _Peripheral)
        if epoch != self._epoch or not self._up.is_set():
            self.counters.frames_dropped_down += 1
            return False
        try:
            fragments = fragment(frame, seq=seq, payload_size=self.counters.payload_size)
            for index, frag in enumerate(fragments):
                if epoch != self._epoch:
                    raise ConnectionError("link went down mid-frame")
                if self.fragment_filter is not None and not self.fragment_filter(seq, index, frag):
                    self.counters.fragments_suppressed += 1
                    continue
                if not await self._role.notify(frag):
                    raise ConnectionError("notification refused")
                self.counters.fragments_sent += 1
            await self._role.flush()
            return True
        except Exception as exc:  # noqa: BLE001 - a send never raises; it counts
            self.counters.frames_aborted += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            return False
