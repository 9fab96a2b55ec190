"""A bleak client backend whose radio is a bumble ``Device``: ``BumbleBleakClient``.

Pass ``backend=BumbleBleakClient, bumble_device=<Device>`` to ``bleak.BleakClient``, and the
bleak central code path of `nodes.ble_transport` runs over bumble (its virtual controllers in
CI, or a USB/HCI dongle) exactly as it runs over BlueZ on a Jetson.

This module imports bleak and bumble at its top: `nodes.ble_transport` imports it only when a
central uses stack ``bumble``, so a board without BLE never loads it. It must not import
``testbed``, and it holds no transport logic (fragments, hello, reconnects): only the bleak API
mapped onto bumble's GATT client.
"""
from __future__ import annotations

import contextlib
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bumble.device import Peer

__all__ = ["ATT_DEFAULT_MTU", "BumbleBleakClient"]

ATT_DEFAULT_MTU = 23


def _bleak_uuid(bumble_uuid: Any) -> str:
    """A bumble ``core.UUID`` as bleak's normalized lower-case 128-bit string."""
    return str(uuidlib.UUID(bytes=bytes(reversed(bumble_uuid.uuid_128_bytes))))


def _bleak_properties(props: int) -> list[str]:
    names = ["broadcast", "read", "write-without-response", "write", "notify", "indicate",
             "authenticated-signed-writes", "extended-properties"]
    return [n for bit, n in enumerate(names) if props & (1 << bit)]


class BumbleBleakClient(BaseBleakClient):
    """A bleak client backend whose radio is a powered-on bumble ``Device``.

    Pass ``backend=BumbleBleakClient, bumble_device=<Device>`` (and optionally
    ``mtu=<ATT MTU to request>``) to ``bleak.BleakClient``. Supports connect, MTU exchange,
    service discovery, read/write, notify and disconnect; pairing is not supported.
    """

    def __init__(self, address_or_ble_device: Any, *, bumble_device: Any, mtu: int = 247,
                 **kwargs: Any) -> None:
        kwargs.pop("services", None)
        kwargs.pop("bluez", None)
        kwargs.pop("winrt", None)
        super().__init__(address_or_ble_device, **kwargs)
        self._device = bumble_device
        self._mtu = mtu
        self._connection: Any = None
        self._peer: Any = None
        self._closing = False
        self._subscriptions: dict[int, Callable[[bytes], None]] = {}

    @property
    def name(self) -> str:
        return str(self.address)

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else ATT_DEFAULT_MTU

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if pair:
            raise BleakError("pairing is not supported by the bumble backend")
        conn = await self._device.connect(self.address, timeout=self._timeout)
        self._connection, self._closing = conn, False
        conn.on(conn.EVENT_DISCONNECTION, self._on_disconnection)
        self._peer = Peer(conn)
        try:
            if self._mtu > ATT_DEFAULT_MTU:
                await self._peer.request_mtu(self._mtu)
            self.services = await self._discover()
        except BaseException:
            await self.disconnect()
            raise

    async def _discover(self) -> Any:
        collection = BleakGATTServiceCollection()
        for svc in await self._peer.discover_services():
            service = BleakGATTService(svc, svc.handle, _bleak_uuid(svc.uuid))
            collection.add_service(service)
            for ch in await svc.discover_characteristics():
                char = BleakGATTCharacteristic(
                    ch, ch.handle, _bleak_uuid(ch.uuid), _bleak_properties(int(ch.properties)),
                    lambda: self.mtu_size - 3, service)
                collection.add_characteristic(char)   # also adds it to its service
                for d in await ch.discover_descriptors():
                    desc = BleakGATTDescriptor(d, d.handle, _bleak_uuid(d.type), char)
                    collection.add_descriptor(desc)   # also adds it to its characteristic
        return collection

    def _on_disconnection(self, _reason: int) -> None:
        self._connection = self._peer = None
        if not self._closing and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        conn = self._connection
        if conn is None:
            return
        self._closing = True
        with contextlib.suppress(Exception):
            await conn.disconnect()
        self._connection = self._peer = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise BleakError("pairing is not supported by the bumble backend")

    async def unpair(self) -> None:
        raise BleakError("pairing is not supported by the bumble backend")

    def _require(self) -> Any:
        if self._peer is None:
            raise BleakError("not connected")
        return self._peer

    async def read_gatt_char(self, characteristic: Any, **kwargs: Any) -> bytearray:
        self._require()
        return bytearray(await characteristic.obj.read_value())

    async def read_gatt_descriptor(self, descriptor: Any, **kwargs: Any) -> bytearray:
        self._require()
        return bytearray(await descriptor.obj.read_value())

    async def write_gatt_char(self, characteristic: Any, data: Any, response: bool) -> None:
        await self._require().write_value(characteristic.obj, bytes(data), with_response=response)

    async def write_gatt_descriptor(self, descriptor: Any, data: Any) -> None:
        await self._require().write_value(descriptor.obj, bytes(data), with_response=True)

    async def start_notify(self, characteristic: Any, callback: Callable[[bytearray], None],
                           **kwargs: Any) -> None:
        def on_value(value: bytes) -> None:
            callback(bytearray(value))
        self._subscriptions[characteristic.handle] = on_value
        await self._require().subscribe(characteristic.obj, on_value, prefer_notify=True)

    async def stop_notify(self, characteristic: Any) -> None:
        on_value = self._subscriptions.pop(characteristic.handle, None)
        await self._require().unsubscribe(characteristic.obj, on_value)
