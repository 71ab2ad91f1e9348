"""Configuration: ``plugins.toml`` for the programme, the environment for secrets,
storage and broker.

``plugins.toml`` has one table per plugin (``[rules.points]``,
``[connectors.shopify]``); a plugin is on when its table is present. The
``[engine]`` table belongs to the engine itself. Every table is validated by the
marshmallow schema its owner declares; a wrong key or value stops the start with
the file, the table, the key and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from marshmallow import RAISE, Schema, ValidationError, fields, validate

DEFAULT_CONFIG_NAME = "plugins.toml"
DEFAULT_DATABASE_NAME = "regulars.sqlite3"
#: groups whose sub-tables each belong to one plugin
PLUGIN_GROUPS = ("rules", "connectors", "plugins")


class ConfigError(Exception):
    """plugins.toml or the environment is wrong; the message says where and how."""


class DecimalString(fields.Decimal):
    """A Decimal read from TOML: strings and integers exactly, floats by their
    shortest repr (``1.1`` is 1.1, not 1.100000000000000088...)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, float):
            value = repr(value)
        try:
            return super()._deserialize(value, attr, data, **kwargs)
        except InvalidOperation as exc:  # pragma: no cover - marshmallow wraps it
            raise self.make_error("invalid") from exc


class StrictSchema(Schema):
    """Base for settings schemas: unknown keys are refused, not ignored."""

    class Meta:
        unknown = RAISE


def _known_zone(name: str) -> None:
    """An IANA time zone name, or a ValidationError saying what is expected."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {name!r}: use an IANA name such as 'Europe/Prague' or 'UTC'") from None


class EngineSettingsSchema(StrictSchema):
    currency = fields.String(
        load_default="EUR", validate=validate.Regexp(r"^[A-Z]{3}$", error="a 3-letter ISO code")
    )
    #: used to read phone numbers written without a country code
    default_country = fields.String(
        load_default=None, allow_none=True, validate=validate.Regexp(r"^[A-Z]{2}$")
    )
    timezone = fields.String(load_default="UTC", validate=_known_zone)
    #: what one point is worth in money, for the dashboard's points liability
    #: (default: the best fixed_amount reward of the catalogue, value ÷ cost)
    point_value = DecimalString(load_default=None, allow_none=True, places=None,
                                validate=validate.Range(min=0, max=1_000_000))


_COLOUR = validate.Regexp(r"^#[0-9A-Fa-f]{6}$", error="a colour like #1F6FEB")


class BrandingSchema(StrictSchema):
    """``[branding]``: how the pages (the customer's card, the counter, the
    dashboard) look."""

    #: the shop's name, on every page
    name = fields.String(load_default="regulars", validate=validate.Length(min=1, max=80))
    #: the main colour (buttons, the card) and the accent (stamps, highlights)
    primary = fields.String(load_default="#1F6FEB", validate=_COLOUR)
    accent = fields.String(load_default="#F2A900", validate=_COLOUR)
    #: a logo: an https:// URL, or an image file beside plugins.toml (served at /branding/logo)
    logo = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    #: the pages' language when the browser asks for none we have: en, cs or sk
    locale = fields.String(load_default="en", validate=validate.OneOf(["en", "cs", "sk"]))


def named_tables(
    item: type[Schema], noun: str, example: str, name_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
) -> type[Schema]:
    """A schema for a table whose keys are names, each a sub-table validated by
    ``item`` (``[rules.stamps.coffee]``, ``[rules.subscriptions.vip]``). It loads
    to ``{name: settings}``, and reports errors as ``coffee.required`` with the
    keys a sub-table takes."""
    known = ", ".join(sorted(item._declared_fields))

    def name_the_keys(messages):
        if not isinstance(messages, dict):
            return messages
        return {key: [f"unknown key (expected one of: {known})"] if value == ["Unknown field."] else value
                for key, value in messages.items()}

    class NamedTables(StrictSchema):
        entries = fields.Dict(
            keys=fields.String(validate=validate.Regexp(
                name_pattern, error=f"a {noun} name is letters, digits, '_', '.' or '-' (up to 64)")),
            values=fields.Nested(item),
        )

        def load(self, data, **kwargs):
            try:
                entries = super().load({"entries": data}, **kwargs)["entries"]
            except ValidationError as exc:
                messages = exc.messages.get("entries", exc.messages) if isinstance(exc.messages, dict) else exc.messages
                if isinstance(messages, dict):
                    messages = {name: name_the_keys(value.get("value", value) if isinstance(value, dict) else value)
                                for name, value in messages.items()}
                raise ValidationError(messages) from None
            if not entries:
                raise ValidationError({"(table)": [f"add at least one {noun}, e.g. {example}"]})
            return entries

    return NamedTables


@dataclass
class Config:
    """What the engine is started with."""

    path: Path | None
    tables: dict[str, Any] = field(default_factory=dict)
    database_url: str = ""
    broker_url: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    branding: dict[str, Any] = field(default_factory=dict)
    #: ``[notify]`` (engine.notify) with its ``secret``, or None when absent
    notify: dict[str, Any] | None = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def currency(self) -> str:
        return self.engine["currency"]

    def table(self, dotted: str) -> Any | None:
        """The table at a dotted path (``"rules.points"``), or None if absent."""
        node: Any = self.tables
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def present_tables(self) -> list[str]:
        """Every table that some plugin must own, as dotted paths."""
        found = []
        for key, value in self.tables.items():
            if key in ("engine", "branding", "notify"):
                continue
            if key in PLUGIN_GROUPS and isinstance(value, dict):
                found.extend(f"{key}.{sub}" for sub in value)
            else:
                found.append(key)
        return found

    def error(self, table: str, messages: Any, known: list[str] | None = None) -> ConfigError:
        filename = str(self.path or DEFAULT_CONFIG_NAME)
        return ConfigError(format_errors(filename, table, messages, known=known))


def format_errors(
    filename: str, table: str, messages: Any, prefix: str = "", known: list[str] | None = None
) -> str:
    """marshmallow's nested error dict as one line per key:
    ``plugins.toml [rules.points] per_unit: Not a valid number.``; ``known``
    (the table's keys) is named after an unknown key, so the fix is in the message."""
    lines: list[str] = []
    if known is None:
        expected = "check its spelling and the plugin's documentation"
    elif known:
        expected = f"expected one of: {', '.join(known)}"
    else:
        expected = "this table takes no keys"

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list) and node and all(isinstance(m, str) for m in node):
            what = " ".join(node)
            if what == "Unknown field.":
                what = f"unknown key ({expected})"
            lines.append(f"{filename} [{table}] {path or '(table)'}: {what}")
        else:
            lines.append(f"{filename} [{table}] {path}: {node}")

    walk(messages, prefix)
    return "\n".join(lines)


def validate_table(config: Config, table: str, schema: type[Schema] | Schema | None) -> dict:
    """Validate one plugin's table with its schema; raise ConfigError naming the
    file, the table and the key."""
    data = config.table(table)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise config.error(table, {"(table)": ["must be a table"]})
    if schema is None:
        if data:
            raise config.error(table, {key: ["Unknown field."] for key in data}, known=[])
        return {}
    instance = schema() if isinstance(schema, type) else schema
    try:
        return instance.load(data)
    except ValidationError as exc:
        known = sorted(f.data_key or name for name, f in instance.load_fields.items())
        raise config.error(table, exc.messages, known=known) from None


def resolve_database_url(base_dir: Path, env: dict[str, str]) -> str:
    url = env.get("REGULARS_DATABASE_URL", "").strip()
    if not url:
        return f"sqlite:///{(base_dir / DEFAULT_DATABASE_NAME).resolve()}"
    # psycopg 3 is the driver we ship; accept the plain URL users copy from their host.
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def load_config(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Config:
    """Read plugins.toml (``path``, else ``REGULARS_CONFIG``, else ./plugins.toml)
    and the environment. A missing file is an error naming where it looked."""
    env = dict(os.environ if env is None else env)
    chosen = path or env.get("REGULARS_CONFIG") or DEFAULT_CONFIG_NAME
    config_path = Path(chosen).expanduser().resolve()
    if not config_path.is_file():
        raise ConfigError(
            f"no configuration at {config_path}: run `regulars init` to write a starter "
            "plugins.toml, or name one with --config or REGULARS_CONFIG"
        )
    try:
        tables = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    return config_from_tables(tables, config_path, env)


def config_from_tables(
    tables: dict[str, Any], path: Path | None = None, env: dict[str, str] | None = None
) -> Config:
    """A Config from already-parsed tables (tests and `simulate` use this)."""
    env = dict(os.environ if env is None else env)
    config = Config(path=path, tables=tables)
    config.engine = validate_table(config, "engine", EngineSettingsSchema)
    config.branding = validate_table(config, "branding", BrandingSchema)
    if config.table("notify") is not None:
        from engine.notify import SECRET_ENV, NotifySchema

        config.notify = validate_table(config, "notify", NotifySchema)
        secret = env.get(SECRET_ENV, "")
        if len(secret) < 16:
            raise config.error("notify", {"(table)": [
                f"set {SECRET_ENV} to a random string of 16 characters or more: notifications are signed with it"
                + (" (the one set is shorter)" if secret else "")]})
        config.notify["secret"] = secret
    config.database_url = resolve_database_url(config.base_dir, env)
    config.broker_url = env.get("REGULARS_BROKER_URL") or None
    return config


def to_decimal(value: Any) -> Decimal:
    """A Decimal from a TOML value, floats by their repr."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
