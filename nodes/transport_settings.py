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
           "TRANSPORT_NAMES", "check_settings", "check_file_settings", "shown"]

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


def _checked(schema: TransportSchema, key: str, value: Any) -> Any:
    setting = schema.settings[key]
    if value is None and setting.nullable:
        return None
    try:
        return setting.check(value)
    except Invalid as exc:
        board = f"is {exc.why}" if exc.why else f"must be {exc.expected}, got {value!r}"
        detail = (f"expected {exc.expected} ({exc.why})" if exc.why
                  else f"expected {exc.expected}; got {shown(value)}")
        raise SettingError(f"{schema.name} transport: {key} {board}", transport=schema.name, key=key,
                           detail=detail) from None


def _apply(schema: TransportSchema, rules: tuple[Rule, ...], values: Mapping[str, Any]) -> None:
    for rule in rules:
        try:
            rule(values)
        except Broken as exc:
            where = f"{exc.key} " if exc.key else ""
            raise SettingError(f"{schema.name} transport: {where}{exc.message}", transport=schema.name,
                               key=exc.key, detail=exc.message) from None


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
    for key in values:
        setting = schema.settings.get(key)
        if setting is None:
            hint = difflib.get_close_matches(str(key), list(schema.user_keys), n=1)
            detail = (f"unknown {schema.name} setting; expected one of {', '.join(schema.user_keys)}"
                      + (f" (did you mean {hint[0]!r}?)" if hint else ""))
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
    out = {k: _checked(schema, k, v) for k, v in values.items() if v is not None}
    _apply(schema, schema.file_rules, out)
    return out
