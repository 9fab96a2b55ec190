"""Link profiles: what a link looks like (rate, per-frame overhead, delay, outages, queue).

Holds `LinkProfile`, the `PRESETS` (IEEE 802.15.6 HBC rates, BLE 1M/2M, ideal) and
`resolve_profile`, which turns a preset name or an inline mapping from `inventory.yaml`
into a validated profile, raising `ProfileError` that names the offending key.

This first cut models rate, per-frame overhead, fixed delay, scheduled outages that drop,
and a byte queue limit. MTU, jitter, loss and "hold" outages are not modelled yet and are
refused with a clear message rather than ignored. This module must not import anything
from `nodes` or `testbed`, and does no I/O.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ProfileError", "Outage", "LinkProfile", "PRESETS", "OUTAGE_MODES",
           "resolve_profile"]

OUTAGE_MODES = ("drop",)
_PLANNED_OUTAGE_MODES = ("hold",)


class ProfileError(ValueError):
    """A profile spec is invalid. `.key` names the offending key, `.detail` what was expected."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"{key}: {message}" if key else message)


# ---------------------------------------------------------------------------- value checks


def _number(value: Any, *, key: str, minimum: float = 0.0, strict: bool = False,
            allow_inf: bool = False) -> float:
    """A real number >= minimum (> minimum when strict), finite unless allow_inf."""
    bound = f"{'>' if strict else '>='} {minimum:g}"
    expected = f"a number {bound}" + (" (or inf)" if allow_inf else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError(f"expected {expected}, got {value!r}", key=key)
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not (allow_inf and number > 0)):
        raise ProfileError(f"expected {expected}, got {value!r}", key=key)
    if number < minimum or (strict and number == minimum):
        raise ProfileError(f"expected {expected}, got {value!r}", key=key)
    return number


def _integer(value: Any, *, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProfileError(f"expected an integer >= {minimum}, got {value!r}", key=key)
    return value


def _outage_mode(value: Any, *, key: str) -> str:
    if value in _PLANNED_OUTAGE_MODES:
        raise ProfileError(f"outage_mode {value!r} is not supported yet; "
                           f"expected one of {', '.join(OUTAGE_MODES)}", key=key)
    if value not in OUTAGE_MODES:
        raise ProfileError(f"expected one of {', '.join(OUTAGE_MODES)}, got {value!r}", key=key)
    return value


def _check_keys(spec: Mapping, allowed: Iterable[str], *, prefix: str = "") -> None:
    allowed = tuple(allowed)
    for key in spec:
        if key not in allowed:
            raise ProfileError(f"unknown key; expected one of {', '.join(allowed)}",
                               key=f"{prefix}{key}")


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Outage:
    """The link is down during [start_s, start_s + duration_s), relative to the shaper's start."""

    start_s: float
    duration_s: float

    def __post_init__(self) -> None:
        _number(self.start_s, key="start_s")
        _number(self.duration_s, key="duration_s", strict=True, allow_inf=True)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class LinkProfile:
    """A link: rate (bit/s, inf = unlimited), per-frame overhead, delay, outages, queue."""

    name: str
    rate_bps: float
    overhead_bytes: int = 0
    delay_s: float = 0.0
    outages: tuple[Outage, ...] = ()
    outage_mode: str = "drop"
    queue_limit_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ProfileError(f"expected a non-empty string, got {self.name!r}", key="name")
        _number(self.rate_bps, key="rate_bps", strict=True, allow_inf=True)
        _integer(self.overhead_bytes, key="overhead_bytes", minimum=0)
        _number(self.delay_s, key="delay_s")
        _outage_mode(self.outage_mode, key="outage_mode")
        if self.queue_limit_bytes is not None:
            _integer(self.queue_limit_bytes, key="queue_limit_bytes", minimum=1)
        outages = tuple(self.outages)
        for i, outage in enumerate(outages):
            if not isinstance(outage, Outage):
                raise ProfileError(f"expected an Outage, got {outage!r}", key=f"outages[{i}]")
        object.__setattr__(self, "outages", tuple(sorted(outages, key=lambda o: o.start_s)))

    def tx_time_s(self, nbytes: int) -> float:
        """Seconds to serialise a frame of `nbytes` plus the per-frame overhead."""
        if math.isinf(self.rate_bps):
            return 0.0
        return (nbytes + self.overhead_bytes) * 8 / self.rate_bps

    def with_outages(self, outages: Iterable[Outage]) -> LinkProfile:
        """The same profile with its outage schedule replaced."""
        return LinkProfile(**{**self._fields(), "outages": tuple(outages)})

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (an infinite rate becomes None); `from_dict` is its inverse."""
        return {**self._fields(),
                "rate_bps": None if math.isinf(self.rate_bps) else self.rate_bps,
                "outages": [{"start_s": o.start_s, "duration_s": o.duration_s}
                            for o in self.outages]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinkProfile:
        _check_keys(d, cls.__dataclass_fields__)
        for required in ("name", "rate_bps"):
            if required not in d:
                raise ProfileError("missing; expected it in a profile dict", key=required)
        data = dict(d)
        if data.get("rate_bps", 0) is None:
            data["rate_bps"] = math.inf
        outages = []
        for i, o in enumerate(data.get("outages", ())):
            if not isinstance(o, Mapping):
                raise ProfileError(f"expected a mapping, got {o!r}", key=f"outages[{i}]")
            _check_keys(o, ("start_s", "duration_s"), prefix=f"outages[{i}].")
            outages.append(Outage(**o))
        data["outages"] = tuple(outages)
        return cls(**data)

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# ---------------------------------------------------------------------------- presets

_HBC_OVERHEAD = 9  # 802.15.6 MAC header 7 + FCS 2
_BLE_OVERHEAD = 10

PRESETS: dict[str, LinkProfile] = {
    p.name: p for p in (
        LinkProfile("hbc-164k", 164_062.5, overhead_bytes=_HBC_OVERHEAD),
        LinkProfile("hbc-328k", 328_125.0, overhead_bytes=_HBC_OVERHEAD),
        LinkProfile("hbc-656k", 656_250.0, overhead_bytes=_HBC_OVERHEAD),
        LinkProfile("hbc-1312k", 1_312_500.0, overhead_bytes=_HBC_OVERHEAD),
        LinkProfile("ble-1m", 1e6, overhead_bytes=_BLE_OVERHEAD),
        LinkProfile("ble-2m", 2e6, overhead_bytes=_BLE_OVERHEAD),
        LinkProfile("ideal", math.inf),
    )
}

_SPEC_KEYS = ("preset", "rate_bps", "overhead_bytes", "delay_ms", "outages", "outage_mode",
              "queue_limit_bytes")


def _preset(name: Any, *, key: str | None) -> LinkProfile:
    if not isinstance(name, str) or name not in PRESETS:
        raise ProfileError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}",
                           key=key)
    return PRESETS[name]


def _outages_from_spec(value: Any) -> tuple[Outage, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ProfileError(f"expected a list of {{at_s, duration_s}}, got {value!r}",
                           key="outages")
    outages = []
    for i, item in enumerate(value):
        key = f"outages[{i}]"
        if not isinstance(item, Mapping):
            raise ProfileError(f"expected a mapping {{at_s, duration_s}}, got {item!r}", key=key)
        _check_keys(item, ("at_s", "duration_s"), prefix=f"{key}.")
        for required in ("at_s", "duration_s"):
            if required not in item:
                raise ProfileError("missing; expected a number", key=f"{key}.{required}")
        outages.append(Outage(
            start_s=_number(item["at_s"], key=f"{key}.at_s"),
            duration_s=_number(item["duration_s"], key=f"{key}.duration_s", strict=True,
                               allow_inf=True)))
    return tuple(outages)


def _overrides_from_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the inline keys of a mapping spec and convert them to LinkProfile fields."""
    out: dict[str, Any] = {}
    if "rate_bps" in spec:
        out["rate_bps"] = _number(spec["rate_bps"], key="rate_bps", strict=True, allow_inf=True)
    if "overhead_bytes" in spec:
        out["overhead_bytes"] = _integer(spec["overhead_bytes"], key="overhead_bytes", minimum=0)
    if "delay_ms" in spec:
        out["delay_s"] = _number(spec["delay_ms"], key="delay_ms") / 1000.0
    if "outages" in spec:
        out["outages"] = _outages_from_spec(spec["outages"])
    if "outage_mode" in spec:
        out["outage_mode"] = _outage_mode(spec["outage_mode"], key="outage_mode")
    if spec.get("queue_limit_bytes") is not None:
        out["queue_limit_bytes"] = _integer(spec["queue_limit_bytes"], key="queue_limit_bytes",
                                            minimum=1)
    elif "queue_limit_bytes" in spec:
        out["queue_limit_bytes"] = None
    return out


def resolve_profile(spec: str | Mapping[str, Any] | LinkProfile, *,
                    name: str | None = None) -> LinkProfile:
    """A validated profile from a preset name, an inline mapping, or a profile.

    Mapping keys: preset, rate_bps, overhead_bytes, delay_ms, outages ([{at_s, duration_s}]),
    outage_mode, queue_limit_bytes. Inline keys override the preset; without a preset,
    rate_bps is required. `name` defaults to the preset's name, else "custom".
    """
    if isinstance(spec, LinkProfile):
        return spec if name is None else LinkProfile(**{**spec._fields(), "name": name})
    if isinstance(spec, str):
        base = _preset(spec, key=None)
        return base if name is None else LinkProfile(**{**base._fields(), "name": name})
    if not isinstance(spec, Mapping):
        raise ProfileError(f"expected a preset name or a mapping, got {spec!r}")
    _check_keys(spec, _SPEC_KEYS)
    overrides = _overrides_from_spec(spec)
    if "preset" in spec:
        base = _preset(spec["preset"], key="preset")._fields()
    elif "rate_bps" in overrides:
        base = {"name": "custom"}
    else:
        raise ProfileError("missing; expected a number > 0 (or inf) when no preset is given",
                           key="rate_bps")
    return LinkProfile(**{**base, **overrides, "name": name or base["name"]})
