"""Per-link activation encoding and compression in inventory.yaml, and what reaches agent.json."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DEMO_INVENTORY
from testbed.config import load_inventory
from testbed.errors import ConfigError


def _with(tmp_path: Path, extra: str) -> Path:
    text = DEMO_INVENTORY.read_text().replace("    transport: {type: mqtt}\n",
                                              "    transport: {type: mqtt}\n" + extra, 1)
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def test_encoding_and_compression_load(tmp_path: Path) -> None:
    inv = load_inventory(_with(tmp_path, "    encoding: int8\n    compression: lz4\n"))
    ankle = inv.link("ankle-edge")
    assert (ankle.encoding, ankle.compression) == ("int8", "lz4")
    assert (inv.link("wrist-edge").encoding, inv.link("wrist-edge").compression) == ("f32", "none")


@pytest.mark.parametrize("extra, key, phrase", [
    ("    encoding: bf16\n", "links[2].encoding", "expected one of f32, f16, int8"),
    ("    compression: gzip\n", "links[2].compression", "expected one of none, zstd, lz4"),
])
def test_bad_values_name_file_line_key(tmp_path: Path, extra: str, key: str, phrase: str) -> None:
    path = _with(tmp_path, extra)
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln == extra.rstrip("\n"))
    with pytest.raises(ConfigError) as err:
        load_inventory(path)
    assert err.value.line == line and err.value.key == key and phrase in str(err.value)


@pytest.mark.parametrize("extra, level", [
    ("    compression: zstd\n    compression_level: -20\n", -20),
    ("    compression: zstd\n    compression_level: 19\n", 19),
    ("    compression: lz4\n    compression_level: 9\n", 9),
    ("    compression: zstd\n", None),
])
def test_compression_level_loads(tmp_path: Path, extra: str, level: int | None) -> None:
    assert load_inventory(_with(tmp_path, extra)).link("ankle-edge").compression_level == level


@pytest.mark.parametrize("extra, phrase", [
    ("    compression_level: 3\n", "expected no compression_level on a link without compression"),
    ("    compression: zstd\n    compression_level: 23\n", "expected an integer from -131072 to 22"),
    ("    compression: lz4\n    compression_level: 0\n", "expected an integer from 1 to 12"),
    ("    compression: zstd\n    compression_level: fast\n", "expected an integer"),
])
def test_bad_compression_level_names_file_line_key(tmp_path: Path, extra: str, phrase: str) -> None:
    path = _with(tmp_path, extra)
    last = extra.rstrip("\n").splitlines()[-1]
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln == last)
    with pytest.raises(ConfigError) as err:
        load_inventory(path)
    assert err.value.line == line and err.value.key == "links[2].compression_level"
    assert phrase in str(err.value)
