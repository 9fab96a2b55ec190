"""Loss models with netem's semantics: iid ("random") and Gilbert-Elliott ("gemodel").

Holds `LossModel` (validated parameters, in percent as `tc qdisc ... netem loss` takes them)
and `LossChain` (its seeded state machine, one `step()` per PHY frame). The Gilbert-Elliott
step replicates the kernel's `loss_gilb_ell()`: in the good state, move to bad with
probability p, then lose with probability 1-k; in the bad state, move to good with
probability r, then lose with probability 1-h. Pure: no I/O, no clock, and it must not
import anything from `nodes` or `testbed`.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from linkemu.errors import ProfileError, check_keys, choice, number, require

__all__ = ["LOSS_MODELS", "LossModel", "LossChain"]

LOSS_MODELS = ("random", "gemodel")
_KEYS = {"random": ("model", "p"), "gemodel": ("model", "p", "r", "1-h", "1-k")}


@dataclass(frozen=True)
class LossModel:
    """`random`: lose each frame with probability p %. `gemodel`: Gilbert-Elliott with
    p = P(good->bad) %, r = P(bad->good) %, one_minus_h = loss % in bad,
    one_minus_k = loss % in good (netem's `loss gemodel p r 1-h 1-k`)."""

    model: str
    p: float
    r: float = 100.0
    one_minus_h: float = 100.0
    one_minus_k: float = 0.0

    def __post_init__(self) -> None:
        choice(self.model, LOSS_MODELS, key="loss.model")
        for key, value in (("p", self.p), ("r", self.r), ("1-h", self.one_minus_h),
                           ("1-k", self.one_minus_k)):
            number(value, key=f"loss.{key}", maximum=100.0)
        if self.model == "gemodel" and self.r == 0.0 and self.p > 0.0:
            raise ProfileError("expected a number > 0: with r = 0 the bad state never ends",
                               key="loss.r")

    @property
    def mean_loss(self) -> float:
        """Long-run loss probability (0..1) of the stationary chain."""
        if self.model == "random":
            return self.p / 100.0
        p, r = self.p / 100.0, self.r / 100.0
        bad = p / (p + r) if p + r > 0 else 0.0
        return (1 - bad) * self.one_minus_k / 100.0 + bad * self.one_minus_h / 100.0

    def chain(self, rng: random.Random) -> LossChain:
        return LossChain(self, rng)

    def as_dict(self) -> dict[str, Any]:
        if self.model == "random":
            return {"model": "random", "p": self.p}
        return {"model": "gemodel", "p": self.p, "r": self.r, "1-h": self.one_minus_h,
                "1-k": self.one_minus_k}

    @classmethod
    def from_spec(cls, spec: Any, *, key: str = "loss") -> LossModel:
        """From `{model: random, p}` or `{model: gemodel, p, [r, 1-h, 1-k]}` (percent)."""
        if not isinstance(spec, Mapping):
            raise ProfileError(f"expected a mapping {{model: random|gemodel, p, ...}}, "
                               f"got {spec!r}", key=key)
        require(spec, ("model",), prefix=f"{key}.", what="random or gemodel")
        model = choice(spec["model"], LOSS_MODELS, key=f"{key}.model")
        check_keys(spec, _KEYS[model], prefix=f"{key}.")
        require(spec, ("p",), prefix=f"{key}.", what="a percentage 0..100")
        values = {k: number(spec[k], key=f"{key}.{k}", maximum=100.0)
                  for k in _KEYS[model][1:] if k in spec}
        try:
            return cls(model, values["p"], r=values.get("r", 100.0),
                       one_minus_h=values.get("1-h", 100.0),
                       one_minus_k=values.get("1-k", 0.0))
        except ProfileError as exc:  # re-key under the caller's prefix
            raise ProfileError(exc.detail, key=f"{key}.{exc.key.split('.', 1)[1]}") from None


class LossChain:
    """The seeded state of a loss model; `step()` says whether the next frame is lost."""

    def __init__(self, model: LossModel, rng: random.Random) -> None:
        self.model = model
        self._rng = rng
        self.bad = False
        self._p = model.p / 100.0
        self._r = model.r / 100.0
        self._loss_bad = model.one_minus_h / 100.0
        self._loss_good = model.one_minus_k / 100.0

    def step(self) -> bool:
        rand = self._rng.random
        if self.model.model == "random":
            return self._p > 0.0 and rand() < self._p
        if not self.bad:
            if rand() < self._p:
                self.bad = True
            return rand() < self._loss_good
        if rand() < self._r:
            self.bad = False
        return rand() < self._loss_bad
