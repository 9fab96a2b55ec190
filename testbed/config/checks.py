"""The check kit: small converters and a reader that turn plain YAML data into checked values.

Holds ``_Reader`` (a file's data read key by key: ``mapping`` checks allowed and required keys,
``get`` converts one value, ``list``; every problem a ConfigError naming file, line, dotted key
and what was expected) and the converters it takes: ``_choice``, ``_string``, ``_integer``,
``_number``, ``_local_path`` and ``_Conv`` for a custom check raising ``_Invalid``.

It must not know any schema: which keys a file has and what they mean belong to
``testbed.config.inventory`` and ``testbed.config.experiment``. It does no I/O.
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from linkemu.errors import as_float
from nodes.transport_settings import shown as _got  # one way to show a refused value, file or board
from testbed.config.yamlfile import nearest, nearest_line
from testbed.errors import ConfigError

_MISSING: Any = object()


class _Invalid(Exception):
    """Raised by a converter: carries what was expected (the reader adds what it got)."""

    def __init__(self, expected: str, got: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got


class _Conv:
    """A converter with a description used in 'expected ...' messages."""

    def __init__(self, expected: str, fn: Callable[[Any], Any]) -> None:
        self.expected = expected
        self.fn = fn

    def __call__(self, value: Any) -> Any:
        return self.fn(value)


def _choice(options: Sequence[str]) -> _Conv:
    expected = "one of " + ", ".join(options)

    def fn(v: Any) -> str:
        if isinstance(v, str) and v in options:
            return v
        raise _Invalid(expected)
    return _Conv(expected, fn)


def _string(*, pattern: re.Pattern[str] | None = None, desc: str = "a non-empty string") -> _Conv:
    def fn(v: Any) -> str:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and pattern is None:
            v = str(v)  # host: 10.0.0.1 is a string anyway; python: 3 -> "3" is harmless
        if not isinstance(v, str) or not v.strip():
            raise _Invalid(desc)
        if pattern is not None and not pattern.fullmatch(v):
            raise _Invalid(desc)
        return v
    return _Conv(desc, fn)


def _integer(*, lo: int | None = None, hi: int | None = None) -> _Conv:
    if lo is not None and hi is not None:
        desc = f"an integer from {lo} to {hi}"
    elif lo is not None:
        desc = f"an integer >= {lo}"
    else:
        desc = "an integer"

    def fn(v: Any) -> int:
        if isinstance(v, float) and v.is_integer() and not isinstance(v, bool):
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise _Invalid(desc)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Invalid(desc)
        return v
    return _Conv(desc, fn)


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number(*, gt: float | None = None, ge: float | None = None, le: float | None = None) -> _Conv:
    desc = "a number"
    if gt is not None:
        desc += f" > {gt:g}"
    elif ge is not None:
        desc += f" >= {ge:g}"
    if le is not None:
        desc += f" and <= {le:g}"

    def fn(v: Any) -> float:
        # PyYAML reads 3e-3 (no dot) as a string; accept it as the number it obviously is.
        if isinstance(v, str) and _FLOAT_TEXT.fullmatch(v.strip()):
            v = float(v)
        v = as_float(v)
        if v is None or not math.isfinite(v):
            raise _Invalid(desc)
        if (gt is not None and not v > gt) or (ge is not None and not v >= ge) or (le is not None and not v <= le):
            raise _Invalid(desc)
        return v
    return _Conv(desc, fn)


def _local_path(desc: str = "a path") -> _Conv:
    def fn(v: Any) -> Path:
        if not isinstance(v, str) or not v.strip():
            raise _Invalid(desc)
        return Path(v).expanduser()
    return _Conv(desc, fn)


class _Reader:
    """Reads plain data from one file, raising ConfigError with file, line and key.

    ``sources`` maps dotted keys whose values did not come from the file (overrides) to what
    they came from (``--samples``); an error at such a key, or below it, names that source
    instead of a file line.
    """

    def __init__(self, file: Path, lines: Mapping[str, int], *,
                 sources: Mapping[str, str] | None = None) -> None:
        self.file = str(file)
        self.lines = lines
        self.sources: Mapping[str, str] = sources or {}

    def error(self, key: str, message: str, *, line_key: str | None = None) -> ConfigError:
        source = nearest(self.sources, key)
        if source is not None:
            return ConfigError(message, file=source, key=key or None)
        line = nearest_line(self.lines, key if line_key is None else line_key)
        return ConfigError(message, file=self.file, line=line, key=key or None)

    def mapping(self, value: Any, key: str, *, allowed: Collection[str],
                required: Mapping[str, str] | Collection[str] = (), what: str = "a mapping",
                ) -> dict[str, Any]:
        """Check ``value`` is a mapping with only ``allowed`` keys and every ``required`` key.

        ``required`` may map key -> description of what it should hold.
        """
        if not isinstance(value, dict):
            raise self.error(key, f"expected {what}; got {_got(value)}")
        for k in value:
            if k not in allowed:
                hint = difflib.get_close_matches(k, list(allowed), n=1)
                msg = "unknown key; expected one of " + ", ".join(allowed)
                if hint:
                    msg += f" (did you mean {hint[0]!r}?)"
                raise self.error(_join(key, k), msg)
        for k in required:
            if k not in value:
                desc = required[k] if isinstance(required, Mapping) else None
                msg = "required key missing" + (f"; expected {desc}" if desc else "")
                raise self.error(_join(key, k), msg, line_key=key)
        return value

    def get(self, m: Mapping[str, Any], key: str, name: str, conv: _Conv, *,
            default: Any = _MISSING) -> Any:
        """``m[name]`` converted; ``default`` when absent or null (required if no default)."""
        full = _join(key, name)
        value = m.get(name)
        if value is None:
            if default is not _MISSING:
                return default
            if name not in m:
                raise self.error(full, f"required key missing; expected {conv.expected}",
                                 line_key=key)
        try:
            return conv(value)
        except _Invalid as exc:
            got = exc.got if exc.got is not None else _got(value)
            raise self.error(full, f"expected {exc.expected}; got {got}") from None

    def list(self, value: Any, key: str, *, what: str = "a list") -> list[Any]:
        if not isinstance(value, list):
            raise self.error(key, f"expected {what}; got {_got(value)}")
        return value


def _join(key: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{key}[{name}]"
    return f"{key}.{name}" if key else name

