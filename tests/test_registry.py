"""The backend registry: eager and lazy backends, unknown names listing the known ones."""
from __future__ import annotations

import pytest

from nodes.registry import Registry


def test_eager_lazy_and_unknown() -> None:
    reg: Registry[object] = Registry("widget", error=LookupError)

    @reg.register("plain")
    class Plain:
        pass

    reg.register_lazy("frac", "fractions:Fraction")
    reg.register_lazy("ghost", "no_such_module_hbc:Thing")
    assert reg.get("plain") is Plain
    from fractions import Fraction
    assert reg.get("frac") is Fraction
    assert reg.names() == ["frac", "ghost", "plain"]
    with pytest.raises(LookupError, match="widget 'ghost' is not available on this machine"):
        reg.get("ghost")
    with pytest.raises(LookupError, match="unknown widget 'nope'; expected one of frac, ghost, plain"):
        reg.get("nope")
