"""The report of a sweep directory: accuracy against link availability, latency against rate.

Holds ``SweepData`` and ``load_sweep`` (read ``sweep.json`` and ``points.csv`` as the sweep
engine writes them, refusing in one line a file that is not that), ``is_sweep_dir``, the
statistics over seeds (``t975`` the Student t quantile, ``mean_ci95``, ``Cell`` and
``aggregate``), ``sweep_rows`` (the cells as plain dicts, as ``--json`` and
``docs/results/failure_sweep.json`` carry them) and ``sweep_report`` (figures and tables).

A point that did not finish, or finished without an accuracy, is a missing point: it is
counted as missing and never drawn or averaged as zero. It reads the sweep directory and
never writes into it (nor into the run directories it lists).
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.report.document import FigureFile, Report, Section, Table
from testbed.report.figures import colour, legend, new_figure, no_data, save_png

__all__ = ["SWEEP_JSON", "POINTS_CSV", "SweepData", "Config", "Cell", "is_sweep_dir", "load_sweep", "t975",
           "mean_ci95", "aggregate", "sweep_rows", "sweep_report"]

SWEEP_JSON = "sweep.json"
POINTS_CSV = "points.csv"
SWEEP_FORMAT = 1
REQUIRED_COLUMNS = ("key", "label", "state", "dataset", "students", "parts", "method", "seed", "availability",
                    "rate_bps", "accuracy")

# Student t, two-sided 95 % (the 0.975 quantile), for 1..30 degrees of freedom
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom (a table to 30,
    then the Cornish-Fisher expansion, within 2e-6)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def mean_ci95(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95 % interval over ``values`` (Student t with n - 1
    degrees of freedom, sample standard deviation); the half-width is None below two values."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t975(n - 1) * sd / math.sqrt(n)


@dataclass(frozen=True, order=True)
class Config:
    """One configuration of a sweep: a panel of its figures and one table."""

    dataset: str
    students: str
    parts: str
    name: str = ""      # the sweep's own name for it (the optional ``config`` column), "" when none

    @property
    def label(self) -> str:
        return (f"{self.name}: " if self.name else "") + f"{self.dataset}, S={self.students}, M={self.parts}"


@dataclass
class Cell:
    """One method at one availability in one configuration, over its seeds."""

    config: Config
    method: str
    availability: float
    values: list[float] = field(default_factory=list)
    missing: int = 0                    # points not finished, or finished without an accuracy
    offline: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return mean_ci95(self.values)[0]

    @property
    def ci95(self) -> float | None:
        return mean_ci95(self.values)[1]

    @property
    def worst(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def offline_expected(self) -> float | None:
        return sum(self.offline) / len(self.offline) if self.offline else None


@dataclass
class SweepData:
    path: Path
    meta: dict[str, Any]
    columns: list[str]
    rows: list[dict[str, str]]

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    def finished(self) -> list[dict[str, str]]:
        return [r for r in self.rows if r.get("state") == "finished"]


def is_sweep_dir(path: Path) -> bool:
    """A folder the sweep engine wrote (or began to): it holds ``sweep.json`` or ``points.csv``."""
    return path.is_dir() and ((path / SWEEP_JSON).is_file() or (path / POINTS_CSV).is_file())


def load_sweep(path: Path) -> SweepData:
    """Read a sweep directory; ConfigError (one line, naming the file) when it is not one."""
    path = Path(path)
    for name in (SWEEP_JSON, POINTS_CSV):
        if not (path / name).is_file():
            raise ConfigError(f"not a sweep directory (no {name}); expected the folder `testbed sweep` writes, "
                              f"with {SWEEP_JSON} and {POINTS_CSV}", file=str(path))
    meta = _read_meta(path / SWEEP_JSON)
    columns, rows = _read_points(path / POINTS_CSV)
    return SweepData(path=path, meta=meta, columns=columns, rows=rows)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"unreadable ({type(exc).__name__}); expected the JSON object `testbed sweep` writes",
                          file=str(path)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("points", []), list):
        raise ConfigError("not a sweep's description; expected an object with format, name, axes and points",
                          file=str(path))
    if doc.get("format") != SWEEP_FORMAT:
        raise ConfigError(f"format {doc.get('format')!r}; this testbed reads sweep format {SWEEP_FORMAT}",
                          file=str(path))
    return doc


def _read_points(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise ConfigError(f"no column {missing[0]!r}; expected the header `testbed sweep` writes "
                                  f"({', '.join(REQUIRED_COLUMNS[:5])}, ...)", file=str(path))
            rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"unreadable ({exc}); expected the CSV `testbed sweep` writes", file=str(path)) from None
    return columns, rows


def number(cell: str | None) -> float | None:
    """A CSV cell as a number; None for an empty (missing) or non-numeric cell."""
    if not cell:
        return None
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def config_of(row: Mapping[str, str]) -> Config:
    return Config(dataset=row.get("dataset") or "?", students=row.get("students") or "?",
                  parts=row.get("parts") or "?", name=row.get("config") or "")


def aggregate(sweep: SweepData, *, figure: str = "accuracy") -> list[Cell]:
    """One Cell per (configuration, method, availability) found in ``points.csv``, sorted; a
    point counts only when it finished with a value of ``figure``, else as missing."""
    cells: dict[tuple[Config, str, float], Cell] = {}
    for row in sweep.rows:
        avail = number(row.get("availability"))
        if avail is None:
            continue
        key = (config_of(row), row.get("method") or "?", avail)
        cell = cells.setdefault(key, Cell(config=key[0], method=key[1], availability=avail))
        value = number(row.get(figure))
        if row.get("state") != "finished" or value is None:
            cell.missing += 1
            continue
        cell.values.append(value)
        offline = number(row.get("offline_expected_accuracy"))
        if offline is not None:
            cell.offline.append(offline)
    return [cells[k] for k in sorted(cells, key=lambda k: (k[0], k[1], -k[2]))]


def _int_or_str(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def sweep_rows(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """The cells as ``{"dataset", "S", "M", "method", "availability", "accuracy_mean",
    "accuracy_ci95", "seeds", ...}`` (the rows of ``docs/results/failure_sweep.json``; ``config``
    too when the sweep names its configurations)."""
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 4)
    return [{"dataset": c.config.dataset, "S": _int_or_str(c.config.students), "M": _int_or_str(c.config.parts),
             **({"config": c.config.name} if c.config.name else {}),
             "method": c.method, "availability": c.availability, "accuracy_mean": r(c.mean),
             "accuracy_ci95": r(c.ci95), "accuracy_worst": r(c.worst), "seeds": c.n, "missing": c.missing,
             "offline_expected_accuracy": r(c.offline_expected)} for c in cells]


# -- figures --------------------------------------------------------------------------------

def _panels(n: int, *, height_in: float = 4.2) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels, two to a row (one panel: wider)."""
    cols = min(n, 2)
    width_in = 7.5 if n == 1 else 5.5
    rows = max(1, math.ceil(n / cols))
    fig, axes = new_figure(width_in=width_in * cols, height_in=height_in * rows, rows=rows, cols=cols)
    flat = [axes[i][j] for i in range(rows) for j in range(cols)]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _method_colours(methods: Sequence[str]) -> dict[str, str]:
    return {m: colour(i) for i, m in enumerate(sorted(set(methods)))}


def availability_figure(cells: Sequence[Cell], out: Path) -> FigureFile:
    """Accuracy against availability: per method the mean (95 % interval over seeds as error
    bars), the worst seed (dotted) and the offline prediction (dashed), one panel per configuration."""
    configs = sorted({c.config for c in cells}) or [Config("?", "?", "?")]
    colours = _method_colours([c.method for c in cells])
    fig, axes = _panels(len(configs))
    avail = [c.availability for c in cells]
    pad = max(0.02, 0.05 * (max(avail) - min(avail))) if avail else 0.05
    for ax, config in zip(axes, configs):
        mine = [c for c in cells if c.config == config]
        for method in sorted({c.method for c in mine}):
            _availability_curves(ax, sorted((c for c in mine if c.method == method), key=lambda c: c.availability),
                                 method=method, color=colours[method])
        if not any(c.values for c in mine):
            no_data(ax, "no finished point")
        ax.set_title(config.label)
        ax.set_xlabel("link availability")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        if avail:   # every panel on the sweep's range, a panel without points included
            ax.set_xlim(min(avail) - pad, max(avail) + pad)
        ax.grid(alpha=0.3)
        legend(ax, loc="lower right")
    fig.tight_layout()
    return save_png(fig, out / "accuracy_vs_availability.png",
                    caption="Accuracy against link availability: mean over seeds with its 95 % interval "
                            "(Student t), worst seed dotted, offline prediction dashed; a missing point is left out")


def _availability_curves(ax: Any, cells: list[Cell], *, method: str, color: str) -> None:
    xs = [c.availability for c in cells]
    means = [c.mean if c.mean is not None else math.nan for c in cells]
    errs = [c.ci95 or 0.0 for c in cells]
    ax.errorbar(xs, means, yerr=errs, color=color, marker="o", lw=1.8, capsize=3, label=f"{method}: mean")
    ax.plot(xs, [c.worst if c.worst is not None else math.nan for c in cells], color=color, ls=":", marker="v",
            ms=4, lw=1, label=f"{method}: worst seed")
    offline = [c.offline_expected if c.offline_expected is not None else math.nan for c in cells]
    if any(not math.isnan(v) for v in offline):
        ax.plot(xs, offline, color=color, ls="--", lw=1.2, label=f"{method}: offline")


def rates(sweep: SweepData) -> list[float]:
    return sorted({v for r in sweep.finished() if (v := number(r.get("rate_bps"))) is not None})


def latency_figure(sweep: SweepData, out: Path) -> FigureFile:
    """Latency p50 (solid) and p95 (dotted) against the slowest link's rate, per method, one
    panel per configuration; each point the mean over the finished points at that rate and the
    configuration's highest availability (so outages do not blur what the rate does)."""
    rows = sweep.finished()
    configs = sorted({config_of(r) for r in rows}) or [Config("?", "?", "?")]
    colours = _method_colours([r.get("method") or "?" for r in rows])
    fig, axes = _panels(len(configs))
    for ax, config in zip(axes, configs):
        mine = _at_best_availability([r for r in rows if config_of(r) == config])
        for method in sorted({r.get("method") or "?" for r in mine}):
            for figure, style, marker in (("latency_ms.p50", "-", "o"), ("latency_ms.p95", ":", "^")):
                pts = _mean_by_rate([r for r in mine if (r.get("method") or "?") == method], figure)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[method], ls=style, marker=marker,
                            label=f"{method}: {figure.split('.')[-1]}")
        ax.set_xscale("log")
        ax.set_title(config.label)
        ax.set_xlabel("slowest link rate (bit/s)")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3, which="both")
        legend(ax, empty="no latency")
    fig.tight_layout()
    return save_png(fig, out / "latency_vs_rate.png",
                    caption="End-to-end latency p50 (solid) and p95 (dotted) against the slowest link's rate; "
                            "each point the mean over seeds at that rate, at the highest availability swept")


def _at_best_availability(rows: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    best = max((v for r in rows if (v := number(r.get("availability"))) is not None), default=None)
    return [r for r in rows if number(r.get("availability")) == best]


def _mean_by_rate(rows: Sequence[Mapping[str, str]], figure: str) -> list[tuple[float, float]]:
    by: dict[float, list[float]] = {}
    for r in rows:
        rate, v = number(r.get("rate_bps")), number(r.get(figure))
        if rate is not None and v is not None:
            by.setdefault(rate, []).append(v)
    return [(rate, sum(vs) / len(vs)) for rate, vs in sorted(by.items())]


# -- tables and the report ------------------------------------------------------------------

def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def config_table(config: Config, cells: Sequence[Cell]) -> Table:
    """Method x availability: accuracy mean ± ci95, worst, seeds, missing points, offline."""
    rows = [[c.method, f"{c.availability:g}",
             "–" if c.mean is None else f"{c.mean:.4f} ± {_f(c.ci95)}" if c.ci95 is not None else f"{c.mean:.4f}",
             _f(c.worst), str(c.n), str(c.missing), _f(c.offline_expected)] for c in cells if c.config == config]
    return Table(columns=["method", "availability", "accuracy mean ± ci95", "worst", "seeds", "missing",
                          "offline expected"], rows=rows, title=config.label, align="lrrrrrr")


def points_table(sweep: SweepData) -> Table:
    cols = [c for c in ("accuracy", "latency_ms.p50", "latency_ms.p95") if c in sweep.columns]
    rows = [[r.get("label", ""), r.get("state", ""), *(r.get(c) or "–" for c in cols), r.get("run_dir") or "–"]
            for r in sweep.rows]
    return Table(columns=["point", "state", *cols, "run directory"], rows=rows,
                 title=f"Every point ({len(rows)})", align="ll" + "r" * len(cols) + "l", collapsed=True)


def _header_lines(sweep: SweepData) -> list[str]:
    meta = sweep.meta
    states: dict[str, int] = {}
    for r in sweep.rows:
        states[r.get("state") or "?"] = states.get(r.get("state") or "?", 0) + 1
    lines = [f"Sweep directory: {sweep.path}" + (f" (from {meta['sweep_file']})" if meta.get("sweep_file") else ""),
             "Points: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + "; sweep.json: "
             + ", ".join(f"{meta[k]} {k}" for k in ("done", "skipped", "failed", "interrupted", "pending") if k in meta)]
    unfinished = [r.get("label") or r.get("key", "?") for r in sweep.rows if r.get("state") != "finished"]
    if unfinished:
        more = f" and {len(unfinished) - 8} more" if len(unfinished) > 8 else ""
        lines.append(f"Missing points (not finished, left out of every figure and mean): "
                     f"{'; '.join(unfinished[:8])}{more}")
    return lines


def sweep_report(sweep: SweepData, *, out: Path) -> tuple[Report, list[Cell]]:
    """The sweep's report (it opens with accuracy against availability) and its cells."""
    cells = aggregate(sweep)
    figures = [availability_figure(cells, out)]
    if len(rates(sweep)) > 1:
        figures.append(latency_figure(sweep, out))
    configs = sorted({c.config for c in cells})
    tables = [config_table(cfg, cells) for cfg in configs] + [points_table(sweep)]
    report = Report(title=f"Sweep {sweep.name}", lines=_header_lines(sweep),
                    sections=[Section(heading="Accuracy against link availability", figures=figures[:1]),
                              Section(heading="Accuracy by configuration",
                                      lines=["Mean over finished seeds ± the half-width of its 95 % interval "
                                             "(Student t, n - 1 degrees of freedom); worst: the lowest seed."],
                                      tables=tables)])
    if len(figures) > 1:
        report.sections.insert(1, Section(heading="Latency against link rate", figures=figures[1:]))
    return report, cells
