from __future__ import annotations

import pytest

from vesper_core.errors import ConfigError, UnknownNameError
from vesper_core.registry import Registry


def test_unknown_name_lists_choices_and_closest_match():
    reg = Registry("model preset")
    for name in ("tiny", "small", "medium"):
        reg.register(name, object())
    with pytest.raises(UnknownNameError) as info:
        reg.get("smal")
    message = str(info.value)
    assert "'smal'" in message and "did you mean 'small'" in message and "medium, small, tiny" in message


def test_aliases_resolve_and_cannot_collide():
    reg = Registry("preset")
    reg.register("xlarge", 1, aliases=("1b",))
    assert reg.get("1b") == 1 and reg.resolve("1b") == "xlarge"
    with pytest.raises(ConfigError):
        reg.register("1b", 2)


def test_decorator_form():
    reg = Registry("optimizer")

    @reg.register("mine")
    def factory():
        return 42

    assert reg.get("mine")() == 42 and reg.names() == ["mine"]
