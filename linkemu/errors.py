"""Errors and value checks shared by the link-emulation modules.

Holds `HarnessError`, the common base of every error the three packages raise on purpose
(the CLI catches it, prints its message on one line and exits with its `exit_code`), the
package root `LinkemuError`, and under it `ProfileError` (a bad profile spec, naming the
key), `TraceError` (a bad line of an outage trace file, naming line and column) and
`LinkError` (the kernel backend cannot do what was asked), plus the small validators that
raise them. Pure: no I/O, and it must not
import anything from `nodes` or `testbed`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["HarnessError", "LinkemuError", "ProfileError", "TraceError", "LinkError", "as_float"]


class HarnessError(Exception):
    """Base of every error hbc-testbed raises on purpose, in linkemu, nodes and testbed alike.
    Its message says what was expected; `exit_code` is what the CLI exits with (2: input or
    configuration the user can fix, 1: a run that failed)."""

    exit_code = 1


class LinkemuError(HarnessError):
    """Root of the link emulator's errors."""


class ProfileError(LinkemuError, ValueError):
    """A profile spec is invalid. `.key` names the offending key, `.detail` what was expected."""

    exit_code = 2

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"{key}: {message}" if key else message)


class TraceError(ProfileError):
    """A line of an outage trace file is invalid; `.line` and `.column` are 1-based."""

    def __init__(self, message: str, *, source: str, line: int, column: int,
                 key: str | None = "outage_trace") -> None:
        self.source = source
        self.line = line
        self.column = column
        super().__init__(f"{source} line {line}, column {column}: {message}", key=key)


class LinkError(LinkemuError, RuntimeError):
    """The kernel backend cannot honour a profile, or a tc/nft/ip command failed."""

    exit_code = 2


# ---------------------------------------------------------------------------- validators


def as_float(value: Any) -> float | None:
    """A real number (int or float, never bool) as a float, inf and NaN included; None for
    anything else, an int too large for a float among them (so no check ever overflows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def number(value: Any, *, key: str, minimum: float = 0.0, strict: bool = False,
           allow_inf: bool = False, maximum: float | None = None) -> float:
    """A real number >= minimum (> minimum when strict), <= maximum, finite unless allow_inf."""
    bound = f"{'>' if strict else '>='} {minimum:g}"
    if maximum is not None:
        bound += f" and <= {maximum:g}"
    expected = f"a number {bound}" + (" (or inf)" if allow_inf else "")
    out = as_float(value)
    if out is None or math.isnan(out) or (math.isinf(out) and not (allow_inf and out > 0)):
        raise ProfileError(f"expected {expected}, got {value!r}", key=key)
    if out < minimum or (strict and out == minimum) or (maximum is not None and out > maximum):
        raise ProfileError(f"expected {expected}, got {value!r}", key=key)
    return out


def integer(value: Any, *, key: str, minimum: int) -> int:
    """An int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProfileError(f"expected an integer >= {minimum}, got {value!r}", key=key)
    return value


def boolean(value: Any, *, key: str) -> bool:
    if not isinstance(value, bool):
        raise ProfileError(f"expected true or false, got {value!r}", key=key)
    return value


def choice(value: Any, options: Iterable[str], *, key: str) -> str:
    options = tuple(options)
    if value not in options:
        raise ProfileError(f"expected one of {', '.join(options)}, got {value!r}", key=key)
    return value


def mapping(value: Any, *, key: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProfileError(f"expected a mapping {what}, got {value!r}", key=key)
    return value


def check_keys(spec: Mapping, allowed: Iterable[str], *, prefix: str = "") -> None:
    """Every key of `spec` is one of `allowed`, else ProfileError naming the first stranger."""
    allowed = tuple(allowed)
    for key in spec:
        if key not in allowed:
            raise ProfileError(f"unknown key; expected one of {', '.join(allowed)}",
                               key=f"{prefix}{key}")


def require(spec: Mapping, keys: Iterable[str], *, prefix: str = "",
            what: str = "a number") -> None:
    for key in keys:
        if key not in spec:
            raise ProfileError(f"missing; expected {what}", key=f"{prefix}{key}")
