"""The plugin guide (docs/writing-a-plugin.md) can't drift from the code: every
hook spec appears in it with its exact signature, it names no hook that isn't
one, its plugins.toml examples are valid, and its links lead somewhere."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from pathlib import Path

import pytest

from engine import hookspecs
from engine.config import config_from_tables, validate_table
from engine.plugins import BUILTINS
from tests.test_examples import load_source

pytestmark = pytest.mark.same_in_both_passes  # no database (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-plugin.md"
HOOKS = sorted(name for name in vars(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_"))


def signature(name: str) -> str:
    """``def regulars_x(a, b):``, as the spec is written."""
    return f"def {name}{inspect.signature(getattr(hookspecs, name))}:"


def reference() -> str:
    """The guide's "Hook reference" section."""
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("\n## Hook reference\n", 1)[1]
    return section.split("\n## ", 1)[0]


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_spec_is_in_the_guide_with_its_exact_signature(name):
    assert signature(name) in reference(), (
        f"docs/writing-a-plugin.md, 'Hook reference': add `{signature(name)}` and what it does"
    )


def test_the_guide_documents_no_hook_that_is_not_a_spec():
    documented = re.findall(r"^def (regulars_\w+)\(.*$", reference(), re.M)
    for line in re.findall(r"^def regulars_\w+\(.*$", reference(), re.M):
        name = line[4:].split("(")[0]
        assert name in HOOKS and line == signature(name), f"{line!r} is not in engine/hookspecs.py"
    assert sorted(documented) == HOOKS, "each hook once in the reference"


def _owners() -> dict[str, type]:
    """Each plugins.toml table of a built-in or the example, with its plugin."""
    owners = {}
    for spec in BUILTINS:
        module, _, attr = spec.partition(":")
        plugin = getattr(importlib.import_module(module), attr)
        if getattr(plugin, "table", None):
            owners[plugin.table] = plugin
    happy_hour = load_source().HappyHour
    owners[happy_hour.table] = happy_hour
    return owners


def test_every_plugins_toml_example_in_the_guide_is_valid_for_its_plugin():
    owners = _owners()
    checked = []
    for block in code_blocks("toml"):
        tables = tomllib.loads(block)
        config = config_from_tables({"engine": {}, **tables}, GUIDE, env={})
        for name in tables.get("plugins", {}):
            table = f"plugins.{name}"
            assert table in owners, f"the guide shows [{table}], which no plugin owns"
            validate_table(config, table, owners[table].settings_schema)
            checked.append(table)
    assert {"plugins.happy-hour", "plugins.double-points", "plugins.sku-multipliers"} <= set(
        checked
    )


def test_every_relative_link_in_the_guide_leads_to_a_file():
    text = GUIDE.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (GUIDE.parent / target).exists(), (
                f"docs/writing-a-plugin.md links to missing {target}"
            )
