"""The layer split (Neurosurgeon-style): run the first layers of a model on the wearable, send
the activation at the cut over the body link, run the rest on the edge.

Holds:

- ``model_layers``: a model as a sequence of named layers whose composition is its forward
  (sequential trunks layer by layer, a residual block as one layer, so a cut never falls inside
  a skip connection). Known: the partition ``Teacher``, the zoo's AlexNet / VGG-16 / ResNets,
  any ``nn.Sequential``, and any model with a ``split_layers()`` method returning such a list.
- ``measure_layers`` / ``layer_shapes``: per layer, the output shape, values, the wire-frame
  bytes of that activation per encoding (our frame header and CRC included, as
  ``nodes.codec.encode_frame`` writes it) and, for ``measure_layers``, the median compute time
  on this host (batch 1, ``torch.inference_mode``, with whatever torch thread count the caller
  set). ``layer_shapes`` only needs shapes, so a model built on the meta device is fine.
- ``plan_split``: for every cut, wearable time + link time + edge time and the wearable's energy,
  with compute times scaled per board kind (``DEFAULT_SCALE``) and powers per board kind and link
  kind (``DEFAULT_POWER``); the link time is ``LinkProfile.airtime_s`` of the encoded frame (PSDU
  fragmentation and PHY time included) plus the profile's fixed delay. It picks the cut that
  minimises latency or the wearable's energy and explains the choice (``SplitPlan.render``).
- ``split_modules``: the head (wearable) and tail (edge) as modules, ``tail(head(x)) == model(x)``.
  The head's output is flattened to (batch, N) and the tail reshapes a (batch, N) input back to
  the activation's shape, because the edge's merge receives one flat vector per student.
- ``resolve_layer_inputs`` / ``build_layer_bundle``: the experiment-file side for
  testbed/partition/build.py: which link, board kinds, encoding and objective an experiment's
  ``partition: {method: layer, layer: {...}}`` section means with its inventory, and the whole
  run (load or train the Teacher, measure, plan, export).
- ``export_layer_bundle``: a bundle in testbed/bundle.py's manifest format 1 (method ``layer``):
  the head as the single student shard (index 0, part 0) and the tail as the merge shard
  (input [1, N]), so that the deploy/agent machinery runs it unchanged with merge rule
  ``concat``, one student and ``part_dim`` = N (concatenating one part of length N is the
  vector itself, see nodes/merge.py). Both shards are traced to TorchScript and checked
  against the torch model on real samples before anything is written to the manifest.

The scale factors and powers are assumptions, not measurements of any board: they are there
so a plan can be made on a laptop; the user overrides them (``scale=``, ``power=``) with numbers
measured on the bench. See docs/layersplit.md.

It must not wire the CLI or read experiment files (it takes the validated Experiment), nor set torch's thread count (the caller
does), and never downloads anything.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from linkemu.profile import PRESETS, LinkProfile
from nodes import vocab
from nodes.codec import Encoding, encode_frame
from nodes.energy.model import POWER_W, RADIO_W
from nodes.vocab import ENCODINGS
from testbed.bundle import (FORMAT, MANIFEST, PARITY_TOLERANCE, ExportParityError, check_parity, sha256_file,
                            trace_shard)
from testbed import weightcache
from testbed.errors import TestbedError
from testbed.partition.pipeline import mark, phase_progress, teacher_config
from testbed.partition.teacher import Teacher, load_or_train_teacher, teacher_accuracy
from testbed.training import numerics, numerics_record
from testbed.zoo import VGG16, AlexNet, ResNet

if TYPE_CHECKING:
    from testbed.config import Experiment, Inventory
    from testbed.data import Dataset
    from testbed.partition.pipeline import PartitionConfig, Progress

__all__ = ["LayerSplitError", "ExportParityError", "ENCODINGS", "OBJECTIVES", "DEFAULT_SCALE",
           "DEFAULT_POWER", "LayerCost", "CutRow", "SplitPlan", "SplitHead", "SplitTail",
           "model_layers", "frame_bytes", "layer_shapes", "measure_layers", "plan_split",
           "split_modules", "export_layer_bundle", "resolve_layer_inputs", "build_layer_bundle"]

OBJECTIVES = ("latency", "energy")
# What an experiment's layer section means when it does not say and no inventory tells:
DEFAULTS: dict[str, Any] = {"objective": "latency", "encoding": None, "link": None, "repeats": 20,
                            "wearable_kind": "rpi4", "edge_kind": "jetson-nano", "fallback_link": "hbc-164k"}

# How many times longer a layer takes on a board of this kind than on the host that measured it
# (a recent x86 laptop/desktop core running torch on 1-2 threads). ASSUMPTIONS, order of
# magnitude only, from published CPU inference benchmarks of small CNNs; measure your boards and
# pass ``scale=`` to override. A Jetson's factor assumes the shard runs on its GPU with torch.
DEFAULT_SCALE: dict[str, float] = {
    "sim": 1.0,                 # a simulated board is a process on this host
    "rpi5": 2.5,                # Cortex-A76 @ 2.4 GHz
    "rpi4": 6.0,                # Cortex-A72 @ 1.5-1.8 GHz
    "rpi3": 15.0,               # Cortex-A53 @ 1.2-1.4 GHz
    "rpi-zero2w": 18.0,         # Cortex-A53 @ 1.0 GHz, 512 MB
    "jetson-nano": 0.8,         # 128-core Maxwell GPU; batch-1 launch overhead eats most of its edge
    "jetson-xavier-nx": 0.4,    # 384-core Volta GPU
    "jetson-orin-nano": 0.25,   # 1024-core Ampere GPU
}

# Watts. Board kinds: the whole board's draw while it computes (the wearable's compute energy is
# this times its compute time). Link kinds (a profile's name, or the part before its first "-"):
# the sender's radio while it transmits (times the frame's airtime). One table for the planner and
# the board's model meter: nodes.energy.model (its sources there); pass ``power=`` to override.
DEFAULT_POWER: dict[str, float] = {**{kind: active for kind, (_idle, active) in POWER_W.items()}, **RADIO_W}


class LayerSplitError(TestbedError):
    """A model cannot be split as asked (unknown structure, bad cut, unknown board kind, ...)."""


# -- layers ------------------------------------------------------------------------------------

class _Normalize(nn.Module):
    """(x - mean) / std with the Teacher's own buffers."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions: N x C x H x W -> N x C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _children(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """A Sequential's children (nested Sequentials expanded), named ``prefix.i``."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        out += _children(full, child) if isinstance(child, nn.Sequential) else [(full, child)]
    return out


def model_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model`` as named layers in forward order; running them one after the other is
    ``model(x)``. Residual blocks are single layers. The layers share the model's parameters."""
    custom = getattr(model, "split_layers", None)
    if callable(custom):
        return list(custom())
    if isinstance(model, Teacher):
        return [("normalize", _Normalize(model.mean, model.std)), ("stem", model.stem),
                *_children("stages", model.stages), ("bn", model.bn), ("relu", nn.ReLU()),
                ("avgpool", _GlobalAvgPool()), ("fc", model.fc)]
    if isinstance(model, (AlexNet, VGG16)):
        return [*_children("features", model.features), ("avgpool", model.avgpool),
                ("flatten", nn.Flatten(1)), *_children("classifier", model.classifier)]
    if isinstance(model, ResNet):
        stages = [layer for s in ("layer1", "layer2", "layer3", "layer4")
                  for layer in _children(s, getattr(model, s))]
        return [("conv1", model.conv1), ("bn1", model.bn1), ("relu", model.relu), ("maxpool", model.maxpool),
                *stages, ("avgpool", model.avgpool), ("flatten", nn.Flatten(1)), ("fc", model.fc)]
    if isinstance(model, nn.Sequential):
        return _children("", model)
    raise LayerSplitError(f"cannot split a {type(model).__name__} into layers; expected the partition "
                          "Teacher, a zoo model (alexnet, vgg16, resnet18/50), an nn.Sequential, or a "
                          "model with a split_layers() method returning [(name, module), ...]")


# -- costs -------------------------------------------------------------------------------------

@functools.cache
def _frame_layout(encoding: str) -> tuple[int, int]:
    """(fixed bytes of a frame, bytes per value) for ``encoding``, read off the real encoder."""
    enc = _encoding(encoding)

    def size(n: int) -> int:
        return len(encode_frame(np.zeros(n, dtype=np.float32), run_id=0, sample_id=0, shard=0, seq=0,
                                send_ts_ns=0, encoding=enc))

    per_value = size(2) - size(1)
    return size(1) - per_value, per_value


def _encoding(name: str) -> Encoding:
    try:
        return vocab.encoding(name)
    except ValueError as exc:
        raise LayerSplitError(str(exc)) from None


def frame_bytes(values: int, encoding: str = "f32") -> int:
    """Bytes of the wire frame carrying ``values`` numbers (uncompressed): header + payload
    (int8: with its scale/zero-point prefix) + CRC, exactly as ``encode_frame`` writes it."""
    fixed, per_value = _frame_layout(encoding)
    return fixed + per_value * int(values)


@dataclass(frozen=True)
class LayerCost:
    """One cut candidate: the activation after layer ``index`` (0: the raw input).

    ``host_ms`` is the layer's own compute time on the measuring host (0 for the input row;
    None when only shapes were computed); ``frame_bytes`` is the wire frame per encoding.
    """

    index: int
    name: str
    kind: str
    shape: tuple[int, ...]
    values: int
    host_ms: float | None
    frame_bytes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, index: int, name: str, shape: Sequence[int], host_ms: float | None, *,
           kind: str = "") -> LayerCost:
        """A row with ``values`` and ``frame_bytes`` derived from ``shape``."""
        values = math.prod(int(d) for d in shape)
        return cls(index=index, name=name, kind=kind or ("input" if index == 0 else "layer"),
                   shape=tuple(int(d) for d in shape), values=values, host_ms=host_ms,
                   frame_bytes={e: frame_bytes(values, e) for e in ENCODINGS})

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


def _walk(layers: list[tuple[str, nn.Module]], x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = []
    for _, layer in layers:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


def _rows(layers: list[tuple[str, nn.Module]], input_shape: tuple[int, ...], shapes: list[tuple[int, ...]],
          times: list[float | None]) -> list[LayerCost]:
    rows = [LayerCost.of(0, "input", input_shape, 0.0 if times and times[0] is not None else None, kind="input")]
    for i, ((name, layer), shape, ms) in enumerate(zip(layers, shapes, times), start=1):
        rows.append(LayerCost.of(i, name, shape, ms, kind=type(layer).__name__))
    return rows


def _input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise LayerSplitError(f"input shape {list(input_shape)}: expected positive sizes without the batch, "
                              "e.g. (1, 28, 28)")
    return shape


def layer_shapes(model: nn.Module, input_shape: Sequence[int]) -> list[LayerCost]:
    """Shapes and frame sizes only (``host_ms`` None), on the device the model's parameters are
    on: build it under ``torch.device("meta")`` and a 224x224 VGG-16 costs no memory."""
    shape = _input_shape(input_shape)
    layers = model_layers(model.eval())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        shapes = _walk(layers, torch.zeros((1, *shape), device=device))
    return _rows(layers, shape, shapes, [None] * len(layers))


def measure_layers(model: nn.Module, input_shape: Sequence[int], *, repeats: int = 20, warmup: int = 3,
                   sample: torch.Tensor | np.ndarray | None = None, seed: int = 0) -> list[LayerCost]:
    """Per layer: output shape, values, frame bytes, and the median of ``repeats`` timings of the
    layer alone on this host (batch 1, inference mode, after ``warmup`` full passes; torch's
    thread count is the caller's). Row 0 is the input. ``sample`` (1 x C x H x W or C x H x W)
    is the input to time on; default a seeded normal tensor. Raises LayerSplitError when the
    layers run one after the other do not reproduce ``model(x)`` (a structure this module
    misreads) or when ``repeats`` < 1."""
    if repeats < 1 or warmup < 0:
        raise LayerSplitError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    shape = _input_shape(input_shape)
    model.eval()
    layers = model_layers(model)
    if any(p.device.type == "meta" for p in model.parameters()):
        raise LayerSplitError("cannot time a model on the meta device; use layer_shapes for shapes only")
    if sample is None:
        x0 = torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed))
    else:
        x0 = torch.as_tensor(np.asarray(sample, dtype=np.float32)).reshape(1, *shape)
    times: list[list[float]] = [[] for _ in layers]
    with torch.inference_mode():
        for _ in range(warmup):
            _walk(layers, x0.clone())
        for _ in range(repeats):
            x = x0.clone()
            for i, (_, layer) in enumerate(layers):
                t0 = time.perf_counter_ns()
                x = layer(x)
                times[i].append((time.perf_counter_ns() - t0) / 1e6)
        want = model(x0.clone())
        _same_as_model(x, want)
        shapes = _walk(layers, x0.clone())
    return _rows(layers, shape, shapes, [statistics.median(t) for t in times])


def _same_as_model(got: torch.Tensor, want: torch.Tensor) -> None:
    if got.shape != want.shape:
        raise LayerSplitError(f"the layers end in shape {list(got.shape)} but the model returns "
                              f"{list(want.shape)}; give the model a split_layers() method")
    err = float((got - want).abs().max()) if got.numel() else 0.0
    if not err <= 1e-4 * max(1.0, float(want.abs().max())):
        raise LayerSplitError(f"the layers run in sequence differ from the model's forward by {err:.3g}; "
                              "give the model a split_layers() method")


# -- planning ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CutRow:
    """One cut: the wearable runs layers 1..``cut`` and sends the activation after ``layer``."""

    cut: int
    layer: str
    shape: tuple[int, ...]
    values: int
    bytes: int                  # the wire frame, in the plan's encoding
    wearable_ms: float
    link_ms: float
    edge_ms: float
    total_ms: float
    compute_mj: float           # the wearable's compute energy
    radio_mj: float             # the wearable's radio energy for the frame
    wearable_mj: float

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


@dataclass(frozen=True)
class SplitPlan:
    """Every cut's costs and the chosen one (``chosen`` indexes ``rows``; row i is cut i)."""

    rows: tuple[CutRow, ...]
    chosen: int
    objective: str
    link: str
    rate_bps: float
    wearable_kind: str
    edge_kind: str
    encoding: str
    wearable_scale: float
    edge_scale: float
    wearable_power_w: float
    radio_power_w: float

    @property
    def choice(self) -> CutRow:
        return self.rows[self.chosen]

    def table(self) -> list[dict[str, Any]]:
        """One dict per cut, the chosen one with ``chosen: True``."""
        return [{**r.as_dict(), "chosen": r.cut == self.chosen} for r in self.rows]

    def summary(self) -> dict[str, Any]:
        """What was assumed and what was chosen, for a manifest."""
        return {"objective": self.objective, "link": self.link,
                "rate_bps": None if math.isinf(self.rate_bps) else self.rate_bps,
                "wearable_kind": self.wearable_kind, "edge_kind": self.edge_kind, "encoding": self.encoding,
                "wearable_scale": self.wearable_scale, "edge_scale": self.edge_scale,
                "wearable_power_w": self.wearable_power_w, "radio_power_w": self.radio_power_w,
                "chosen": self.chosen, "reason": self.reason()}

    def reason(self) -> str:
        """One sentence: why this cut."""
        c, first, last = self.choice, self.rows[0], self.rows[-1]
        where = ("everything on the edge (the wearable sends the raw input)" if c.cut == 0 else
                 "everything on the wearable (it sends only the output)" if c.cut == len(self.rows) - 1 else
                 f"cut after {c.layer} ({_shape(c.shape) + ' = ' if len(c.shape) > 1 else ''}{c.values:,} values)")
        others = sorted((r for r in self.rows if r.cut != c.cut), key=self._key)
        if self.objective == "latency":
            text = (f"{where}: {c.total_ms:.1f} ms end to end ({c.wearable_ms:.1f} wearable + {c.link_ms:.1f} "
                    f"link for {c.bytes:,} B + {c.edge_ms:.1f} edge), the least of {len(self.rows)} cuts; "
                    f"all on the edge takes {first.total_ms:.1f} ms, all on the wearable {last.total_ms:.1f} ms")
        else:
            text = (f"{where}: {c.wearable_mj:.2f} mJ of the wearable's battery per sample ({c.compute_mj:.2f} "
                    f"compute + {c.radio_mj:.2f} radio), the least of {len(self.rows)} cuts, at {c.total_ms:.1f} ms "
                    f"end to end; all on the edge costs {first.wearable_mj:.2f} mJ, all on the wearable "
                    f"{last.wearable_mj:.2f} mJ")
        if others:
            r = others[0]
            unit = (f"{r.total_ms:.1f} ms" if self.objective == "latency" else f"{r.wearable_mj:.2f} mJ")
            text += f"; runner-up: after {r.layer} ({unit})"
        return text + "."

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> SplitPlan:
        """The plan a layer bundle's manifest recorded (to ``render`` it again, e.g. in the CLI)."""
        cut, table = manifest.get("cut") or {}, manifest.get("plan")
        if manifest.get("method") != "layer" or not table or "objective" not in cut:
            raise LayerSplitError("the manifest holds no layer-split plan (method layer, exported from a SplitPlan)")
        fields = CutRow.__dataclass_fields__
        rows = tuple(CutRow(**{**{k: v for k, v in r.items() if k in fields}, "shape": tuple(r["shape"])})
                     for r in table)
        rate = cut["rate_bps"]
        return cls(rows=rows, chosen=int(cut["chosen"]), objective=cut["objective"], link=cut["link"],
                   rate_bps=math.inf if rate is None else float(rate), wearable_kind=cut["wearable_kind"],
                   edge_kind=cut["edge_kind"], encoding=cut["encoding"], wearable_scale=cut["wearable_scale"],
                   edge_scale=cut["edge_scale"], wearable_power_w=cut["wearable_power_w"],
                   radio_power_w=cut["radio_power_w"])

    def _key(self, r: CutRow) -> tuple[float, float, int]:
        return (r.total_ms, r.wearable_mj, r.cut) if self.objective == "latency" else \
            (r.wearable_mj, r.total_ms, r.cut)

    def render(self) -> str:
        """A text table of every cut, the chosen one marked with ``*``, and the reason."""
        rate = "unlimited" if math.isinf(self.rate_bps) else f"{self.rate_bps / 1000:g} kbit/s"
        head = (f"layer split, objective {self.objective}: link {self.link} ({rate}), encoding {self.encoding}; "
                f"wearable {self.wearable_kind} (x{self.wearable_scale:g} host time, {self.wearable_power_w:g} W), "
                f"edge {self.edge_kind} (x{self.edge_scale:g}), radio {self.radio_power_w * 1000:g} mW")
        cols = ("", "cut", "after layer", "shape", "bytes", "wearable ms", "link ms", "edge ms", "total ms",
                "wearable mJ")
        body = [("*" if r.cut == self.chosen else "", str(r.cut), r.layer, _shape(r.shape), f"{r.bytes:,}",
                 f"{r.wearable_ms:.2f}", f"{r.link_ms:.2f}", f"{r.edge_ms:.2f}", f"{r.total_ms:.2f}",
                 f"{r.wearable_mj:.3f}") for r in self.rows]
        widths = [max(len(row[i]) for row in (cols, *body)) for i in range(len(cols))]
        right = {1, 4, 5, 6, 7, 8, 9}

        def line(row: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))

        return "\n".join([head, line(cols), *(line(r) for r in body), f"chosen (*): {self.reason()}"])


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _link(link: LinkProfile | str) -> LinkProfile:
    if isinstance(link, LinkProfile):
        return link
    if link not in PRESETS:
        raise LayerSplitError(f"unknown link {link!r}; expected a LinkProfile or one of {', '.join(PRESETS)}")
    return PRESETS[link]


def _lookup(table: Mapping[str, float], key: str, *, what: str, option: str) -> float:
    if key not in table:
        raise LayerSplitError(f"no {what} for {key!r}; known: {', '.join(sorted(table))} "
                              f"(pass {option}={{{key!r}: ...}})")
    value = table[key]
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LayerSplitError(f"{option}[{key!r}] must be a finite number >= 0, got {value!r}")
    return float(value)


def _radio_power(table: Mapping[str, float], link: LinkProfile) -> float:
    key = link.name if link.name in table else link.name.split("-")[0]
    return _lookup(table, key, what="radio power", option="power")


def plan_split(costs: Sequence[LayerCost], *, link: LinkProfile | str, wearable_kind: str, edge_kind: str,
               encoding: str = "f32", objective: str = "latency", scale: Mapping[str, float] | None = None,
               power: Mapping[str, float] | None = None, wearable_scale: float | None = None,
               edge_scale: float | None = None, wearable_power_w: float | None = None,
               radio_power_w: float | None = None) -> SplitPlan:
    """Cost every cut of ``costs`` (row 0 the input, as ``measure_layers`` returns) and pick the
    one with the least end-to-end latency or wearable energy.

    Cut k: the wearable runs layers 1..k (host time x ``scale[wearable_kind]``) and sends the
    activation after layer k as one frame in ``encoding`` (``link.airtime_s`` of the frame plus
    the link's fixed delay); the edge runs the rest (host time x ``scale[edge_kind]``).
    ``wearable_scale`` / ``edge_scale`` (a board's ``compute_scale`` in the inventory) take
    precedence over the per-kind table, as ``wearable_power_w`` / ``radio_power_w`` (values
    already resolved, e.g. recorded in a bundle's key) do over ``power``. Wearable
    energy = its compute time x ``power[wearable_kind]`` + the frame's airtime x the radio power
    of the link's kind. ``scale`` and ``power`` update ``DEFAULT_SCALE`` / ``DEFAULT_POWER``.
    Ties go to the other objective, then to the earlier cut."""
    if objective not in OBJECTIVES:
        raise LayerSplitError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    _encoding(encoding)
    if not costs or costs[0].index != 0:
        raise LayerSplitError("costs must start with the input row (index 0), as measure_layers returns them")
    if any(c.host_ms is None for c in costs):
        raise LayerSplitError("costs have no compute times (layer_shapes); use measure_layers to plan a split")
    profile = _link(link)
    scales = {**DEFAULT_SCALE, **(scale or {})}
    powers = {**DEFAULT_POWER, **(power or {})}
    sw = wearable_scale or _lookup(scales, wearable_kind, what="scale factor", option="scale")
    se = edge_scale or _lookup(scales, edge_kind, what="scale factor", option="scale")
    pw = _lookup(powers, wearable_kind, what="compute power", option="power") \
        if wearable_power_w is None else float(wearable_power_w)
    pr = _radio_power(powers, profile) if radio_power_w is None else float(radio_power_w)
    host = [0.0] + [float(c.host_ms or 0.0) for c in costs[1:]]
    total_host = sum(host)
    rows = []
    done = 0.0
    for k, c in enumerate(costs):
        done += host[k]
        nbytes = c.frame_bytes.get(encoding, frame_bytes(c.values, encoding))
        air_ms = profile.airtime_s(nbytes) * 1000.0
        w_ms, e_ms = done * sw, max(total_host - done, 0.0) * se
        link_ms = air_ms + profile.delay_s * 1000.0
        compute_mj, radio_mj = w_ms * pw, air_ms * pr
        rows.append(CutRow(cut=k, layer=c.name, shape=c.shape, values=c.values, bytes=nbytes, wearable_ms=w_ms,
                           link_ms=link_ms, edge_ms=e_ms, total_ms=w_ms + link_ms + e_ms, compute_mj=compute_mj,
                           radio_mj=radio_mj, wearable_mj=compute_mj + radio_mj))
    plan = SplitPlan(rows=tuple(rows), chosen=0, objective=objective, link=profile.name, rate_bps=profile.rate_bps,
                     wearable_kind=wearable_kind, edge_kind=edge_kind, encoding=encoding, wearable_scale=sw,
                     edge_scale=se, wearable_power_w=pw, radio_power_w=pr)
    best = min(rows, key=plan._key)
    return SplitPlan(**{**{f: getattr(plan, f) for f in plan.__dataclass_fields__}, "chosen": best.cut})


# -- splitting ---------------------------------------------------------------------------------

class SplitHead(nn.Module):
    """The wearable's part: layers 1..cut, output flattened to (batch, N) for the wire."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.names = [n for n, _ in layers]
        self.layers = nn.ModuleList([m for _, m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x.flatten(1)


class SplitTail(nn.Module):
    """The edge's part: a (batch, N) vector (what the merge receives) reshaped to the activation's
    ``in_shape``, then the remaining layers."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], in_shape: Sequence[int]) -> None:
        super().__init__()
        self.names = [n for n, _ in layers]
        self.in_shape = tuple(int(d) for d in in_shape)
        self.layers = nn.ModuleList([m for _, m in layers])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.reshape(-1, *self.in_shape)
        for layer in self.layers:
            x = layer(x)
        return x


def _cut_index(layers: list[tuple[str, nn.Module]], cut: int | str) -> int:
    if isinstance(cut, str):
        names = ["input"] + [n for n, _ in layers]
        if cut not in names:
            raise LayerSplitError(f"unknown cut {cut!r}; expected 'input' or a layer name: {', '.join(names[1:])}")
        return names.index(cut)
    if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut <= len(layers):
        raise LayerSplitError(f"cut {cut!r}: expected 0 (all on the edge) .. {len(layers)} (all on the wearable)")
    return cut


def split_modules(model: nn.Module, cut: int | str, *, input_shape: Sequence[int]) -> tuple[SplitHead, SplitTail]:
    """Head (layers 1..cut, flat output) and tail (the rest, flat input) of ``model`` at ``cut``:
    the number of layers on the wearable (0..L) or the name of the last one ('input' = 0).
    ``tail(head(x)) == model(x)``; both share the model's parameters and are in eval mode."""
    shape = _input_shape(input_shape)
    layers = model_layers(model.eval())
    k = _cut_index(layers, cut)
    head = SplitHead(layers[:k]).eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        mid = _walk(layers[:k], torch.zeros((1, *shape), device=device))
    return head, SplitTail(layers[k:], mid[-1] if mid else shape).eval()


# -- export ------------------------------------------------------------------------------------

_RESERVED = ("format", "method", "students", "parts", "S", "M", "part_dim", "merge_rule", "student_part",
             "cut", "plan", "shards", "classes", "evaluation", "versions")


@torch.no_grad()
def export_layer_bundle(model: nn.Module, plan_or_cut: SplitPlan | int | str, *, out_dir: Path,
                        samples: np.ndarray, classes: Sequence[str], evaluation: Mapping[str, Any] | None = None,
                        extra_manifest: Mapping[str, Any] | None = None,
                        tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Write a layer-split bundle to ``out_dir`` and return its manifest.

    ``samples`` (N x C x H x W float32, real inputs) fix the input shape and check parity: the
    traced head, then the traced tail on the head's traced output, must match ``model`` within
    ``tolerance`` on up to 64 of them, else ExportParityError and no manifest is written.
    ``plan_or_cut``: a SplitPlan of this model (its chosen cut; its table goes in the manifest)
    or a cut as ``split_modules`` takes it. ``extra_manifest`` adds keys (dataset, config, ...)
    but may not replace the format's own."""
    out_dir = Path(out_dir)
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(samples)[:64], dtype=np.float32))
    if x.ndim < 2 or len(x) == 0:
        raise LayerSplitError(f"samples: expected N x C x H x W real inputs, got shape {list(x.shape)}")
    shape = tuple(x.shape[1:])
    layers = model_layers(model.eval())
    names = ["input"] + [name for name, _ in layers]
    plan = plan_or_cut if isinstance(plan_or_cut, SplitPlan) else None
    if plan is not None:
        if [r.layer for r in plan.rows] != names or plan.rows[0].shape != shape:
            raise LayerSplitError("the plan was made for another model or input shape: its layers are "
                                  f"{[r.layer for r in plan.rows][:4]}… at {_shape(plan.rows[0].shape)}, the model's "
                                  f"{names[:4]}… at {_shape(shape)}")
    cut = _cut_index(layers, plan.chosen if plan is not None else plan_or_cut)
    clash = sorted(set(extra_manifest or {}) & set(_RESERVED))
    if clash:
        raise LayerSplitError(f"extra_manifest may not set {', '.join(clash)}: the layer bundle writes them")
    head, tail = split_modules(model, cut, input_shape=shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    traced_head, head_io = trace_shard(head, x[:1], out_dir / "student_0.ts")
    z = traced_head(x)
    errors = {"student_0": check_parity("student_0", z.numpy(), head(x.clone()).numpy(), tolerance)}
    n = int(z.shape[1])
    traced_tail, tail_io = trace_shard(tail, torch.zeros(1, n), out_dir / "merge.ts")
    errors["merge"] = check_parity("merge", traced_tail(z.clone()).numpy(), model(x.clone()).numpy(), tolerance)
    shards = [
        {"name": "student_0", "role": "student", "index": 0, "part": 0, "learns_part": 0, "runtime": "torch",
         "file": "student_0.ts", "layers": head.names, **head_io},
        {"name": "merge", "role": "merge", "runtime": "torch", "file": "merge.ts", "layers": tail.names, **tail_io},
    ]
    for shard in shards:
        shard["sha256"] = sha256_file(out_dir / shard["file"])
    cut_info: dict[str, Any] = {"index": cut, "layer": names[cut], "layers": len(layers),
                                "shape": list(tail.in_shape), "values": n,
                                "frame_bytes": {e: frame_bytes(n, e) for e in ENCODINGS}}
    if plan is not None:
        cut_info.update(plan.summary())
    key = hashlib.sha256(json.dumps({"cut": cut, "shards": [s["sha256"] for s in shards]}).encode()).hexdigest()[:16]
    manifest: dict[str, Any] = {
        "format": FORMAT, "method": "layer", "students": 1, "parts": 1, "S": 1, "M": 1, "part_dim": n,
        "merge_rule": "concat", "student_part": [0], "cut": cut_info,
        "plan": plan.table() if plan is not None else None, "config_key": key, "classes": list(classes),
        "shards": shards,
        "evaluation": {**(evaluation or {}), "parity_max_abs_error": max(errors.values()),
                       "parity_tolerance": tolerance, "parity_samples": len(x)},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        **(extra_manifest or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


# -- experiments -------------------------------------------------------------------------------

def _board_for(exp: Experiment, inventory: Inventory, want: int | str) -> Any:
    for board, value in exp.assignment.items():
        if value == want and board in inventory.boards:
            return inventory.boards[board]
    return inventory.edge if want == "merge" else None


def resolve_layer_inputs(exp: Experiment, inventory: Inventory | None) -> dict[str, Any]:
    """What the layer split of ``exp`` depends on besides the model, JSON-able (it enters the
    bundle key): objective, encoding, the link's profile, the wearable's and the edge's kinds,
    their scale factors and powers, and the timing repeats.

    The wearable is the board assigned student 0, the edge the one assigned ``merge``. The link
    is ``layer.link`` (a link name of the inventory, or a profile preset), else the wearable's
    link in the inventory; the encoding is ``layer.encoding``, else that link's. Without an
    inventory: a ``rpi4`` wearable, a ``jetson-nano`` edge and ``hbc-164k`` (say so with
    ``layer.link`` to plan for another)."""
    spec = exp.partition
    layer = dict(spec.layer) if spec is not None else {}
    wearable = edge = link_spec = None
    if inventory is not None:
        wearable, edge = _board_for(exp, inventory, 0), _board_for(exp, inventory, "merge")
        if wearable is not None:
            try:
                link_spec = inventory.link_from(wearable)
            except KeyError:
                link_spec = None
    name = layer.get("link")
    if name is not None:
        named = [ln for ln in (inventory.links if inventory is not None else ()) if ln.name == name]
        if named:
            link_spec = named[0]
        elif name in PRESETS:
            link_spec = None
        else:
            known = [ln.name for ln in inventory.links] if inventory is not None else []
            raise LayerSplitError(f"partition.layer.link {name!r}: expected a link of the inventory "
                                  f"({', '.join(known) or 'none'}) or a preset ({', '.join(PRESETS)})")
    profile = link_spec.profile if link_spec is not None else PRESETS[name or DEFAULTS["fallback_link"]]
    encoding = layer.get("encoding") or (link_spec.encoding if link_spec is not None else "f32")
    wk = wearable.kind if wearable is not None else DEFAULTS["wearable_kind"]
    ek = edge.kind if edge is not None else DEFAULTS["edge_kind"]
    for kind in (wk, ek):
        _lookup(DEFAULT_SCALE, kind, what="scale factor", option="scale")
    return {"objective": layer.get("objective", DEFAULTS["objective"]), "encoding": _checked_encoding(encoding),
            "link": profile.as_dict(), "wearable_kind": wk, "edge_kind": ek,
            "scale": {"wearable": _board_scale(wearable, wk), "edge": _board_scale(edge, ek)},
            "power": {"wearable": _lookup(DEFAULT_POWER, wk, what="compute power", option="power"),
                      "radio": _radio_power(DEFAULT_POWER, profile)},
            "repeats": int(layer.get("repeats", DEFAULTS["repeats"]))}


def _board_scale(board: Any, kind: str) -> float:
    """The board's ``compute_scale`` from the inventory, else the per-kind default."""
    own = getattr(board, "compute_scale", None)
    return float(own) if own else DEFAULT_SCALE[kind]


def _checked_encoding(name: str) -> str:
    _encoding(name)
    return name


def build_layer_bundle(exp: Experiment, cfg: PartitionConfig, data: Dataset, *, inventory: Inventory | None,
                       out_dir: Path, cache_dir: Path, progress: Progress | None = None
                       ) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """The layer split of ``exp``'s Teacher (``cfg.teacher``, loaded from or trained into
    ``cache_dir`` exactly as the other methods do, so they share it): measure its layers on this
    host on a real test image, plan for ``resolve_layer_inputs``, export the bundle to ``out_dir``.
    Returns the manifest and the shard modules by shard name (for LiteRT export)."""
    inputs = resolve_layer_inputs(exp, inventory)
    tcfg = teacher_config(cfg, data)
    ident = weightcache.data_identity(data)
    t0 = time.monotonic()
    model, record = load_or_train_teacher(tcfg, data, cache_dir=Path(cache_dir), progress=phase_progress(progress, "teacher"),
                                          identity=ident)
    t1 = time.monotonic()
    mark(progress, "measure layers", 0)
    costs = measure_layers(model, data.input_shape, repeats=inputs["repeats"], sample=data.x_test[:1])
    mark(progress, "measure layers", 1)
    plan = plan_split(costs, link=LinkProfile.from_dict(inputs["link"]), wearable_kind=inputs["wearable_kind"],
                      edge_kind=inputs["edge_kind"], encoding=inputs["encoding"], objective=inputs["objective"],
                      wearable_scale=inputs["scale"]["wearable"], edge_scale=inputs["scale"]["edge"],
                      wearable_power_w=inputs["power"]["wearable"], radio_power_w=inputs["power"]["radio"])
    t2 = time.monotonic()
    n_test = cfg.test_subset or len(data.x_test)
    accuracy = teacher_accuracy(model, data.x_test[:n_test], data.y_test[:n_test])
    evaluation = {"test_accuracy": accuracy, "teacher_accuracy": accuracy, "test_samples": n_test,
                  "how": "the layer split runs the teacher unchanged (head then tail), so its accuracy is the "
                         "teacher's; a lost frame loses the sample (the merge sees zeros)",
                  "host_layer_ms": {c.name: round(float(c.host_ms or 0.0), 4) for c in costs[1:]},
                  "numerics": numerics()}
    mark(progress, "export:layer", 0)
    manifest = export_layer_bundle(
        model, plan, out_dir=Path(out_dir), samples=data.x_test, classes=data.classes, evaluation=evaluation,
        extra_manifest={"dataset": data.name, "layer": inputs, "numerics": numerics_record(), "data": ident,
                        "teacher": {
            "key": tcfg.key(), "config": json.loads(json.dumps(asdict(tcfg))),
            "test_accuracy": record.get("test_accuracy"), "train_seconds": record.get("train_seconds")},
            "timings": {"teacher": round(t1 - t0, 2), "measure_and_plan": round(t2 - t1, 2),
                        "export": round(time.monotonic() - t2, 2)}})
    mark(progress, "export:layer", 1)
    head, tail = split_modules(model, plan.chosen, input_shape=data.input_shape)
    return manifest, {"student_0": head, "merge": tail}
