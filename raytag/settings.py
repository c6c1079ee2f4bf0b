"""Settings defined once: the fields of a frozen dataclass are its command-line options.

A field declared with :func:`setting` carries its help text beside its default. Commands
(click, :class:`SettingsCommand`) and scripts (argparse, :func:`add_arguments`) generate
their options from the fields and build the dataclass back with :func:`build`, so a default
or a help text has one home and the command line cannot drift from the code it configures.

How a field becomes an option:

- its name, ``--like-this``, unless ``flag`` names the option otherwise;
- ``bool``: a ``--x/--no-x`` switch; ``bool | None`` may also stay unset, which means
  "decide automatically";
- ``int``, ``float`` or ``str`` (``| None`` too): a value of that type; a field without a
  default is a required option;
- any other type: text that ``parse`` turns into the field's value. ``parse`` also sees the
  default, and with ``multiple`` the option repeats and ``parse`` gets every value given.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

import click

Settings = TypeVar("Settings")

_PLAIN = (bool, int, float, str)


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Any = MISSING,
    flag: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    multiple: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring)."""
    metadata = {"help": help, "flag": flag, "parse": parse, "multiple": multiple}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def require_at_least(settings: Any, minimum: float, *names: str, optional: bool = False) -> None:
    """Raises ValueError for the first field of ``names`` below ``minimum``; with
    ``optional``, None (automatic) passes. Called from a settings class's
    ``__post_init__``, so a value of no use fails as a usage error before any work."""
    for name in names:
        value = getattr(settings, name)
        if optional and value is None:
            continue
        if value < minimum:
            automatic = "None (automatic) or " if optional else ""
            raise ValueError(f"{name} must be {automatic}>= {minimum} (got {value})")


def none_if_zero(value: int | None) -> int | None:
    """For an option whose 0 on the command line stands for the field's None."""
    return value or None


def json_pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    """For a repeated ``key=value`` option: values are JSON where they parse (numbers,
    lists), text otherwise."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r} is not key=value")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


@dataclass(frozen=True)
class Option:
    """One field as the command line sees it."""

    name: str  # the field's, and the parsed value's key
    flag: str  # "--like-this"; a switch's other half is "--no-like-this"
    kind: type  # what the command line gives: bool, int, float or str
    default: Any  # what an absent option gives; MISSING: the option is required
    help: str
    multiple: bool
    parse: Callable[[Any], Any] | None

    def field_value(self, given: Any) -> Any:
        """The field's value for what the command line gave."""
        if self.multiple:
            given = tuple(given or ())
        if self.parse is None:
            return given
        try:
            return self.parse(given)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint=self.flag) from error


def options(
    settings: type, *, exclude: Iterable[str] = (), defaults: Mapping[str, Any] | None = None
) -> list[Option]:
    """The options of a dataclass's fields, in field order; ``defaults`` replaces the
    fields' own for a caller with other needs (a benchmark, say)."""
    hints = typing.get_type_hints(settings)
    skipped, defaults = set(exclude), defaults or {}
    unknown = (skipped | set(defaults)) - set(hints)
    if unknown:
        raise TypeError(f"{settings.__name__} has no fields {sorted(unknown)}")
    return [
        _option(f, hints[f.name], defaults)
        for f in dataclasses.fields(settings)
        if f.name not in skipped
    ]


def _option(field: dataclasses.Field, hint: Any, defaults: Mapping[str, Any]) -> Option:
    meta = field.metadata
    kind = _plain_type(hint)
    if kind is None and meta.get("parse") is None:
        raise TypeError(f"{field.name}: a {hint} field needs a parse for its command-line text")
    multiple = meta.get("multiple", False)
    default = defaults.get(field.name, field.default)
    if default is MISSING and field.default_factory is not MISSING:
        if not multiple:
            raise TypeError(f"{field.name}: a default factory needs a multiple option")
        default = ()
    return Option(
        name=field.name,
        flag=meta.get("flag") or "--" + field.name.replace("_", "-"),
        kind=kind or str,
        default=default,
        help=meta.get("help", ""),
        multiple=multiple,
        parse=meta.get("parse"),
    )


def _plain_type(hint: Any) -> type | None:
    """``int`` for ``int`` or ``int | None``; None for any type the command line cannot give."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = rest[0] if len(rest) == 1 else None
    return hint if hint in _PLAIN else None


def build(settings: type[Settings], given: Mapping[str, Any], **fixed: Any) -> Settings:
    """The dataclass from parsed options (click's keyword arguments or argparse's
    namespace as a dict); ``fixed`` sets fields the caller decides itself."""
    values = {
        option.name: option.field_value(given[option.name])
        for option in options(settings)
        if option.name in given and option.name not in fixed
    }
    return settings(**values, **fixed)


class SettingsCommand(click.Command):
    """A click command with an option per field of a settings dataclass, generated when
    first needed (to parse or to show help), so that listing the commands imports none of
    the modules that define settings (some load torch and Ray).

    ``settings``: the dataclass as "module:Name"; ``before``: the declared parameter that
    the generated options precede (default: they come after every declared one).
    """

    def __init__(self, *args: Any, settings: str, before: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings, self.before = settings, before
        self.generated = False

    def settings_class(self) -> type:
        module, _, name = self.settings.partition(":")
        return getattr(importlib.import_module(module), name)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self.generated:
            names = [param.name for param in self.params]
            at = names.index(self.before) if self.before else len(names)
            self.params[at:at] = [_click_option(o) for o in options(self.settings_class())]
            self.generated = True
        return super().get_params(ctx)


def _click_option(option: Option) -> click.Option:
    switch = option.kind is bool
    if option.default is MISSING:
        presence: dict[str, Any] = {"required": True}
    elif option.multiple:
        presence = {"multiple": True}  # absent: no values
    else:
        presence = {"default": option.default}
    return click.Option(
        [f"{option.flag}/--no-{option.flag[2:]}" if switch else option.flag, option.name],
        type=None if switch else option.kind,
        show_default=True,
        help=option.help,
        **presence,
    )


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type,
    *,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add an argument per field to an argparse parser (or group); see :func:`options`."""
    for option in options(settings, exclude=exclude, defaults=defaults):
        common: dict[str, Any] = {"dest": option.name, "help": option.help.replace("%", "%%")}
        if option.default is MISSING:
            common["required"] = True
        else:
            common["default"] = [] if option.multiple else option.default
        if option.kind is bool:
            parser.add_argument(option.flag, action=argparse.BooleanOptionalAction, **common)
        else:
            action = "append" if option.multiple else "store"
            parser.add_argument(option.flag, type=option.kind, action=action, **common)
