"""Registry and lazy package attributes: the shared plumbing of the stage registries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rt2edge.errors import ConfigError
from rt2edge.registry import Registry


def test_registry_registers_instances_and_names_the_field_on_unknown() -> None:
    reg: Registry[object] = Registry("widget", field="widget_name")

    @reg.register_class("name")
    class Blue:
        name = "blue"

    assert isinstance(reg.get("blue"), Blue) and list(reg) == ["blue"] and len(reg) == 1
    with pytest.raises(ConfigError, match=r"widget_name: unknown widget 'red'; registered: \['blue'\]"):
        reg.get("red")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("blue", object())


def test_stage_packages_import_without_torch() -> None:
    code = ("import sys, export, bench, rt2edge.models; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "export.nope")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "AttributeError: module 'export' has no attribute 'nope'" in out.stderr
    assert "torch imported" not in out.stderr


def test_registry_get_with_a_default_behaves_like_mapping_get() -> None:
    reg: Registry[int] = Registry("number", field="n")
    reg.add("one", 1)
    assert reg.get("two", None) is None and reg.get("one", 0) == 1
