"""The one minibatch training loop, and top-1 accuracy, for every model the harness trains.

Holds ``fit``: Adam (AdamW when a weight decay is given) with a one-cycle learning-rate
schedule, ``epochs`` passes over ``samples`` training examples in minibatches drawn by a
permutation from the caller's seeded generator, a progress callback after every step, and the
model left in eval mode. The caller passes the loss of one minibatch as a function of its
indices, so the spine's students (cross-entropy), the partition teacher (cross-entropy) and
the partition students (distillation) share the loop and differ only there. ``accuracy`` is
the top-1 accuracy of a classifier run in batches.

It must not build models, load data, seed torch's global generator or cache weights: the
callers do (seeding before they build the model, so initial weights follow the seed).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)
BatchLoss = Callable[[torch.Tensor], torch.Tensor]  # minibatch indices -> scalar loss


def fit(model: torch.nn.Module, batch_loss: BatchLoss, *, samples: int, epochs: int, batch_size: int, lr: float,
        generator: torch.Generator, weight_decay: float = 0.0, progress: ProgressFn | None = None) -> None:
    """Train ``model`` in place for ``epochs`` passes over ``samples`` examples.

    Each epoch draws ``torch.randperm(samples, generator=generator)`` and walks it in slices of
    ``batch_size``; ``batch_loss(indices)`` returns the loss to minimise (it may draw from
    ``generator`` too, e.g. for dropout masks). The optimiser is Adam, or AdamW when
    ``weight_decay`` > 0; the learning rate follows one cycle peaking at ``lr`` over all steps.
    ``progress(step, total_steps, loss)`` is called after every step.
    """
    total = (samples + batch_size - 1) // batch_size * epochs
    if weight_decay > 0:
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    model.train()
    step = 0
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
