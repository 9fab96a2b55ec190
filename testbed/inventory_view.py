"""Rich tables that show what an :class:`~testbed.config.Inventory` holds.

Pure rendering: it builds ``rich.table.Table`` objects from already-validated data and
must not print, read files, or contact boards; the CLI decides where the tables go.
"""
from __future__ import annotations

from collections.abc import Sized
from typing import Any

from rich.table import Table

from testbed.config import Inventory, LinkSpec

__all__ = ["inventory_tables", "boards_table", "links_table"]


def inventory_tables(inv: Inventory) -> list[Table]:
    """A boards table and a links table for ``inv``, in that order."""
    return [boards_table(inv), links_table(inv)]


def boards_table(inv: Inventory) -> Table:
    """One row per board: name, role, kind, connect, host, runtime, energy."""
    table = Table(title=f"bench {inv.bench}: boards", title_justify="left")
    for col in ("name", "role", "kind", "connect", "host", "runtime", "energy"):
        table.add_column(col, no_wrap=True)
    for b in inv.boards.values():
        if b.connect == "ssh":
            host = b.host or ""
            if b.user:
                host = f"{b.user}@{host}"
            if b.port not in (None, 22):
                host = f"{host}:{b.port}"
        else:
            host = "-"
        role = f"[bold]{b.role}[/bold]" if b.role == "edge" else b.role
        table.add_row(b.name, role, b.kind, b.connect, host, b.runtime, b.energy.meter if b.energy else "none")
    return table


def links_table(inv: Inventory) -> Table:
    """One row per link: name, from→to, transport, profile, rate, delay, outages."""
    table = Table(title=f"bench {inv.bench}: links", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("from→to", no_wrap=True)
    table.add_column("transport", no_wrap=True)
    table.add_column("profile", no_wrap=True)
    table.add_column("rate kbit/s", justify="right")
    table.add_column("delay ms", justify="right")
    table.add_column("outages", justify="right")
    for link in inv.links:
        p = link.profile
        table.add_row(link.name, f"{link.src}→{link.dst}", _transport(link),
                      str(getattr(p, "name", None) or "-"),
                      _num(_rate_kbps(p)), _num(_delay_ms(p)), _outages(p))
    return table


def _transport(link: LinkSpec) -> str:
    t = link.transport
    if t.type == "serial":
        return f"serial {t.settings.get('port')} @{t.settings.get('baud')}"
    if t.type == "ble" and t.settings.get("address"):
        return f"ble {t.settings['address']}"
    return t.type


def _rate_kbps(profile: Any) -> float | None:
    rate = getattr(profile, "rate_bps", None)
    return None if rate is None else rate / 1000.0


def _delay_ms(profile: Any) -> float | None:
    delay = getattr(profile, "delay_s", None)
    return None if delay is None else delay * 1000.0


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "∞"
    return f"{value:.6g}"


def _outages(profile: Any) -> str:
    outages = getattr(profile, "outages", None)
    if outages is None:
        return "0"
    if isinstance(outages, Sized):
        return str(len(outages))
    return "yes"  # a stochastic process or a trace: not a count
