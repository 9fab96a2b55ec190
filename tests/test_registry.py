"""The backend registry: eager and lazy backends, unknown names listing the known ones, duplicate
names refused."""
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


@pytest.mark.parametrize("first", ["eager", "lazy"])
@pytest.mark.parametrize("second", ["eager", "lazy"])
def test_a_duplicate_name_is_refused_and_the_first_backend_kept(first: str, second: str) -> None:
    reg: Registry[object] = Registry("widget", error=LookupError)

    def register(how: str) -> object:
        if how == "lazy":
            reg.register_lazy("dup", "fractions:Fraction")
            return None
        return reg.register("dup")(type("Eager", (), {}))

    kept = register(first)
    with pytest.raises(LookupError, match="widget 'dup' is already registered"):
        register(second)
    from fractions import Fraction
    assert reg.get("dup") is (Fraction if first == "lazy" else kept)
    assert reg.names() == ["dup"]


def test_a_lazy_name_once_loaded_is_still_refused() -> None:
    reg: Registry[object] = Registry("widget", error=LookupError)
    reg.register_lazy("frac", "fractions:Fraction")
    reg.get("frac")
    with pytest.raises(LookupError, match="widget 'frac' is already registered \\(to fractions:Fraction\\)"):
        reg.register("frac")(object)


def test_the_board_registries_hold_each_backend_once() -> None:
    from nodes.errors import TransportError
    from nodes.runtime import RUNTIMES
    from nodes.transport import TRANSPORTS

    assert RUNTIMES.names() == ["tflite", "torch"]
    assert TRANSPORTS.names() == ["ble", "mqtt", "serial"]
    with pytest.raises(TransportError, match="transport 'mqtt' is already registered"):
        TRANSPORTS.register_lazy("mqtt", "nodes.transport:MqttTransport")
    assert TRANSPORTS.names() == ["ble", "mqtt", "serial"]
