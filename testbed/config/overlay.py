"""Overrides put into a file's plain data before it is checked: ``--set`` values and sweep points.

Holds ``apply_overrides``: dotted keys (``run.deadline_ms``, ``partition.method``,
``links.*.profile.outage_process``, ``links.wrist-edge.profile.rate_bps``) set on a deep copy of
the data ``read_yaml`` returned, so the file's own reader then checks the result by the file's
rules, and an invalid value is reported at the key with the override's source instead of a line.

Rules, all here:

- A segment after a list named in ``lists`` selects its items by their name field (``*`` = every
  item); an unknown name is an error listing the names there are.
- A missing mapping on the way is created. A string where a mapping is needed is promoted when
  ``promote`` names its field (a link's ``profile: hbc-1312k`` becomes
  ``{preset: hbc-1312k, ...}``); any other scalar in the way is an error.
- A value of None removes the key (``links.*.profile.outage_process: null`` = no outages).

It knows no schema (which keys exist is the readers' business) and does no I/O.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from testbed.errors import ConfigError

__all__ = ["apply_overrides", "parse_assignment"]

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*|\*")


def _fmt(path: list[str | int]) -> str:
    """A path as the file's dotted key (``links[1].profile``), the form read_yaml's lines use."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _segments(key: str, source: str) -> list[str]:
    parts = key.split(".")
    if not key or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise ConfigError("expected a dotted key of names (e.g. run.deadline_ms or links.*.profile.rate_bps)",
                          file=source, key=key or None)
    return parts


def apply_overrides(data: Any, overrides: Mapping[str, Any], *, sources: Mapping[str, str],
                    lists: Mapping[str, str] | None = None,
                    promote: Mapping[str, str] | None = None) -> tuple[Any, dict[str, str]]:
    """A deep copy of ``data`` with every override set, and the file keys it set -> their source.

    ``sources`` names where each override came from (``--set``, ``sweep.yaml:12``), for errors
    here and for the reader's. ``lists`` maps a list's key to its items' name field
    (``{"links": "name"}``); ``promote`` maps a generic key (``links.*.profile``) to the field a
    string found there becomes (``preset``).
    """
    out = copy.deepcopy(data) if data is not None else {}
    if not isinstance(out, dict):
        raise ConfigError("the file's top level is not a mapping; expected a mapping to set keys in",
                          file=next(iter(sources.values()), "<override>"))
    touched: dict[str, str] = {}
    for key, value in overrides.items():
        source = sources.get(key, "<override>")
        for path in _set(out, _segments(key, source), value, key=key, source=source, lists=lists or {},
                         promote=promote or {}):
            touched[_fmt(path)] = source
    return out, touched


def _set(node: dict[str, Any], parts: list[str], value: Any, *, key: str, source: str,
         lists: Mapping[str, str], promote: Mapping[str, str]) -> list[list[str | int]]:
    """Set ``parts`` below ``node`` (a mapping); the concrete paths set."""
    done: list[list[str | int]] = []

    def walk(cur: dict[str, Any], i: int, path: list[str | int], generic: list[str]) -> None:
        name = parts[i]
        if name == "*":
            raise ConfigError("'*' selects the items of a list; expected it after " + " or ".join(lists),
                              file=source, key=key)
        if i == len(parts) - 1:
            if value is None:
                cur.pop(name, None)
            else:
                cur[name] = copy.deepcopy(value)
            done.append([*path, name])
            return
        if name in lists:
            items = cur.get(name)
            if not isinstance(items, list):
                raise ConfigError(f"{name} is not a list here; expected a list of items with a "
                                  f"{lists[name]}", file=source, key=key)
            for j, item in _select(items, parts[i + 1], field=lists[name], key=key, source=source):
                if i + 2 == len(parts):
                    raise ConfigError(f"expected a key inside the {name} item, not the item itself",
                                      file=source, key=key)
                walk(item, i + 2, [*path, name, j], [*generic, name, "*"])
            return
        child = cur.get(name)
        if isinstance(child, str) and ".".join([*generic, name]) in promote:
            child = {promote[".".join([*generic, name])]: child}
        elif child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{_fmt([*path, name])} holds {child!r}, not a mapping; expected a key inside "
                              "a mapping", file=source, key=key)
        cur[name] = child
        walk(child, i + 1, [*path, name], [*generic, name])

    walk(node, 0, [], [])
    return done


def _select(items: list[Any], which: str, *, field: str, key: str,
            source: str) -> list[tuple[int, dict[str, Any]]]:
    """The (index, item) pairs ``which`` names: ``*`` for all, else the item whose ``field`` is it."""
    chosen = [(j, it) for j, it in enumerate(items)
              if isinstance(it, dict) and (which == "*" or it.get(field) == which)]
    if not chosen:
        names = [str(it.get(field)) for it in items if isinstance(it, dict)]
        raise ConfigError(f"no item named {which!r}; expected * or one of {', '.join(names) or '(none)'}",
                          file=source, key=key)
    return chosen


def parse_assignment(text: str, *, flag: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line: the value read as YAML (``3``, ``0.5``, ``[1, 2]``,
    ``{mean_up_s: 9}``, ``null``), the key checked by apply_overrides."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected KEY=VALUE (e.g. run.deadline_ms=200); got {text!r}", file=flag)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"the value is not valid YAML ({problem})", file=flag, key=key.strip()) from None
    return key.strip(), value
