"""YAML files with line numbers: ``read_yaml`` parses a file into plain data plus a map from
every dotted key (``boards.wrist.role``, ``links[1].profile.rate_bps``) to its 1-based line.

It refuses, as a :class:`~testbed.errors.ConfigError` naming file and line, what would make a
line unknowable or the data ambiguous: unreadable or empty files, syntax errors, tabs, duplicate
keys, non-scalar keys, recursive aliases and tags other than plain maps and lists. Keys stay the
text written (``on``, ``no``, ``1`` are strings).

It must not know any schema (which keys a file has, what values mean): that is the inventory's
and the experiment's, checked with ``testbed.config.checks``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from testbed.errors import ConfigError

__all__ = ["read_yaml", "nearest", "nearest_line", "parent_key"]

T = TypeVar("T")


def _fmt(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


_LAST_SEGMENT = re.compile(r"(\.[^.\[\]]*|\[\d+\])$")


def parent_key(key: str) -> str:
    """The dotted key one level up (``links[1]`` for ``links[1].profile``; "" for a top-level key)."""
    stripped = _LAST_SEGMENT.sub("", key)
    if stripped == key:  # a top-level key
        return ""
    return stripped


def nearest(table: Mapping[str, T], key: str) -> T | None:
    """``table``'s entry for a dotted key, or for its nearest parent present; None if none is."""
    while True:
        if key in table:
            return table[key]
        if not key:
            return None
        key = parent_key(key)


def nearest_line(lines: Mapping[str, int], key: str) -> int | None:
    """1-based line of a dotted key (``links[1].profile``), or of its nearest present parent."""
    return nearest(lines, key)


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


def read_yaml(path: Path, what: str) -> tuple[Any, dict[str, int]]:
    """Parse ``path`` into plain Python data plus a map dotted key -> 1-based line."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"file not found; expected {what}", file=file) from None
    except IsADirectoryError:
        raise ConfigError(f"is a directory; expected {what}", file=file) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason}); expected {what}", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read ({exc.strerror}); expected {what}", file=file) from None

    lines: dict[str, int] = {}
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"file is empty; expected {what}", file=file, line=1)
        lines[""] = node.start_mark.line + 1
        data = _convert(loader, node, (), lines, file, set())
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, file) from None
    except yaml.YAMLError as exc:  # unmarked (rare): reader errors on control characters
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    return data, lines


def _yaml_error(exc: yaml.MarkedYAMLError, file: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "syntax error"
    message = f"invalid YAML syntax: {problem}"
    if exc.context:
        where = ""
        if exc.context_mark is not None and (mark is None or exc.context_mark.line != mark.line):
            where = f" at line {exc.context_mark.line + 1}"
        message += f" ({exc.context}{where})"
    if "'\\t'" in problem:
        message += "; expected indentation with spaces, not tabs"
    return ConfigError(message, file=file, line=None if mark is None else mark.line + 1)


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: tuple[str | int, ...],
             lines: dict[str, int], file: str, active: set[int]) -> Any:
    if isinstance(node, ScalarNode):
        return loader.construct_object(node, deep=True)
    if id(node) in active:
        raise ConfigError("recursive alias; expected plain data", file=file,
                          line=node.start_mark.line + 1, key=_fmt(path) or None)
    active.add(id(node))
    try:
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                raise ConfigError(f"unsupported tag {node.tag}; expected a plain list", file=file,
                                  line=node.start_mark.line + 1, key=_fmt(path) or None)
            items = []
            for i, item in enumerate(node.value):
                lines[_fmt(path + (i,))] = item.start_mark.line + 1
                items.append(_convert(loader, item, path + (i,), lines, file, active))
            return items
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                raise ConfigError(f"unsupported tag {node.tag}; expected a plain mapping",
                                  file=file, line=node.start_mark.line + 1, key=_fmt(path) or None)
            seen: dict[str, int] = {}
            for knode, _ in node.value:  # duplicates among the keys written here
                if isinstance(knode, ScalarNode) and knode.tag != "tag:yaml.org,2002:merge":
                    kline = knode.start_mark.line + 1
                    if knode.value in seen:
                        raise ConfigError(
                            f"duplicate key (first given at line {seen[knode.value]}); "
                            "expected each key once", file=file, line=kline,
                            key=_fmt(path + (knode.value,)))
                    seen[knode.value] = kline
            loader.flatten_mapping(node)  # resolves YAML merge keys (<<: *anchor)
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                if not isinstance(knode, ScalarNode):
                    raise ConfigError("expected a plain key; got a mapping or list as key",
                                      file=file, line=knode.start_mark.line + 1,
                                      key=_fmt(path) or None)
                key = knode.value  # the key's text as written: 'on', 'no', '1' stay strings
                kpath = path + (key,)
                lines[_fmt(kpath)] = knode.start_mark.line + 1
                out[key] = _convert(loader, vnode, kpath, lines, file, active)
            return out
        raise ConfigError("unsupported YAML node", file=file, line=node.start_mark.line + 1)
    finally:
        active.discard(id(node))
