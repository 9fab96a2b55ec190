"""Summary figures as one flat table, and the differences between runs.

Holds ``flatten_summary`` (a ``summary.json`` as dotted names -> scalar values: the one
flattening that ``testbed compare``, the several-run report and the sweep's ``points.csv`` all
use), ``compare_rows`` (two or more flattened summaries side by side, with B - A and the
relative change) and the ``CompareRow`` they are made of.

Pure: it reads no file and prints nothing (``testbed.reportcmd`` does both).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Scalar", "CompareRow", "flatten_summary", "compare_rows", "format_value", "format_rel",
           "SKIP_IN_COMPARE"]

Scalar = float | int | str | None

# names that identify a run rather than measure it: a comparison header names them instead
SKIP_IN_COMPARE = ("run_id", "run_dir")


def flatten_summary(summary: Mapping[str, Any]) -> dict[str, Scalar]:
    """Every scalar leaf of ``summary`` under a dotted name, in the summary's order.

    Nested objects join their keys with dots (``latency_ms.p50``, ``energy.wrist.mj_per_inference.p50``);
    a list of objects that carry a ``name`` is keyed by that name (``links.ankle-edge.dropped``,
    ``boards.edge.samples``; the name is not repeated as a leaf of its own), any other list by
    position; ``true``/``false`` become 1/0; ``null`` and a non-finite float are None (a figure the
    run could not measure, never zero); empty objects and lists add nothing.
    """
    out: dict[str, Scalar] = {}
    _flatten(summary, "", out)
    return out


def _flatten(value: Any, name: str, out: dict[str, Scalar]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(sub, f"{name}.{key}" if name else str(key), out)
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            key = sub.get("name") if isinstance(sub, Mapping) else None
            if isinstance(key, (str, int)) and not isinstance(key, bool):   # named: the name is the key
                sub = {k: v for k, v in sub.items() if k != "name"}
                label = str(key)
            else:
                label = str(i)
            _flatten(sub, f"{name}.{label}" if name else label, out)
    elif isinstance(value, bool):
        out[name] = int(value)
    elif value is None or isinstance(value, (int, str)):
        out[name] = value
    elif isinstance(value, float):
        out[name] = value if math.isfinite(value) else None
    else:
        out[name] = str(value)


@dataclass(frozen=True)
class CompareRow:
    """One figure of runs side by side: its value in each run, and each run against the first."""

    figure: str
    values: tuple[Scalar, ...]

    @property
    def a(self) -> Scalar:
        return self.values[0]

    @property
    def b(self) -> Scalar:
        return self.values[1] if len(self.values) > 1 else None

    def diff(self, i: int = 1) -> float | int | None:
        """Run ``i`` minus the first run (None unless both are numbers)."""
        a, b = self.values[0], self.values[i]
        if not _number(a) or not _number(b):
            return None
        d = b - a   # type: ignore[operator]
        return d if isinstance(d, int) else round(d, 12)

    def rel(self, i: int = 1) -> float | None:
        """(run ``i`` - first) / |first|; None when the first is zero or either is not a number."""
        d = self.diff(i)
        a = self.values[0]
        if d is None or not a:
            return None
        return d / abs(a)   # type: ignore[arg-type]

    @property
    def differs(self) -> bool:
        return any(v != self.values[0] for v in self.values[1:])


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare_rows(flats: Sequence[Mapping[str, Scalar]], *, skip: Sequence[str] = SKIP_IN_COMPARE) -> list[CompareRow]:
    """One row per figure found in any of ``flats`` (flattened summaries, the first is the
    baseline), in first-seen order; a figure a run lacks is None there."""
    names: dict[str, None] = {}
    for flat in flats:
        names.update(dict.fromkeys(k for k in flat if k not in skip))
    return [CompareRow(figure=n, values=tuple(flat.get(n) for flat in flats)) for n in names]


def format_value(v: Any, *, signed: bool = False) -> str:
    """A figure as a table shows it: ``–`` for missing, whole numbers whole (a float too), other
    floats to 6 significant digits."""
    if v is None:
        return "–"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    if isinstance(v, float):
        return f"{v:+.6g}" if signed else f"{v:.6g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:+d}" if signed else str(v)
    return str(v)


def format_rel(r: float | None) -> str:
    """A relative change as a percentage (``+12.5 %``), ``–`` when there is none."""
    return "–" if r is None else f"{100 * r:+.1f} %"
