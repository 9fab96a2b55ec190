"""Reports and sweeps: what turns run directories into figures, and a grid of runs into one table.

Modules: ``sweep`` and ``grid`` (``testbed sweep``: a base experiment plus a grid of overrides,
each point an ordinary run directory keyed by the hash of its effective configuration, written
to ``sweeps/<name>/{sweep.json, points.csv}``), and the report's modules (``testbed report`` and
``testbed compare``: PNG figures, ``report.html`` with the images embedded, ``report.md``).

It reads what runs wrote (events.jsonl, summary.json, power/*.csv, points.csv) and never changes
a run directory; figures are drawn with matplotlib's headless Agg backend.
"""
