"""The names a user writes for what crosses the wire, and what each one means to the codec.

Holds the one vocabulary of encodings (``f32 | f16 | int8``) and compressions
(``none | zstd | lz4``) that ``inventory.yaml``, the experiment's layer split, the board
config and the agent all use, with lookups that name the known values when asked for an
unknown one. It holds no policy and does no I/O.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from nodes.codec import Compression, Encoding

__all__ = ["ENCODINGS", "COMPRESSIONS", "encoding", "compression"]

ENCODINGS: Mapping[str, Encoding] = MappingProxyType(
    {"f32": Encoding.F32, "f16": Encoding.F16, "int8": Encoding.INT8_AFFINE})
COMPRESSIONS: Mapping[str, Compression] = MappingProxyType(
    {"none": Compression.NONE, "zstd": Compression.ZSTD, "lz4": Compression.LZ4})


def _lookup(table: Mapping[str, object], what: str, name: str) -> object:
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(table)}") from None


def encoding(name: str) -> Encoding:
    """The codec's Encoding for ``name``; ValueError naming the known names otherwise."""
    return _lookup(ENCODINGS, "encoding", name)  # type: ignore[return-value]


def compression(name: str) -> Compression:
    """The codec's Compression for ``name``; ValueError naming the known names otherwise."""
    return _lookup(COMPRESSIONS, "compression", name)  # type: ignore[return-value]
