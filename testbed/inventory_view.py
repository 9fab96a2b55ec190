"""Rich tables that show what an :class:`~testbed.config.Inventory` holds: how the broker is
logged into, the boards, the links.

Pure rendering: it builds ``rich.table.Table`` objects from already-validated data and
must not print, read files, or contact boards; the CLI decides where the tables go. The broker's
files are shown by path only, never what they hold (a password file's content is a secret).
"""
from __future__ import annotations

from collections.abc import Sized
from typing import Any

from rich.table import Table
from rich.text import Text

from testbed.broker import auth_kind
from testbed.config import BrokerSpec, Inventory, LinkSpec

__all__ = ["inventory_tables", "broker_table", "broker_rows", "login_text", "boards_table", "links_table"]


def inventory_tables(inv: Inventory) -> list[Table]:
    """A broker table, a boards table and a links table for ``inv``, in that order."""
    return [broker_table(inv), boards_table(inv), links_table(inv)]


def broker_table(inv: Inventory) -> Table:
    """How the harness and the boards log in to the broker, one row per fact (``broker_rows``)."""
    table = Table(title=f"bench {inv.bench}: broker", title_justify="left", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value")
    for what, value in broker_rows(inv.broker):
        table.add_row(what, Text(value))   # Text: a path's brackets are not rich markup
    return table


def broker_rows(spec: BrokerSpec) -> list[tuple[str, str]]:
    """(what, value) rows: the mode, the login (``login_text``) and, for an external broker, the
    files it names (paths, never their content) and whether TLS is on."""
    rows = [("mode", spec.mode), ("login", login_text(spec))]
    if spec.mode != "external":
        return rows
    if spec.password_file is not None and not spec.anonymous:
        rows.append(("password file", str(spec.password_file)))
    if spec.cert_file is not None:
        key = f" (key {spec.key_file})" if spec.key_file is not None else ""
        rows.append(("client certificate", f"{spec.cert_file}{key}"))
    if spec.ca_file is not None:
        tls = f"on, CA {spec.ca_file}"
    elif spec.tls:
        tls = "on, the system's CAs"
    else:
        tls = "off" if spec.anonymous or spec.username is None else "off: the password crosses the network in clear"
    rows.append(("TLS", tls))
    return rows


def login_text(spec: BrokerSpec) -> str:
    """How the broker is logged into, in the run summary's words (``testbed.broker.auth_kind``),
    with the user name of an external broker's password login."""
    kind = auth_kind(spec)
    if kind == "anonymous":
        return "anonymous (asked for by name)"
    if spec.mode == "external" and spec.username is not None:
        return f"{kind}, as user {spec.username}"
    return kind


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
