"""Shard runtimes on a board: load a shard file, run it on one sample, return a float32 array.

Holds the ``Runtime`` ABC and its backends, chosen by name: ``torch`` (TorchScript, the
Jetson edge) and ``tflite`` (LiteRT flatbuffers, the Pis). Each backend imports its framework
lazily, so a board that runs LiteRT shards never needs torch and vice versa. Every backend
takes float32 in and gives float32 out, whatever the shard's own tensor types.

A runtime's constructor changes nothing outside the runtime: LiteRT's thread count is the
interpreter's own (``threads``), while torch's thread pool belongs to the whole process, so a
process that wants a size for it says so once, at start-up, with ``configure_torch_threads``.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np

from nodes.errors import RuntimeLoadError
from nodes.registry import Registry

_R = TypeVar("_R", bound="Runtime")


class Runtime(ABC):
    """One loaded shard."""

    name: str = "?"

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the shard on a batch (leading batch dimension included); returns float32."""

    def close(self) -> None:
        """Release the shard (default: nothing to do)."""

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RUNTIMES: Registry[Runtime] = Registry("runtime", error=RuntimeLoadError)


def _import_torch() -> ModuleType:
    try:
        import torch
    except ImportError as exc:
        raise RuntimeLoadError("runtime 'torch' needs PyTorch on this board: pip install torch") from exc
    return torch


def configure_torch_threads(n: int) -> None:
    """Size torch's intra-op thread pool to ``n`` threads for this whole process.

    A process calls it once, at start-up, from its entry point (an agent whose runtime is torch,
    a bench that times torch); no runtime calls it. RuntimeLoadError without torch, ValueError
    unless ``n`` is an int >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"torch threads must be an int >= 1, got {n!r}")
    _import_torch().set_num_threads(n)


@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """TorchScript shard on CPU (the Jetson edge, or any simulated board).

    It runs on the process's torch thread pool, whose size is the process's choice
    (``configure_torch_threads``), not the shard's: there is no per-runtime thread count.
    """

    name = "torch"

    def __init__(self, path: Path) -> None:
        torch = _import_torch()
        self._torch = torch
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream; JetPack still needs it
                warnings.simplefilter("ignore", DeprecationWarning)
                self._module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError for bad files
            raise RuntimeLoadError(f"{path}: cannot load TorchScript shard ({exc})") from exc

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self._module(self._torch.from_numpy(np.array(x, dtype=np.float32, copy=True, order="C")))
        return out.numpy().astype(np.float32, copy=False)


def _tflite_interpreter_class() -> type:
    """LiteRT's Interpreter (``ai-edge-litert``), else the legacy ``tflite-runtime`` one."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        raise RuntimeLoadError("runtime 'tflite' needs LiteRT on this board: pip install ai-edge-litert "
                               "(or tflite-runtime where no ai-edge-litert wheel exists)") from None


def _io_quantization(detail: dict, path: Path) -> tuple[float, int] | None:
    """(scale, zero_point) of an integer input/output tensor, None for a float one."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return None
    if dtype not in (np.int8, np.uint8):
        raise RuntimeLoadError(f"{path}: tensor {detail['name']!r} is {dtype}; expected float32, int8 or uint8")
    scales = detail.get("quantization_parameters", {}).get("scales", np.zeros(0))
    scale, zero_point = detail["quantization"]
    if len(scales) > 1 or not scale:
        raise RuntimeLoadError(f"{path}: tensor {detail['name']!r} is {dtype} without one per-tensor "
                               f"scale; expected per-tensor quantisation on shard inputs and outputs")
    return float(scale), int(zero_point)


@RUNTIMES.register("tflite")
class TFLiteRuntime(Runtime):
    """LiteRT (.tflite) shard on the CPU, one input and one output tensor.

    Shards are exported with a fixed batch (1); ``run`` feeds a batch of any size through in
    chunks of that batch (resizing is not an option: the converted graphs reshape with the
    exported batch baked in). Full-integer shards (int8/uint8 input or output) are quantised
    and dequantised here with the tensor's own scale and zero point.
    """

    name = "tflite"

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        interpreter = _tflite_interpreter_class()
        if not path.is_file():
            raise RuntimeLoadError(f"{path}: no such LiteRT shard file")
        try:
            self._it = interpreter(model_path=str(path), num_threads=threads)
            self._it.allocate_tensors()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError for bad files
            raise RuntimeLoadError(f"{path}: cannot load LiteRT shard ({exc})") from exc
        inputs, outputs = self._it.get_input_details(), self._it.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeLoadError(f"{path}: shard has {len(inputs)} inputs and {len(outputs)} outputs; "
                                   f"expected one of each")
        self._in, self._out = inputs[0], outputs[0]
        self._in_q = _io_quantization(self._in, path)
        self._out_q = _io_quantization(self._out, path)
        self.input_shape = tuple(int(d) for d in self._in["shape"])
        self.output_shape = tuple(int(d) for d in self._out["shape"])
        self._batch = self.input_shape[0] if self.input_shape else 1

    @property
    def tensor_io(self) -> dict[str, dict[str, object]]:
        """Integer input/output tensors' dtype, scale and zero point (empty for a float shard)."""
        return {side: {"dtype": np.dtype(detail["dtype"]).name, "scale": q[0], "zero_point": q[1]}
                for side, q, detail in (("input", self._in_q, self._in), ("output", self._out_q, self._out))
                if q is not None}

    def _feed(self, chunk: np.ndarray) -> np.ndarray:
        if self._in_q is not None:
            scale, zero_point = self._in_q
            info = np.iinfo(self._in["dtype"])
            chunk = np.clip(np.round(chunk / scale) + zero_point, info.min, info.max).astype(self._in["dtype"])
        self._it.set_tensor(self._in["index"], chunk)
        self._it.invoke()
        out = self._it.get_tensor(self._out["index"])
        if self._out_q is not None:
            scale, zero_point = self._out_q
            return ((out.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return out.astype(np.float32, copy=True)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"LiteRT shard expects input shape [N, {', '.join(map(str, self.input_shape[1:]))}], "
                             f"got {list(x.shape)}")
        b = self._batch
        outs = []
        for start in range(0, len(x), b):
            chunk = x[start:start + b]
            k = len(chunk)
            if k < b:  # pad the last chunk up to the exported batch; the padding rows are dropped
                chunk = np.concatenate([chunk, np.zeros((b - k, *chunk.shape[1:]), dtype=np.float32)])
            outs.append(self._feed(chunk)[:k])
        if not outs:
            return np.zeros((0, *self.output_shape[1:]), dtype=np.float32)
        return np.concatenate(outs)

    def close(self) -> None:
        self._it = None  # the interpreter frees its arena when collected


def open_runtime(name: str, path: Path, **options: object) -> Runtime:
    """Load ``path`` with the runtime called ``name``; ``options`` are that backend's own
    (``threads`` for tflite)."""
    return RUNTIMES.get(name)(Path(path), **options)
