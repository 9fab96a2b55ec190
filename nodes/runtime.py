"""Shard runtimes on a board: load a shard file, run it on one sample, return a float32 array.

Holds the ``Runtime`` ABC and its backends, chosen by name (``torch`` now; ``tflite`` comes
with the partitioning work). torch is imported lazily inside the torch backend so a board
that runs LiteRT shards never needs it.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from nodes.errors import RuntimeLoadError
from nodes.registry import Registry


class Runtime(ABC):
    """One loaded shard."""

    name: str = "?"

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the shard on a batch (leading batch dimension included); returns float32."""

    def close(self) -> None:
        """Release the shard (default: nothing to do)."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RUNTIMES: Registry[Runtime] = Registry("runtime", error=RuntimeLoadError)


@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """TorchScript shard on CPU (the Jetson edge, or any simulated board)."""

    name = "torch"

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        try:
            import torch
        except ImportError as exc:
            raise RuntimeLoadError("runtime 'torch' needs PyTorch on this board: pip install torch") from exc
        self._torch = torch
        torch.set_num_threads(threads)
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


def open_runtime(name: str, path: Path, **options: object) -> Runtime:
    """Load ``path`` with the runtime called ``name``."""
    return RUNTIMES.get(name)(Path(path), **options)
