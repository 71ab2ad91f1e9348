"""Plugin loading: the pluggy manager, built inside ``Engine(config)``.

Built-in plugins (``rules/``, ``connectors/``, ``plugins/``) and third-party
ones (entry-point group ``regulars``) are loaded the same way: a class with a
``table`` and a ``settings_schema`` is constructed with its validated table
from ``plugins.toml`` when that table is present. An installed plugin (entry
point) must have a ``table``: installing one doesn't turn it on. An object
given in code (``extra``, the tests' way) without a ``table`` is always on.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy
from marshmallow import Schema

from engine import hookspecs
from engine.config import Config, ConfigError, validate_table

#: the built-in plugins, registered exactly like third-party ones
BUILTINS = (
    "rules.points:PointsRule",
    "rules.rewards:RewardCatalogue",
    "rules.stamps:StampsRule",
    "rules.expiry:ExpiryRule",
    "rules.tiers:TiersRule",
    "rules.referrals:ReferralsRule",
    "rules.subscriptions:SubscriptionsRule",
    "connectors.shopify:ShopifyConnector",
    "connectors.woocommerce:WooCommerceConnector",
    "connectors.pos:PosConnector",
    "plugins.double_points:DoublePoints",
    "plugins.sku_multipliers:SkuMultipliers",
    "plugins.first_order:FirstOrderBonus",
    "plugins.birthday:BirthdayBonus",
)


class PluginLoadError(Exception):
    """A plugin could not be loaded or registered; the message names it."""


class PluginFailed(Exception):
    """A plugin raised inside a decision hook."""

    def __init__(self, plugin: str, hook: str, error: BaseException):
        self.plugin = plugin
        self.hook = hook
        self.error = error
        super().__init__(f"plugin {plugin!r} failed in {hook}: {type(error).__name__}: {error}")


@dataclass
class LoadedPlugin:
    name: str
    source: str
    table: str | None
    obj: Any
    hooks: list[str] = field(default_factory=list)


def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def _instantiate(candidate: Any, config: Config, name: str) -> Any | None:
    """The plugin object for a candidate, or None when its table is absent."""
    table = getattr(candidate, "table", None)
    if table is not None and config.table(table) is None:
        return None
    if isinstance(candidate, type):
        schema = getattr(candidate, "settings_schema", None)
        if schema is not None and not (isinstance(schema, Schema) or isinstance(schema, type)
                                       and issubclass(schema, Schema)):
            raise PluginLoadError(f"plugin {name!r}: settings_schema must be a marshmallow Schema class "
                                  f"(derive it from engine.config.StrictSchema), got {schema!r}")
        settings = validate_table(config, table, schema) if table else {}
        try:
            return candidate(settings)
        except Exception as exc:
            raise PluginLoadError(f"plugin {name!r} failed to start: {type(exc).__name__}: {exc}") from exc
    return candidate


class Plugins:
    """The loaded plugins and the pluggy manager that calls them."""

    def __init__(self, config: Config, builtins: tuple[str, ...] = BUILTINS, extra: tuple = ()):
        self.config = config
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.loaded: list[LoadedPlugin] = []
        owned: dict[str, str] = {}

        candidates: list[tuple[str, str, Any]] = []
        for spec in builtins:
            try:
                candidates.append((spec.split(":")[0], "built-in", _import(spec)))
            except Exception as exc:
                raise PluginLoadError(f"built-in plugin {spec!r} failed to import: {exc}") from exc
        for ep in entry_points(group=hookspecs.PROJECT):
            dist = ep.dist.name if ep.dist else "?"
            try:
                candidates.append((ep.name, f"entry point {ep.value} ({dist})", ep.load()))
            except Exception as exc:
                # An installed plugin that silently didn't load means lost points: stop.
                raise PluginLoadError(
                    f"plugin {ep.name!r} from {dist} failed to load ({ep.value}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        for name, obj in extra:
            candidates.append((name, "given", obj))

        sources: dict[str, str] = {}
        for name, source, candidate in candidates:
            if name in sources:
                raise PluginLoadError(
                    f"two plugins are named {name!r}: {sources[name]} and {source}; a plugin's name (the left "
                    "of its entry point) must be unique: uninstall one or rename it")
            sources[name] = source
            table = getattr(candidate, "table", None)
            if table is None and source.startswith("entry point"):
                raise PluginLoadError(
                    f"plugin {name!r} from {source} has no table: a plugin is turned on by its table in "
                    "plugins.toml, so give its class a `table` (and a `settings_schema`); see "
                    "docs/writing-a-plugin.md")
            if table is not None:
                if table in owned:
                    raise PluginLoadError(
                        f"plugins {owned[table]!r} and {name!r} both claim [{table}] in plugins.toml"
                    )
                owned[table] = name
            obj = _instantiate(candidate, config, name)
            if obj is None:
                continue
            try:
                self.pm.register(obj, name=name)
            except Exception as exc:
                raise PluginLoadError(f"plugin {name!r} could not be registered: {exc}") from exc
            self.loaded.append(LoadedPlugin(name, source, table, obj))

        unowned = [t for t in config.present_tables() if t not in owned]
        if unowned:
            filename = str(config.path or "plugins.toml")
            known = ", ".join(sorted(owned)) or "none"
            raise ConfigError(
                "\n".join(
                    f"{filename} [{t}]: no plugin owns this table (known tables: {known})"
                    for t in unowned
                )
            )
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(self._unknown_hooks(exc.plugin)) from exc
        for plugin in self.loaded:
            plugin.hooks = sorted(
                h.name for h in self.pm.get_hookcallers(plugin.obj) or () if h.name.startswith("regulars_")
            )
        self.connectors = self._collect_connectors()

    def _unknown_hooks(self, plugin: Any) -> str:
        """What check_pending found, by the plugin's name (not its repr), with
        the hook it was probably meant to be."""
        name = self.pm.get_name(plugin) or repr(plugin)
        specs = [h for h in vars(hookspecs) if h.startswith(f"{hookspecs.PROJECT}_")]
        problems = []
        for caller in self.pm.get_hookcallers(plugin) or ():
            if not caller.has_spec():
                close = difflib.get_close_matches(caller.name, specs, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{caller.name!r}{hint}")
        return f"plugin {name!r} implements unknown hook {', '.join(problems)}: see engine/hookspecs.py"

    def _collect_connectors(self) -> dict:
        connectors: dict[str, Any] = {}
        providers: dict[str, str] = {}
        for name, result in self.collect("regulars_register_connectors"):
            for connector in result or ():
                channel = connector.channel
                if channel in connectors:
                    raise PluginLoadError(
                        f"plugins {providers[channel]!r} and {name!r} both register "
                        f"a connector for channel {channel!r}"
                    )
                connectors[channel] = connector
                providers[channel] = name
        return connectors

    def collect(self, hook: str, only: set[str] | None = None, **kwargs) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook`` in pluggy's order and return
        ``(plugin name, result)`` pairs for the non-None results. An exception
        is raised as ``PluginFailed`` naming the plugin."""
        caller = getattr(self.pm.hook, hook)
        results = []
        for impl in reversed(caller.get_hookimpls()):
            if only is not None and impl.plugin_name not in only:
                continue
            args = {k: kwargs[k] for k in impl.argnames}
            try:
                result = impl.function(**args)
            except (Exception, SystemExit) as exc:  # (sys.exit() in a plugin ends nothing but its event)
                raise PluginFailed(impl.plugin_name, hook, exc) from exc
            if result is not None:
                results.append((impl.plugin_name, result))
        return results
