"""Serial (UART) data-plane transport: wire frames as COBS packets over pyserial.

Holds `SerialTransport`, registered lazily as ``serial``. On the wire every frame is
``0x00 || COBS(frame) || 0x00``: the trailing delimiter ends the packet; the leading one
ends whatever noise or half-written frame came before, so line noise or a timed-out write
costs only itself, never the next frame, and a receiver that starts listening mid-stream
loses at most the packet in flight. A reader thread feeds a `CobsStreamDecoder` (which
resyncs and counts what it drops) and hands each packet to the registered handler. COBS
packets are opaque here: integrity is the frame's own CRC32, checked by
`nodes.codec.Decoder` on the edge.

pyserial opens and configures the port (termios, exclusive lock, RTS/CTS); on POSIX the hot
paths then use its non-blocking descriptor directly: the reader waits in ``select`` (on the
port and pyserial's cancel pipe) and takes everything the tty has in one ``os.read``; a send is
one ``os.write`` of ``0x00 || COBS || 0x00`` built in one buffer, waiting in ``select`` only
when the tty is full. pyserial's own ``read``/``write`` add a select, a timeout object and a
copy per call; they remain the path on platforms without a descriptor.

Its settings and their checks live in ``nodes.transport_settings`` (shared with the inventory
check). This module must not decode frames, shape traffic (the link emulator does, before
`send`), or import ``testbed``. A failed or timed-out write is a counted send failure, never an
exception into the caller.

Raspberry Pi UART setup (full detail and arithmetic in ``docs/serial.md``):

- Use the full PL011 UART, ``/dev/ttyAMA0``, not the mini UART (``/dev/ttyS0``), whose baud
  clock follows the VPU core clock and drifts with it. In ``config.txt`` (Bookworm:
  ``/boot/firmware/config.txt``) put ``enable_uart=1`` and ``dtoverlay=disable-bt`` (or
  ``dtoverlay=miniuart-bt`` to keep Bluetooth on the mini UART) and
  ``init_uart_clock=48000000``; remove ``console=serial0,115200`` from ``cmdline.txt`` so
  no login console shares the port. The PL011's top rate is UART clock / 16, so 3 Mbaud at
  48 MHz; raise ``init_uart_clock`` to go beyond (untested here).
- HBC at 1312.5 kbit/s needs >= 2 Mbaud on the wire: 8N1 spends 10 line bits per byte, so
  the baud must be >= 1312500 * 10 / 8 = 1640625, and COBS adds ~0.4 % (1 byte per 254)
  plus 2 delimiters per frame: about 1.65 Mbaud; the next standard rate is 2000000.
- Both ends must use the same baud and flow control; with ``rtscts`` wire RTS/CTS too.
  Software flow control (``xonxoff``) is refused: the tty layer eats 0x11/0x13 bytes,
  which COBS does not escape, so every frame containing them would be corrupted.
"""
from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable

import serial

from nodes.cobs import CobsStreamDecoder, encode_delimited
from nodes.errors import TransportError
from nodes.transport import Transport
from nodes.transport_settings import SERIAL, check_settings

__all__ = ["SerialTransport", "SETTINGS"]

SETTINGS = SERIAL.user_keys   # what a link's transport: mapping may set (checks: nodes.transport_settings)
_READ_TIMEOUT_S = 0.05
_JOIN_TIMEOUT_S = 5.0
_READ_CHUNK = 1 << 16   # a tty hands over at most what it holds (4 KiB on Linux n_tty)


class SerialTransport(Transport):
    """One end of a UART link. ``receive=True`` starts a reader thread on `open`."""

    type_name = "serial"

    def __init__(self, *, port: str, baud: int, receive: bool, rtscts: bool = False,
                 xonxoff: bool = False, max_frame: int = 1 << 20, write_timeout: float = 2.0,
                 **unknown: object) -> None:
        super().__init__()
        s = check_settings("serial", {"port": port, "baud": baud, "receive": receive, "rtscts": rtscts,
                                      "xonxoff": xonxoff, "max_frame": max_frame,
                                      "write_timeout": write_timeout, **unknown})
        self.port, self.baud, self.receive = s["port"], s["baud"], s["receive"]
        self.rtscts, self.max_frame, self.write_timeout = s["rtscts"], s["max_frame"], s["write_timeout"]
        self._decoder = CobsStreamDecoder(max_packet=max_frame)
        self._serial: serial.Serial | None = None
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self.last_error: str | None = None
        self.read_errors = 0
        self.handler_errors = 0

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> SerialTransport:
        if self._serial is not None:
            return self
        self._stop.clear()
        self._serial = self._open_port()
        try:
            if self.receive:
                self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                                name=f"serial-rx {self.port}")
                self._reader.start()
        except BaseException:
            self.close()
            raise
        return self

    def _open_port(self) -> serial.Serial:
        ser = serial.Serial()
        ser.port, ser.baudrate = self.port, self.baud
        ser.bytesize, ser.parity = serial.EIGHTBITS, serial.PARITY_NONE
        ser.stopbits = serial.STOPBITS_ONE
        ser.rtscts, ser.xonxoff = self.rtscts, False
        ser.timeout, ser.write_timeout = _READ_TIMEOUT_S, self.write_timeout
        ser.exclusive = True
        try:
            ser.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"serial transport: cannot open {self.port} "
                                 f"at {self.baud} baud: {exc}") from exc
        return ser

    def close(self) -> None:
        """Stop and join the reader, then close the port; safe to call twice."""
        ser, reader = self._serial, self._reader
        self._stop.set()
        try:
            if reader is not None:
                if ser is not None and hasattr(ser, "cancel_read"):
                    ser.cancel_read()
                reader.join(_JOIN_TIMEOUT_S)
        finally:
            self._reader = None
            if ser is not None:
                with self._write_lock:
                    self._serial = None
                    ser.close()

    @property
    def reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    # -- sending ---------------------------------------------------------------------------
    def _send(self, frame: bytes) -> bool:
        if len(frame) > self.max_frame:
            self.last_error = f"frame of {len(frame)} bytes exceeds max_frame {self.max_frame}"
            return False
        wire = encode_delimited(frame)
        with self._write_lock:
            ser = self._serial
            if ser is None:
                return False
            try:
                return self._write(ser, wire)
            except (serial.SerialException, OSError) as exc:  # SerialTimeoutException included
                self.last_error = f"write to {self.port} failed: {exc}"
                return False

    def _write(self, ser: serial.Serial, wire: bytes) -> bool:
        """Write all of ``wire``; raises SerialTimeoutException past ``write_timeout``."""
        fd = getattr(ser, "fd", None)
        if not isinstance(fd, int):
            return ser.write(wire) == len(wire)
        view, deadline = memoryview(wire), None
        while True:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                pass
            if not view:
                return True
            if deadline is None:
                deadline = time.monotonic() + self.write_timeout
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise serial.SerialTimeoutException("Write timeout")

    # -- receiving -------------------------------------------------------------------------
    def decoder_stats(self) -> dict[str, int]:
        """COBS de-framing counters (packets, bytes_in, drops, garbage bytes) and read errors."""
        return {**self._decoder.stats.as_dict(), "read_errors": self.read_errors,
                "handler_errors": self.handler_errors}

    def _read_loop(self) -> None:
        ser = self._serial
        assert ser is not None
        read = self._chunk_reader(ser)
        while not self._stop.is_set():
            try:
                data = read()
            except (serial.SerialException, OSError, TypeError) as exc:
                if self._stop.is_set():
                    return  # the port was closed under us: a normal shutdown
                self.read_errors += 1
                self.last_error = f"read from {self.port} failed: {exc}; reader stopped"
                return
            if data:
                for packet in self._decoder.feed(data):
                    self._hand_over(packet)

    @staticmethod
    def _chunk_reader(ser: serial.Serial) -> Callable[[], bytes]:
        """A function returning whatever the port has (b"" after ``_READ_TIMEOUT_S`` idle)."""
        fd, abort = getattr(ser, "fd", None), getattr(ser, "pipe_abort_read_r", None)
        if not isinstance(fd, int) or not isinstance(abort, int):
            return lambda: ser.read(max(1, ser.in_waiting))
        waitable = [fd, abort]

        def read() -> bytes:
            ready = select.select(waitable, [], [], _READ_TIMEOUT_S)[0]
            if not ready:
                return b""
            if abort in ready:   # close() -> cancel_read(): let the loop see the stop flag
                os.read(abort, 1000)
                return b""
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return b""
            if not data:   # as pyserial: readable yet empty means the device went away
                raise serial.SerialException("device reports readiness to read but returned no "
                                             "data (device disconnected?)")
            return data

        return read

    def _hand_over(self, packet: bytes) -> None:
        try:
            self._deliver(packet)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the link
            self.handler_errors += 1
            self.last_error = f"frame handler raised {type(exc).__name__}: {exc}"
