"""Which settings each data-plane transport takes, and the one check of each.

Holds, per transport (``mqtt``, ``serial``, ``ble``), every setting its constructor accepts, who
writes it (``user``: a link's ``transport:`` mapping in inventory.yaml; ``harness``: the agent
or the testbed fills it in, e.g. the link direction, the broker's address, an in-process radio),
the check of its value, and the rules across settings. It has two callers, so that no rule is
written twice:

- every transport constructor on the board: `check_settings` (all settings, every rule);
- the inventory reader on the laptop: `check_file_settings` (only what a user may write, and
  only the rules a file decides alone); the reader turns a `SettingError` into its
  file:line:key error using ``key`` and ``detail``.

A link has two ends on two boards, and a few settings name something of one board (a device
path, a Bluetooth controller). `PER_END` lists them: for such a ``key`` a file may also write
``edge_<key>``, the edge's own value (a Pi's /dev/ttyAMA0 wired to a Jetson's /dev/ttyTHS1:
``port: /dev/ttyAMA0``, ``edge_port: /dev/ttyTHS1``); without it both ends get ``key``.
`end_settings` turns a file's settings into what one end's board gets; a board never sees an
``edge_`` key (`check_settings` refuses it as unknown). Every other setting is the link's, the
same on both ends (a serial link's baud and flow control must match; a BLE central must know
its peripheral's address).

Defaults stay in the constructors' signatures; this module only says what a value must be (and,
with ``shown``, how a refused value reads in an error, for every key the inventory reader checks).
It must stay dependency-free (the standard library, ``nodes.errors`` and the pure
``nodes.ble_frag``): no I/O, no MQTT, serial or Bluetooth library, and never ``testbed``.
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from linkemu.errors import as_float
from nodes.ble_frag import MIN_PAYLOAD_SIZE
from nodes.errors import TransportError

__all__ = ["USER", "HARNESS", "BLE_STACKS", "Setting", "TransportSchema", "SettingError", "SCHEMAS",
           "TRANSPORT_NAMES", "PER_END", "EDGE_PREFIX", "LOCAL_PAIR", "ENDS", "check_settings",
           "check_file_settings", "end_settings", "file_keys", "shown"]

USER = "user"
HARNESS = "harness"
BLE_STACKS = ("bumble", "bluez")   # the first is the default


class SettingError(TransportError):
    """A transport setting that is not what it must be.

    ``str(err)`` is the board's one line (``ble transport: mtu must be ...``); ``key`` names the
    setting (None: the settings as a whole) and ``detail`` says what was expected in the words of
    a file error; ``missing`` is True when a required setting is absent (a file error then points
    at the ``transport:`` mapping's line rather than the key's). Settings are configuration, so
    the agent exits 2 on one, like on any config it refuses.
    """

    exit_code = 2

    def __init__(self, message: str, *, transport: str, key: str | None, detail: str,
                 missing: bool = False) -> None:
        super().__init__(message)
        self.transport, self.key, self.detail, self.missing = transport, key, detail, missing


class Invalid(Exception):
    """Raised by a value check: ``expected`` (a noun phrase) and optionally ``why`` it is refused."""

    def __init__(self, expected: str, *, why: str | None = None) -> None:
        super().__init__(expected)
        self.expected, self.why = expected, why


class Broken(Exception):
    """Raised by a rule across settings: ``key`` (None: no single one) and what is wrong."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


Check = Callable[[Any], Any]
Rule = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Setting:
    """One setting: its check (returns the value to use, raises `Invalid`) and who writes it.

    ``required``: a file must give it (the constructor has no default); ``nullable``: None is a
    valid value (the constructor's default); ``note`` says, for a harness setting, who sets it.
    """

    check: Check
    expected: str
    owner: str = USER
    required: bool = False
    nullable: bool = False
    note: str = ""


@dataclass(frozen=True)
class TransportSchema:
    """A transport's settings (user ones first, in the order they are listed to a user) and rules.

    ``file_rules`` hold whatever the harness adds (a file decides them alone); ``end_rules`` need
    the settings of one end as the board gets them (the direction, what the harness filled in).
    """

    name: str
    settings: Mapping[str, Setting]
    file_rules: tuple[Rule, ...] = ()
    end_rules: tuple[Rule, ...] = ()
    user_keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_keys",
                           tuple(k for k, s in self.settings.items() if s.owner == USER))


# ------------------------------------------------------------------------------ value checks


def _string(expected: str, **opts: Any) -> Setting:
    def check(v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise Invalid(expected)
        return v
    return Setting(check, expected, **opts)


def _flag(**opts: Any) -> Setting:
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise Invalid("true or false")
        return v
    return Setting(check, "true or false", **opts)


def _integer(expected: str, *, lo: int, hi: int | None = None, **opts: Any) -> Setting:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise Invalid(expected)
        return v
    return Setting(check, expected, **opts)


def _seconds(expected: str, *, allow_zero: bool = False, **opts: Any) -> Setting:
    def check(v: Any) -> float:
        out = as_float(v)
        if out is None or not math.isfinite(out) or out < 0 or (out == 0 and not allow_zero):
            raise Invalid(expected)
        return out
    return Setting(check, expected, **opts)


def _choice(options: tuple[Any, ...], expected: str, **opts: Any) -> Setting:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or v not in options:
            raise Invalid(expected)
        return v
    return Setting(check, expected, **opts)


def _pattern(regex: re.Pattern[str], expected: str, **opts: Any) -> Setting:
    def check(v: Any) -> str:
        if not isinstance(v, str) or not regex.fullmatch(v):
            raise Invalid(expected)
        return v
    return Setting(check, expected, **opts)


def _no_xonxoff(v: Any) -> bool:
    if not isinstance(v, bool):
        raise Invalid("false")
    if v:
        raise Invalid("false", why="not supported: software flow control swallows 0x11/0x13 bytes, "
                                   "which COBS frames contain; use rtscts")
    return v


_RECEIVE = _flag(owner=HARNESS, note="the agent sets it from the link direction")
_BROKER = "the run's broker, from the inventory's broker section"
_LOGIN = "the agent's own broker login (agent.json's broker section), never written in a file"

# ------------------------------------------------------------------------------ the transports

MQTT = TransportSchema("mqtt", {
    "topic": _pattern(re.compile(r"[^+#\x00]+"), "an MQTT topic name without wildcards (+, #)"),
    "qos": _choice((0, 1), "0 or 1"),
    "max_queued": _integer("an int >= 0 (0: no limit)", lo=0),
    "host": _string("the broker's host name or address", owner=HARNESS, note=_BROKER),
    "port": _integer("a TCP port from 1 to 65535", lo=1, hi=65535, owner=HARNESS, note=_BROKER),
    "client_id": _string("a non-empty client id", owner=HARNESS, nullable=True,
                         note="each end makes its own: the two ends of a link need distinct ids"),
    "receive": _RECEIVE,
    **{k: _string(desc, owner=HARNESS, nullable=True, note=_LOGIN) for k, desc in (
        ("username", "the board's broker user name"), ("password", "the board's broker password"),
        ("ca_file", "a CA certificate file"), ("cert_file", "a client certificate file"),
        ("key_file", "a client key file"))},
})

SERIAL = TransportSchema("serial", {
    "port": _string("a device path such as /dev/ttyAMA0", required=True),
    "baud": _integer("a positive int", lo=1, required=True),
    "rtscts": _flag(),
    "xonxoff": Setting(_no_xonxoff, "false"),
    "max_frame": _integer("a positive int", lo=1),
    "write_timeout": _seconds("seconds > 0"),
    "receive": _RECEIVE,
})


def _bluez_takes_no_bumble_setting(s: Mapping[str, Any]) -> None:
    if s.get("stack") != "bluez":
        return
    for key, why in (("hci", "BlueZ reaches its controller through the adapter"),
                     ("link", "BlueZ reaches its controller through the adapter"),
                     ("mtu", "BlueZ negotiates the MTU itself")):
        if s.get(key) is not None:
            raise Broken(key, f"applies to stack 'bumble' only ({why}); expected no {key} with stack bluez")


def _bumble_has_one_radio(s: Mapping[str, Any]) -> None:
    if s.get("stack", BLE_STACKS[0]) == "bumble" and (s.get("link") is None) == (s.get("hci") is None):
        raise Broken(None, "stack 'bumble' needs exactly one of 'hci' (a bumble transport spec) or "
                           "'link' (a VirtualBleLink)")


def _ends_know_the_peripheral(s: Mapping[str, Any]) -> None:
    if s.get("stack") == "bumble" and not s.get("receive") and not s.get("address"):
        raise Broken("address", "missing: with stack 'bumble' the peripheral needs 'address' (its random "
                                "static address, e.g. 'F0:00:00:00:00:01')")
    if s.get("receive") and not (s.get("address") or s.get("name")):
        raise Broken(None, "the central needs the peripheral's 'address' or 'name'")


_BLE_SECONDS = "a positive number of seconds"

BLE = TransportSchema("ble", {
    "stack": _choice(BLE_STACKS, "one of " + ", ".join(BLE_STACKS)),
    "address": _pattern(re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}"),
                        "a BLE address of six hex pairs such as F0:00:00:00:00:01", nullable=True),
    "name": _string("an advertised name"),
    "adapter": _string("a BlueZ adapter such as hci0"),
    "hci": _string("a bumble HCI transport spec such as usb:0 or tcp-client:host:port", nullable=True),
    "mtu": _integer(f"an int in [{MIN_PAYLOAD_SIZE + 3}, 517]", lo=MIN_PAYLOAD_SIZE + 3, hi=517,
                    nullable=True),
    "connect_timeout_s": _seconds(_BLE_SECONDS),
    "reassembly_timeout_s": _seconds(_BLE_SECONDS),
    "reconnect_delay_s": _seconds("a number of seconds >= 0", allow_zero=True),
    "send_timeout_s": _seconds(_BLE_SECONDS),
    "link": Setting(lambda v: v, "a VirtualBleLink", owner=HARNESS, nullable=True,
                    note="an in-process VirtualBleLink, for tests and single-process tools"),
    "receive": _RECEIVE,
}, file_rules=(_bluez_takes_no_bumble_setting, _bumble_has_one_radio),
    end_rules=(_ends_know_the_peripheral,))

SCHEMAS: Mapping[str, TransportSchema] = MappingProxyType({s.name: s for s in (MQTT, SERIAL, BLE)})
TRANSPORT_NAMES: tuple[str, ...] = tuple(SCHEMAS)

# ------------------------------------------------------------------------------ the two ends of a link

# The settings that may differ between a link's two ends, per transport: each names a thing of
# one board. A file writes the wearable's value as ``<key>`` and, where the edge's differs,
# ``edge_<key>``. Everything else is the link's and the same on both ends.
PER_END: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "mqtt": (),                   # both ends reach the same broker and topic
    "serial": ("port",),          # each board's UART device (baud and flow control must match)
    "ble": ("adapter", "hci"),    # each board's own Bluetooth controller
})
EDGE_PREFIX = "edge_"
ENDS = ("tx", "rx")               # tx: the wearable's (sending) end; rx: the edge's (receiving) end

# A per-end setting whose value asks the laptop's local fabric (testbed.fabric) to make both ends
# at once, so a file gives no edge_ value with it: a socat pty pair, bumble's virtual controllers.
LOCAL_PAIR: Mapping[str, tuple[str, str, str]] = MappingProxyType({
    "serial": ("port", "pty", "a local socat pty pair"),
    "ble": ("hci", "virtual", "bumble's virtual controllers"),
})


def file_keys(transport: str) -> tuple[str, ...]:
    """Every key a file may write under a link's ``transport:`` (``type`` aside): the user
    settings, then the ``edge_`` form of each per-end one."""
    return _schema(transport).user_keys + tuple(EDGE_PREFIX + k for k in PER_END[transport])


def end_settings(transport: str, settings: Mapping[str, Any], end: str) -> dict[str, Any]:
    """What the board at ``end`` (``tx``: the wearable, ``rx``: the edge) gets from a link's file
    settings: the edge takes ``edge_<key>`` as its ``<key>`` where the file gives one; both ends
    get ``<key>`` otherwise. No ``edge_`` key is left in what it returns."""
    if end not in ENDS:
        raise ValueError(f"unknown link end {end!r}; expected one of {', '.join(ENDS)}")
    per_end = PER_END[_schema(transport).name]
    out = {k: v for k, v in settings.items() if not _edge_form(k, per_end)}
    if end == "rx":
        for key in per_end:
            if settings.get(EDGE_PREFIX + key) is not None:
                out[key] = settings[EDGE_PREFIX + key]
    return out


def _edge_form(key: Any, per_end: tuple[str, ...]) -> bool:
    return isinstance(key, str) and key.startswith(EDGE_PREFIX) and key[len(EDGE_PREFIX):] in per_end


# ------------------------------------------------------------------------------ the two checks


def _schema(transport: str) -> TransportSchema:
    try:
        return SCHEMAS[transport]
    except KeyError:
        raise TransportError(f"unknown transport {transport!r}; expected one of "
                             f"{', '.join(TRANSPORT_NAMES)}") from None


def shown(value: Any) -> str:
    """A refused value as an error shows it after "got" (the inventory reader uses it for every key)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (str, int, float)):
        return _clipped(repr(value))
    return _clipped(f"{value!r} ({type(value).__name__})")


def _clipped(text: str, limit: int = 80) -> str:
    """An error line stays a line: a long value (a 400-digit number, a pasted blob) is cut."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _checked(schema: TransportSchema, key: str, value: Any, *, as_key: str | None = None) -> Any:
    """``value`` checked by ``key``'s rule; an error names ``as_key`` (an ``edge_`` form) if given."""
    setting = schema.settings[key]
    if value is None and setting.nullable:
        return None
    try:
        return setting.check(value)
    except Invalid as exc:
        name = as_key or key
        board = f"is {exc.why}" if exc.why else f"must be {exc.expected}, got {value!r}"
        detail = (f"expected {exc.expected} ({exc.why})" if exc.why
                  else f"expected {exc.expected}; got {shown(value)}")
        raise SettingError(f"{schema.name} transport: {name} {board}", transport=schema.name, key=name,
                           detail=detail) from None


def _apply(schema: TransportSchema, rules: tuple[Rule, ...], values: Mapping[str, Any], *,
           end: str | None = None, edge_of: Mapping[str, str] | None = None) -> None:
    """Apply ``rules`` to one end's settings. For a link whose ends differ, ``end`` says which
    end an error without a key of its own is about, and ``edge_of`` (the edge's end: key -> the
    ``edge_`` key it came from) makes an error name the key the file wrote."""
    for rule in rules:
        try:
            rule(values)
        except Broken as exc:
            key, message = exc.key, exc.message
            if edge_of and key in edge_of:
                key, message = edge_of[key], f"{message} ({edge_of[key]} is the edge's {key})"
            elif end is not None and key is None:
                message = f"on the {end} end: {message}"
            where = f"{key} " if key else ""
            raise SettingError(f"{schema.name} transport: {where}{message}", transport=schema.name,
                               key=key, detail=message) from None


def check_settings(transport: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The board's check of one end's settings: every key known, every value and rule right.

    Returns the values to use (numbers of seconds as float); raises `SettingError`.
    """
    schema = _schema(transport)
    unknown = sorted(k for k in values if k not in schema.settings)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(schema.settings), n=1) if len(unknown) == 1 else []
        raise SettingError(f"{schema.name} transport: unknown setting(s) {', '.join(map(repr, unknown))}; "
                           f"expected only {', '.join(schema.settings)}"
                           + (f" (did you mean {hint[0]!r}?)" if hint else ""),
                           transport=schema.name, key=unknown[0], detail="unknown setting")
    out = {k: _checked(schema, k, v) for k, v in values.items()}
    _apply(schema, schema.file_rules + schema.end_rules, out)
    return out


def check_file_settings(transport: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The check of what a user wrote under a link's ``transport:`` (``type`` left out).

    Only user settings are accepted; a null value means "not set" and is left out. Returns the
    settings that were set, checked; raises `SettingError` on the first problem.
    """
    schema = _schema(transport)
    per_end, known = PER_END[schema.name], file_keys(schema.name)
    for key in values:
        if _edge_form(key, per_end):
            continue
        setting = schema.settings.get(key)
        if setting is None:
            detail = _not_a_file_key(schema, key, per_end, known)
            raise SettingError(f"{schema.name} transport: {key}: {detail}", transport=schema.name,
                               key=key, detail=detail)
        if setting.owner == HARNESS:
            detail = f"set by the harness ({setting.note}); expected no {key} in the inventory"
            raise SettingError(f"{schema.name} transport: {key}: {detail}", transport=schema.name,
                               key=key, detail=detail)
    for key in schema.user_keys:
        if schema.settings[key].required and values.get(key) is None:
            detail = f"required key missing; expected {schema.settings[key].expected}"
            raise SettingError(f"{schema.name} transport: {key}: {detail}", transport=schema.name,
                               key=key, detail=detail, missing=True)
    out = {k: (_checked(schema, k[len(EDGE_PREFIX):], v, as_key=k) if _edge_form(k, per_end)
               else _checked(schema, k, v))
           for k, v in values.items() if v is not None}
    _both_ends_local(schema, out)
    edge_of = {k[len(EDGE_PREFIX):]: k for k in out if _edge_form(k, per_end)}
    _apply(schema, schema.file_rules, end_settings(schema.name, out, "tx"),
           end="wearable's" if edge_of else None)
    if edge_of:
        _apply(schema, schema.file_rules, end_settings(schema.name, out, "rx"), end="edge's", edge_of=edge_of)
    return out


def _not_a_file_key(schema: TransportSchema, key: Any, per_end: tuple[str, ...], known: tuple[str, ...]) -> str:
    """Why ``key`` may not be written under a ``transport:`` of this kind (it is no setting of it)."""
    base = key[len(EDGE_PREFIX):] if isinstance(key, str) and key.startswith(EDGE_PREFIX) else None
    if base in schema.settings:
        if not per_end:
            return f"{schema.name} links have no per-end settings (both ends share all); expected no {key}"
        setting = schema.settings[base]
        why = (f"{base} is set by the harness ({setting.note})" if setting.owner == HARNESS
               else f"{base} is the same on both ends of a {schema.name} link")
        return (f"{why}; expected no {key} (the per-end settings of {schema.name}: "
                f"{', '.join(EDGE_PREFIX + k for k in per_end)})")
    hint = difflib.get_close_matches(str(key), list(known), n=1)
    return (f"unknown {schema.name} setting; expected one of {', '.join(known)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _both_ends_local(schema: TransportSchema, values: Mapping[str, Any]) -> None:
    """A value that has the local fabric make both ends (``port: pty``) takes no ``edge_`` value."""
    if schema.name not in LOCAL_PAIR:
        return
    key, local, what = LOCAL_PAIR[schema.name]
    edge_key = EDGE_PREFIX + key
    if values.get(key) == local and edge_key in values:
        detail = f"{key}: {local} makes both ends ({what}); expected no {edge_key} with {key}: {local}"
        raise SettingError(f"{schema.name} transport: {edge_key}: {detail}", transport=schema.name,
                           key=edge_key, detail=detail)
    if values.get(edge_key) == local:
        detail = (f"{local!r} is only for {key} (then both ends are made as {what}); "
                  f"expected the edge's own {key}")
        raise SettingError(f"{schema.name} transport: {edge_key}: {detail}", transport=schema.name,
                           key=edge_key, detail=detail)
