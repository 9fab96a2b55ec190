"""testbed.powerlog: a board's batches of readings into power/<board>.csv; bad input counted and dropped."""
from __future__ import annotations

from pathlib import Path

import pytest

from testbed.powerlog import PowerLog


def _batch(rows, **extra):
    return {"meter": {"meter": "ina260", "rail": "VDD", "modelled": False, "max_rate_hz": 454.5},
            "rate_hz": 100.0, "idle_w": 1.5, "rows": rows, "stats": {"samples": len(rows), "errors": 0}, **extra}


def test_batches_append_to_the_csv_and_add_up(tmp_path: Path) -> None:
    with PowerLog(tmp_path / "power", boards=["wrist", "edge"]) as log:
        first = log.add("wrist", _batch([[1_000_000_000, "VDD", 5000, 400, 2000.0],
                                         [1_010_000_000, "VDD", 5000, 600, 3000.0]]))
        second = log.add("wrist", _batch([[1_020_000_000, "VDD", 5000, 200, 1000.0]]))
    assert first["readings"] == 2 and first["bad_rows"] == 0
    assert first["mj"] == pytest.approx(30.0) and first["mean_w"] == pytest.approx(3.0)   # 3 W over 10 ms
    assert second["mj"] == pytest.approx(10.0) and second["span_s"] == pytest.approx(0.01)  # across the batches
    assert first["meter"]["meter"] == "ina260" and first["idle_w"] == 1.5
    lines = (tmp_path / "power" / "wrist.csv").read_text().splitlines()
    assert lines[0] == "t_ns,rail,mV,mA,mW" and len(lines) == 4
    assert lines[3] == "1020000000,VDD,5000.0,200.0,1000.0"


@pytest.mark.parametrize("row", [
    [1, "VDD", 1, 2],                        # four fields
    ["1", "VDD", 1, 2, 3],                   # a string for t_ns
    [-5, "VDD", 1, 2, 3],                    # before the clock's zero
    [1, "", 1, 2, 3],                        # no rail
    [1, "V,DD", 1, 2, 3],                    # a comma would break the CSV
    [1, "VDD\n2,x", 1, 2, 3],                # a newline too
    [1, "VDD", "1", 2, 3],                   # a string for mV
    [1, "VDD", 1, float("nan"), 3],          # not finite
    [1, "VDD", 1, 2, True],                  # a boolean
    {"t": 1},                                # not a row
])
def test_a_malformed_row_is_counted_and_dropped(tmp_path: Path, row) -> None:
    with PowerLog(tmp_path / "power", boards=["wrist"]) as log:
        fields = log.add("wrist", _batch([row, [5, "VDD", 1.0, 2.0, 3.0]]))
    assert fields["readings"] == 1 and fields["bad_rows"] == 1
    assert (tmp_path / "power" / "wrist.csv").read_text().splitlines()[1:] == ["5,VDD,1.0,2.0,3.0"]


def test_unknown_board_or_a_batch_that_is_not_a_list_writes_nothing(tmp_path: Path) -> None:
    with PowerLog(tmp_path / "power", boards=["wrist"]) as log:
        assert log.add("../../etc", _batch([[1, "VDD", 1, 2, 3]])) is None
        assert log.add("wrist", {"rows": "lots"}) is None
        assert log.dropped_batches == 2
    assert not (tmp_path / "power").exists()
