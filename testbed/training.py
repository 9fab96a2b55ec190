"""The one minibatch training loop, and top-1 accuracy, for every model the harness trains.

Holds ``fit``: Adam (AdamW when a weight decay is given) with a one-cycle learning-rate
schedule, ``epochs`` passes over ``samples`` training examples in minibatches drawn by a
permutation from the caller's seeded generator, a progress callback after every step, and the
model left in eval mode. The caller passes the loss of one minibatch as a function of its
indices, so the spine's students (cross-entropy), the partition teacher (cross-entropy) and
the partition students (distillation) share the loop and differ only there. ``accuracy`` is
the top-1 accuracy of a classifier run in batches.

It also holds the one rule for the process settings that change a training's numbers
(``numerics``): torch's version, its intra-op thread count and the deterministic-algorithms flag.
The thread count matters: a reduction split over 2 threads adds in another order than over 1, so
the same seed trains other weights (on the tiny digits partition a different teacher, other
filter parts and 0.396 instead of 0.474 accuracy). One count gives the same weights bit for bit
in every process and on every core count (same CPU kind: ``numerics_record`` says which). The
count is therefore an explicit setting, ``DEFAULT_THREADS`` = 1 unless the caller asks for another
(``configure_numerics``, called once by the entry point), and ``numerics()`` enters every weight
cache key (testbed/weightcache.py) and bundle key, and is recorded with every result. What was
checked and does not change the numbers: the minibatch order (``torch.randperm`` on the caller's
seeded generator), the deterministic-algorithms flag on CPU, and numpy's BLAS threads.

It must not build models, load data, seed torch's global generator or cache weights: the
callers do (seeding before they build the model, so initial weights follow the seed).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)
BatchLoss = Callable[[torch.Tensor], torch.Tensor]  # minibatch indices -> scalar loss

DEFAULT_THREADS = 1   # torch threads for training and evaluation: the same numbers on every machine


def configure_numerics(*, threads: int | None = None) -> dict[str, Any]:
    """Size torch's intra-op thread pool of this whole process to ``threads`` (None:
    ``DEFAULT_THREADS``; an entry point calls it before anything trains) and return
    ``numerics()``. ValueError unless ``threads`` is an int >= 1."""
    from nodes.runtime import configure_torch_threads
    configure_torch_threads(DEFAULT_THREADS if threads is None else threads)
    return numerics()


def numerics() -> dict[str, Any]:
    """The settings of this process that change what a training computes, as they are now:
    torch's version (build included), its intra-op threads and the deterministic-algorithms
    flag. Part of every cache key of trained weights and bundles."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled()}


def numerics_record() -> dict[str, Any]:
    """``numerics()`` plus what is recorded but not keyed: the CPU's vector instruction set
    (another one may round differently; a cache belongs to its machine) and numpy's BLAS threads
    (they were checked not to change the numbers)."""
    return {**numerics(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "blas_threads": _blas_threads(), "how": "threads: torch.get_num_threads() while training; "
                                                    "the same count gives the same weights on any core count"}


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


def fit(model: torch.nn.Module, batch_loss: BatchLoss, *, samples: int, epochs: int, batch_size: int, lr: float,
        generator: torch.Generator, weight_decay: float = 0.0, progress: ProgressFn | None = None) -> None:
    """Train ``model`` in place for ``epochs`` passes over ``samples`` examples.

    Each epoch draws ``torch.randperm(samples, generator=generator)`` and walks it in slices of
    ``batch_size``; ``batch_loss(indices)`` returns the loss to minimise (it may draw from
    ``generator`` too, e.g. for dropout masks). The optimiser is Adam, or AdamW when
    ``weight_decay`` > 0; the learning rate follows one cycle peaking at ``lr`` over all steps.
    ``progress(step, total_steps, loss)`` is called once before the first step (step 0, loss NaN)
    and after every step.
    """
    total = (samples + batch_size - 1) // batch_size * epochs
    if weight_decay > 0:
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    model.train()
    step = 0
    if progress:
        progress(0, total, float("nan"))
    for _ in range(epochs):
        order = torch.randperm(samples, generator=generator)
        for i in range(0, samples, batch_size):
            loss = batch_loss(order[i:i + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress(step, total, loss.item())
    model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (N x C x H x W -> N x classes logits) on ``x``, ``y``, in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / max(1, len(x))
