"""The packet profiler: per-layer activation sizes of a model and what they cost on each link.

Holds ``profile_model``: runs a zoo model (or any nn.Module) once with forward hooks on its cut
points and reports, per layer, the output shape, number of values, bytes as f32 / f16 / int8
(int8 payload only; our wire frame adds 8 bytes of scale and zero point), the zstd-compressed
size of the f32 and int8 payloads for a real input when one is given, and the airtime of the f32
payload on every HBC rate and BLE preset of ``linkemu`` (PSDU fragmentation and PHY time
included, as the link model charges them). Shapes are computed on torch's meta
device, so an 8K input costs no memory; compression needs real numbers and runs on the CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from linkemu.profile import PRESETS
from testbed.zoo import build, cut_points

LINK_PRESETS = ("hbc-164k", "hbc-328k", "hbc-656k", "hbc-1312k", "ble-1m", "ble-2m")


@dataclass
class LayerRow:
    index: int
    name: str
    kind: str
    shape: list[int]
    values: int
    bytes_f32: int
    bytes_f16: int
    bytes_int8: int
    zstd_f32: int | None = None
    zstd_int8: int | None = None
    airtime_s: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_shape(text: str) -> tuple[int, ...]:
    """``3x224x224`` -> (3, 224, 224); a ValueError says what was expected."""
    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input {text!r}: expected CxHxW, e.g. 3x224x224") from None
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"--input {text!r}: expected three positive sizes CxHxW, e.g. 3x224x224")
    return dims


def _quantise_int8(a: np.ndarray) -> np.ndarray:
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = np.round(-128 - lo / scale)
    return np.clip(np.round(a / scale + zp), -128, 127).astype(np.int8)


def _shapes(model_name: str, input_shape: tuple[int, ...]) -> list[tuple[str, str, list[int]]]:
    with torch.device("meta"):
        model = build(model_name).eval()
    seen: list[tuple[str, str, list[int]]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.append((n, type(mod).__name__,
                                                                             list(out.shape[1:]))))
             for n, m in cut_points(model)]
    try:
        with torch.no_grad():
            model(torch.empty((1, *input_shape), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _real_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    outs: dict[str, np.ndarray] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: outs.__setitem__(n, out.detach().clone().numpy()))
             for n, m in cut_points(model)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


def profile_model(model_name: str, *, input_shape: tuple[int, ...] = (3, 224, 224),
                  real_input: np.ndarray | None = None, seed: int = 0, zstd_level: int = 3) -> list[LayerRow]:
    """One row per cut point (plus the input itself as row 0), in forward order."""
    rows = [LayerRow(index=0, name="input", kind="input", shape=list(input_shape),
                     values=int(np.prod(input_shape)), bytes_f32=4 * int(np.prod(input_shape)),
                     bytes_f16=2 * int(np.prod(input_shape)), bytes_int8=int(np.prod(input_shape)))]
    for i, (name, kind, shape) in enumerate(_shapes(model_name, input_shape), start=1):
        n = int(np.prod(shape))
        rows.append(LayerRow(index=i, name=name, kind=kind, shape=shape, values=n, bytes_f32=4 * n,
                             bytes_f16=2 * n, bytes_int8=n))
    if real_input is not None:
        import zstandard

        torch.manual_seed(seed)
        outs = _real_outputs(build(model_name), torch.from_numpy(real_input[None].astype(np.float32)))
        cctx = zstandard.ZstdCompressor(level=zstd_level)
        outs["input"] = real_input.astype(np.float32)
        for row in rows:
            a = outs[row.name]
            row.zstd_f32 = len(cctx.compress(a.astype(np.float32).tobytes()))
            row.zstd_int8 = len(cctx.compress(_quantise_int8(a).tobytes()))
    for row in rows:
        row.airtime_s = {p: round(PRESETS[p].airtime_s(row.bytes_f32), 6) for p in LINK_PRESETS}
    return rows


def fashion_input(shape: tuple[int, ...]) -> np.ndarray | None:
    """A real image for compression figures: Fashion-MNIST test image 0, resized to H x W and
    repeated over C channels, ImageNet-style normalised. None when the dataset is missing."""
    from testbed.data import DatasetError, load_fashion_mnist

    try:
        img = load_fashion_mnist().x_test[0:1]            # 1 x 1 x 28 x 28 in [0, 1]
    except DatasetError:
        return None
    c, h, w = shape
    t = torch.nn.functional.interpolate(torch.from_numpy(img), size=(h, w), mode="bilinear", align_corners=False)
    return ((t.repeat(1, c, 1, 1)[0] - 0.45) / 0.225).numpy()
