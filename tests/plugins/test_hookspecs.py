"""Every hook is documented: a docstring in hookspecs.py and a section in docs/plugins.md
whose heading is the exact signature (datasette's rule)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from hub import hookspecs
from hub.plugins import make_plugin_manager

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HOOKS = sorted(
    name
    for name in dir(make_plugin_manager(load_entry_points=False).hook)
    if name.startswith("hub_")
)


def test_there_are_hooks() -> None:
    assert HOOKS == [
        "hub_before_dispatch",
        "hub_choose_route",
        "hub_enrich_case",
        "hub_on_status_change",
        "hub_periodic_jobs",
        "hub_register_adapters",
    ]


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_docstring(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc and len(doc) > 80, f"{name} needs a docstring that documents it"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_documentation_section(name: str) -> None:
    args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    assert f"## {name}({args})" in DOCS.read_text(), f"docs/plugins.md lacks '## {name}({args})'"


def test_one_public_marker() -> None:
    import hub

    assert hub.hookimpl is hookspecs.hookimpl
    assert "hookspec" not in hub.__all__
