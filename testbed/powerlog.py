"""The run's raw power readings: ``runs/<id>/power/<board>.csv``, from the boards' batches.

Holds ``PowerLog``: for each ``power`` telemetry a board sends (a batch of readings,
``[t_ns, rail, mV, mA, mW]`` rows stamped with the board's own monotonic clock), it checks every
row, appends the good ones to that board's CSV (``t_ns,rail,mV,mA,mW``, flushed per batch) and
returns the light ``power`` event the run's log keeps instead of the rows: the batch's readings,
the rows it dropped, its energy and mean power and the meter's own description. A batch's energy
is the readings as steps (each reading is the mean power since the one before it, the rule of
``nodes.energy.attribution``), so batches add up to the board's total. A malformed batch or
row is counted and dropped, never fatal; only boards of the inventory get a file. It writes
nothing outside ``power/`` of the run directory.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["PowerLog", "CSV_HEADER"]

CSV_HEADER = ("t_ns", "rail", "mV", "mA", "mW")
MAX_ROWS = 100_000          # per batch: far above 1 kHz x a telemetry period
MAX_RAIL = 64


@dataclass
class _Board:
    fh: TextIO
    writer: Any
    last_t_ns: int | None = None


def _row(row: Any) -> tuple[int, str, float, float, float] | None:
    """One reading as written, or None when it is not ``[t_ns, rail, mV, mA, mW]`` of sane types."""
    if not isinstance(row, (list, tuple)) or len(row) != 5:
        return None
    t, rail, mv, ma, mw = row
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 1 << 63:
        return None
    if not isinstance(rail, str) or not 0 < len(rail) <= MAX_RAIL or not rail.isprintable() or "," in rail:
        return None
    values = []
    for v in (mv, ma, mw):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e9:
            return None
        values.append(float(v))
    return (t, rail, values[0], values[1], values[2])


class PowerLog:
    """One CSV per board under ``folder``; ``add`` takes a board's batch. A context manager."""

    def __init__(self, folder: Path, *, boards: Collection[str]) -> None:
        self.folder = Path(folder)
        self._known = set(boards)
        self._boards: dict[str, _Board] = {}
        self.dropped_batches = 0

    def __enter__(self) -> PowerLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for b in self._boards.values():
            b.fh.close()
        self._boards.clear()

    def _board(self, name: str) -> _Board:
        if name not in self._boards:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.folder / f"{name}.csv", "a", newline="", encoding="utf-8")
            writer = csv.writer(fh)
            if fh.tell() == 0:
                writer.writerow(CSV_HEADER)
            self._boards[name] = _Board(fh=fh, writer=writer)
        return self._boards[name]

    def add(self, board: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Write ``board``'s batch ``msg``; the fields of its ``power`` event (None: dropped whole)."""
        rows = msg.get("rows")
        if board not in self._known or not isinstance(rows, list) or len(rows) > MAX_ROWS:
            self.dropped_batches += 1
            return None
        good = [r for r in (_row(x) for x in rows) if r is not None]
        good.sort(key=lambda r: r[0])
        b = self._board(board)
        mj, span_ns, prev = 0.0, 0, b.last_t_ns
        for t, *_rest, mw in good:
            if prev is not None and t > prev:
                mj += mw * (t - prev) / 1e9
                span_ns += t - prev
            prev = t if prev is None else max(prev, t)
            b.writer.writerow((t, _rest[0], _rest[1], _rest[2], mw))
        b.last_t_ns = prev
        b.fh.flush()
        meter = msg.get("meter") if isinstance(msg.get("meter"), dict) else {}
        idle = msg.get("idle_w")
        stats = msg.get("stats") if isinstance(msg.get("stats"), dict) else {}
        return {"readings": len(good), "bad_rows": len(rows) - len(good), "mj": round(mj, 4),
                "span_s": round(span_ns / 1e9, 6), "mean_w": round(mj / (span_ns / 1e9) / 1e3, 4) if span_ns else None,
                "idle_w": float(idle) if isinstance(idle, (int, float)) and math.isfinite(idle) else None,
                "meter": {k: meter[k] for k in ("meter", "rail", "modelled", "max_rate_hz") if k in meter},
                "rate_hz": msg.get("rate_hz") if isinstance(msg.get("rate_hz"), (int, float)) else None,
                "sampler": {k: stats[k] for k in ("samples", "errors", "lost", "achieved_hz", "failure") if k in stats}}
