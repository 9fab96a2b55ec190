"""Link profiles: what a link looks like, and the presets.

Holds `LinkProfile` (rate, PHY framing, delay, jitter, loss, outages, queue, seed), the
`PRESETS` (IEEE 802.15.6 HBC rates, BLE 1M/2M with a connection-event model, a 921600-baud
UART, ideal) and `resolve_profile`, which turns a preset name or an inline mapping from
`inventory.yaml` into a validated profile, raising `ProfileError` that names the offending
key. The numbers behind the presets and every inline key are documented in docs/linkemu.md.

This module is pure except that `resolve_profile` reads an outage trace file when a spec
names one (the parsed trace then travels inside the profile, so a board never needs the
file). It must not import anything from `nodes` or `testbed`.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkemu.errors import (ProfileError, TraceError, boolean, check_keys, choice, integer,
                            number, require)
from linkemu.framing import Framing
from linkemu.loss import LossModel
from linkemu.outage import OnOffProcess, Outage, OutageTrace, Timeline, load_trace

__all__ = ["ProfileError", "TraceError", "Outage", "OnOffProcess", "OutageTrace", "LossModel",
           "LinkProfile", "PRESETS", "OUTAGE_MODES", "SPEC_KEYS", "resolve_profile",
           "hbc_phy_time_s"]

OUTAGE_MODES = ("drop", "hold")


def _outage_mode(value: Any, *, key: str) -> str:
    return choice(value, OUTAGE_MODES, key=key)


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class LinkProfile:
    """A link. Rate in bit/s (inf = unlimited); a frame is cut into PSDUs of at most
    `max_psdu_bytes` (None = never cut), each carrying `overhead_bytes` of header and costing
    `phy_time_s` more; optional connection events (`frames_per_event` PSDUs every
    `event_interval_s`); fixed `delay_s` plus uniform jitter in [-jitter_s, +jitter_s]
    (order kept unless `reorder`); loss per PSDU; outages from a schedule, an on/off
    process and/or a trace, during which frames are dropped or held; a byte queue limit;
    and a `seed` so a run replays exactly (None: drawn at start and reported)."""

    name: str
    rate_bps: float
    overhead_bytes: int = 0
    delay_s: float = 0.0
    outages: tuple[Outage, ...] = ()
    outage_mode: str = "drop"
    queue_limit_bytes: int | None = None
    max_psdu_bytes: int | None = None
    phy_time_s: float = 0.0
    frames_per_event: int | None = None
    event_interval_s: float = 0.0
    jitter_s: float = 0.0
    reorder: bool = False
    loss: LossModel | None = None
    outage_process: OnOffProcess | None = None
    outage_trace: OutageTrace | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ProfileError(f"expected a non-empty string, got {self.name!r}", key="name")
        number(self.rate_bps, key="rate_bps", strict=True, allow_inf=True)
        integer(self.overhead_bytes, key="overhead_bytes", minimum=0)
        number(self.delay_s, key="delay_s")
        _outage_mode(self.outage_mode, key="outage_mode")
        if self.queue_limit_bytes is not None:
            integer(self.queue_limit_bytes, key="queue_limit_bytes", minimum=1)
        self._check_framing()
        number(self.jitter_s, key="jitter_s")
        boolean(self.reorder, key="reorder")
        self._check_types()
        if self.seed is not None:
            integer(self.seed, key="seed", minimum=0)
        object.__setattr__(self, "outages", tuple(sorted(self.outages, key=lambda o: o.start_s)))

    def _check_framing(self) -> None:
        if self.max_psdu_bytes is not None:
            integer(self.max_psdu_bytes, key="max_psdu_bytes", minimum=1)
            if self.max_psdu_bytes <= self.overhead_bytes:
                raise ProfileError(f"expected more than overhead_bytes ({self.overhead_bytes}) "
                                   f"so a PSDU carries payload, got {self.max_psdu_bytes}",
                                   key="max_psdu_bytes")
        number(self.phy_time_s, key="phy_time_s")
        if self.frames_per_event is not None:
            integer(self.frames_per_event, key="frames_per_event", minimum=1)
            number(self.event_interval_s, key="event_interval_s", strict=True)
        elif self.event_interval_s != 0.0:
            number(self.event_interval_s, key="event_interval_s")
            raise ProfileError("needs frames_per_event too (a connection-event model has both)",
                               key="event_interval_s")

    def _check_types(self) -> None:
        outages = tuple(self.outages)
        for i, outage in enumerate(outages):
            if not isinstance(outage, Outage):
                raise ProfileError(f"expected an Outage, got {outage!r}", key=f"outages[{i}]")
        object.__setattr__(self, "outages", outages)
        for key, kind in (("loss", LossModel), ("outage_process", OnOffProcess),
                          ("outage_trace", OutageTrace)):
            value = getattr(self, key)
            if value is not None and not isinstance(value, kind):
                raise ProfileError(f"expected a {kind.__name__} or None, got {value!r}", key=key)

    # -- arithmetic

    @property
    def framing(self) -> Framing:
        return Framing(self.rate_bps, self.overhead_bytes, self.max_psdu_bytes, self.phy_time_s,
                       self.frames_per_event, self.event_interval_s)

    def airtime_s(self, nbytes: int) -> float:
        """Seconds to carry an `nbytes` frame on an idle, always-up link:
        sum over its PSDUs of phy_time_s + (payload + overhead_bytes) * 8 / rate_bps
        (plus connection-event waits when the profile has events)."""
        return self.framing.airtime_s(nbytes)

    def tx_time_s(self, nbytes: int) -> float:
        """Same as `airtime_s` (the name the first cut used)."""
        return self.airtime_s(nbytes)

    def goodput_bps(self, nbytes: int) -> float:
        """The effective rate seen by an `nbytes` frame: nbytes * 8 / airtime_s(nbytes)."""
        return self.framing.goodput_bps(nbytes)

    @property
    def asymptotic_goodput_bps(self) -> float:
        """Goodput of a long stream of full PSDUs."""
        return self.framing.asymptotic_goodput_bps

    @property
    def has_outages(self) -> bool:
        return bool(self.outages) or self.outage_process is not None \
            or self.outage_trace is not None

    def timeline(self, *, seed: int) -> Timeline:
        """The link's outage timeline (schedule, on/off process and trace; relative seconds).

        The one way a timeline is made from a profile: the user-space shaper, the kernel
        backend and the laptop's fault schedule all call it, so the same profile and seed
        give the same windows everywhere. The process draws from its own stream,
        ``"<seed>/outage"``."""
        return Timeline(schedule=self.outages, process=self.outage_process, trace=self.outage_trace,
                        rng=random.Random(f"{seed}/outage"))

    # -- derived profiles and serialisation

    def with_outages(self, outages: Iterable[Outage]) -> LinkProfile:
        """The same profile with its outage schedule replaced."""
        return LinkProfile(**{**self._fields(), "outages": tuple(outages)})

    def replace(self, **changes: Any) -> LinkProfile:
        """The same profile with some fields changed (validated again)."""
        check_keys(changes, self.__dataclass_fields__)
        return LinkProfile(**{**self._fields(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (an infinite rate becomes None); `from_dict` is its inverse."""
        d = self._fields()
        d["rate_bps"] = None if math.isinf(self.rate_bps) else self.rate_bps
        d["outages"] = [{"start_s": o.start_s, "duration_s": o.duration_s} for o in self.outages]
        for key in ("loss", "outage_process", "outage_trace"):
            d[key] = None if d[key] is None else d[key].as_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinkProfile:
        check_keys(d, cls.__dataclass_fields__)
        require(d, ("name", "rate_bps"), what="it in a profile dict")
        data = dict(d)
        if data.get("rate_bps", 0) is None:
            data["rate_bps"] = math.inf
        outages = []
        for i, o in enumerate(data.get("outages", ())):
            if not isinstance(o, Mapping):
                raise ProfileError(f"expected a mapping, got {o!r}", key=f"outages[{i}]")
            check_keys(o, ("start_s", "duration_s"), prefix=f"outages[{i}].")
            outages.append(Outage(**o))
        data["outages"] = tuple(outages)
        if data.get("loss") is not None:
            data["loss"] = LossModel.from_spec(data["loss"])
        if data.get("outage_process") is not None:
            data["outage_process"] = OnOffProcess.from_spec(data["outage_process"])
        if data.get("outage_trace") is not None:
            data["outage_trace"] = OutageTrace.from_dict(data["outage_trace"])
        return cls(**data)

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# ---------------------------------------------------------------------------- presets

HBC_CHIP_RATE = 42e6            # 802.15.6 HBC (FSDT) chip rate, chips/s
HBC_SYNC_CHIPS = 2048           # preamble + SFD, sent at the chip rate (assumption, see docs)
HBC_PHY_HEADER_BITS = 48        # PHY header incl. HCS, sent at the PSDU rate (assumption)
HBC_MAX_PSDU = 255              # PSDU octets, MAC header and FCS included
HBC_MAC_OVERHEAD = 9            # MAC header 7 + FCS 2

BLE_IFS_S = 150e-6              # T_IFS between packets
BLE_LL_PAYLOAD = 251            # LE Data Length Extension (27 without it)
BLE_EVENT_INTERVAL_S = 7.5e-3   # connection interval (the minimum a central grants)
BLE_FRAMES_PER_EVENT = 6        # data packets per connection event (controller limit)


def hbc_phy_time_s(rate_bps: float) -> float:
    """Per-PSDU PHY time of 802.15.6 HBC at `rate_bps`: preamble + SFD at the chip rate,
    PHY header at the PSDU rate (85 us at 1312.5 kbit/s .. 341 us at 164.0625 kbit/s)."""
    return HBC_SYNC_CHIPS / HBC_CHIP_RATE + HBC_PHY_HEADER_BITS / rate_bps


def _hbc(name: str, rate: float) -> LinkProfile:
    return LinkProfile(name, rate, overhead_bytes=HBC_MAC_OVERHEAD, max_psdu_bytes=HBC_MAX_PSDU,
                       phy_time_s=hbc_phy_time_s(rate))


def _ble(name: str, rate: float, *, preamble_bytes: int) -> LinkProfile:
    air = preamble_bytes + 4 + 2 + 3            # preamble, access address, LL header, CRC
    empty_s = air * 8 / rate                    # the peripheral's empty reply packet
    return LinkProfile(name, rate, overhead_bytes=air + 4 + 3,   # + L2CAP 4 + ATT 3
                       max_psdu_bytes=BLE_LL_PAYLOAD + air,
                       phy_time_s=2 * BLE_IFS_S + empty_s,
                       frames_per_event=BLE_FRAMES_PER_EVENT,
                       event_interval_s=BLE_EVENT_INTERVAL_S)


PRESETS: dict[str, LinkProfile] = {
    p.name: p for p in (
        _hbc("hbc-164k", 164_062.5),
        _hbc("hbc-328k", 328_125.0),
        _hbc("hbc-656k", 656_250.0),
        _hbc("hbc-1312k", 1_312_500.0),
        _ble("ble-1m", 1e6, preamble_bytes=1),
        _ble("ble-2m", 2e6, preamble_bytes=2),
        LinkProfile("uart-921600", 921_600 * 8 / 10),   # 8N1: 10 line bits per byte
        LinkProfile("ideal", math.inf),
    )
}

# ---------------------------------------------------------------------------- inline specs

SPEC_KEYS = ("preset", "rate_bps", "overhead_bytes", "max_psdu_bytes", "phy_time_us",
             "frames_per_event", "event_interval_ms", "delay_ms", "jitter_ms", "reorder",
             "loss", "outages", "outage_process", "outage_trace", "outage_mode",
             "queue_limit_bytes", "seed")


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
        check_keys(item, ("at_s", "duration_s"), prefix=f"{key}.")
        require(item, ("at_s", "duration_s"), prefix=f"{key}.")
        outages.append(Outage(
            start_s=number(item["at_s"], key=f"{key}.at_s"),
            duration_s=number(item["duration_s"], key=f"{key}.duration_s", strict=True,
                              allow_inf=True)))
    return tuple(outages)


def _optional_int(spec: Mapping[str, Any], key: str, *, minimum: int) -> int | None:
    return None if spec[key] is None else integer(spec[key], key=key, minimum=minimum)


def _trace_from_spec(value: Any, base_dir: str | Path | None) -> OutageTrace | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"expected the path of a CSV file (time_s,state[,rate_bps]), "
                           f"got {value!r}", key="outage_trace")
    return load_trace(value, base_dir=base_dir)


_CONVERTERS: dict[str, tuple[str, Any]] = {
    # spec key: (profile field, converter(spec, base_dir))
    "rate_bps": ("rate_bps", lambda s, b: number(s["rate_bps"], key="rate_bps", strict=True,
                                                 allow_inf=True)),
    "overhead_bytes": ("overhead_bytes",
                       lambda s, b: integer(s["overhead_bytes"], key="overhead_bytes", minimum=0)),
    "max_psdu_bytes": ("max_psdu_bytes",
                       lambda s, b: _optional_int(s, "max_psdu_bytes", minimum=1)),
    "phy_time_us": ("phy_time_s", lambda s, b: number(s["phy_time_us"], key="phy_time_us") / 1e6),
    "frames_per_event": ("frames_per_event",
                         lambda s, b: _optional_int(s, "frames_per_event", minimum=1)),
    "event_interval_ms": ("event_interval_s", lambda s, b: number(
        s["event_interval_ms"], key="event_interval_ms") / 1000.0),
    "delay_ms": ("delay_s", lambda s, b: number(s["delay_ms"], key="delay_ms") / 1000.0),
    "jitter_ms": ("jitter_s", lambda s, b: number(s["jitter_ms"], key="jitter_ms") / 1000.0),
    "reorder": ("reorder", lambda s, b: boolean(s["reorder"], key="reorder")),
    "loss": ("loss", lambda s, b: None if s["loss"] is None else LossModel.from_spec(s["loss"])),
    "outages": ("outages", lambda s, b: _outages_from_spec(s["outages"])),
    "outage_process": ("outage_process", lambda s, b: None if s["outage_process"] is None
                       else OnOffProcess.from_spec(s["outage_process"])),
    "outage_trace": ("outage_trace", lambda s, b: _trace_from_spec(s["outage_trace"], b)),
    "outage_mode": ("outage_mode", lambda s, b: _outage_mode(s["outage_mode"], key="outage_mode")),
    "queue_limit_bytes": ("queue_limit_bytes",
                          lambda s, b: _optional_int(s, "queue_limit_bytes", minimum=1)),
    "seed": ("seed", lambda s, b: None if s["seed"] is None
             else integer(s["seed"], key="seed", minimum=0)),
}

# a profile field whose error is reported under its inline key
_FIELD_TO_SPEC = {field: key for key, (field, _) in _CONVERTERS.items()}


def _overrides_from_spec(spec: Mapping[str, Any],
                         base_dir: str | Path | None) -> dict[str, Any]:
    """Validate the inline keys of a mapping spec and convert them to LinkProfile fields."""
    return {field: convert(spec, base_dir) for key, (field, convert) in _CONVERTERS.items()
            if key in spec}


def _build(fields: dict[str, Any]) -> LinkProfile:
    """A LinkProfile whose cross-field errors name the inline key, not the field."""
    try:
        return LinkProfile(**fields)
    except ProfileError as exc:
        if exc.key in _FIELD_TO_SPEC and not isinstance(exc, TraceError):
            raise ProfileError(exc.detail, key=_FIELD_TO_SPEC[exc.key]) from None
        raise


def resolve_profile(spec: str | Mapping[str, Any] | LinkProfile, *, name: str | None = None,
                    base_dir: str | Path | None = None) -> LinkProfile:
    """A validated profile from a preset name, an inline mapping, or a profile.

    Mapping keys (see docs/linkemu.md): preset, rate_bps, overhead_bytes, max_psdu_bytes,
    phy_time_us, frames_per_event, event_interval_ms, delay_ms, jitter_ms, reorder,
    loss ({model: random, p} | {model: gemodel, p, r, 1-h, 1-k}, percent as in netem),
    outages ([{at_s, duration_s}]), outage_process ({distribution: exponential|lognormal,
    mean_up_s, mean_down_s[, sigma_up, sigma_down]}), outage_trace (CSV path, relative to
    `base_dir` when given), outage_mode (drop | hold), queue_limit_bytes, seed. Inline keys
    override the preset; without a preset, rate_bps is required. `name` defaults to the
    preset's name, else "custom".
    """
    if isinstance(spec, LinkProfile):
        return spec if name is None else spec.replace(name=name)
    if isinstance(spec, str):
        base = _preset(spec, key=None)
        return base if name is None else base.replace(name=name)
    if not isinstance(spec, Mapping):
        raise ProfileError(f"expected a preset name or a mapping, got {spec!r}")
    check_keys(spec, SPEC_KEYS)
    overrides = _overrides_from_spec(spec, base_dir)
    if "preset" in spec:
        base = _preset(spec["preset"], key="preset")._fields()
    elif "rate_bps" in overrides:
        base = {"name": "custom"}
    else:
        raise ProfileError("missing; expected a number > 0 (or inf) when no preset is given",
                           key="rate_bps")
    return _build({**base, **overrides, "name": name or base["name"]})
