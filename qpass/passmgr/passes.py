"""Passes: the `Pass` base class, `PassResult`, and the registry behind `@register_pass`.

A pass is a small frozen dataclass with a class-level kebab-case `name`, its options as typed
fields (they become pipeline and CLI options) and one `run(graph, ctx) -> PassResult` method.
Passes may change the graph they are given in place; `changed` must say whether they did.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import re
import typing
from typing import Any, ClassVar, Optional

from qpass.errors import PassError
from qpass.ir.graph import Graph

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
ENTRY_POINT_GROUP = "qpass.passes"
BUILTIN_PACKAGE = "qpass.passes"                 # found by name: the core never imports a pass itself


@dataclasses.dataclass
class PassResult:
    graph: Graph
    changed: bool


def option(default, doc: str = ""):
    """Declare a pass option with its default and a one-line description."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


class Pass:
    """Base of all passes; subclass it, set `name`, add options as fields, implement `run`."""

    name: ClassVar[str] = ""

    def run(self, graph: Graph, ctx) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError(f"pass '{self.name}' does not implement run()")

    # ---- options
    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else []

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in cls.options()}

    @classmethod
    def from_options(cls, raw: dict[str, str]) -> "Pass":
        """Instantiate from string option values (as written in a pipeline), checking names and types."""
        types = cls.option_types()
        values = {}
        for key, text in raw.items():
            field = key.replace("-", "_")
            if field not in types:
                close = difflib.get_close_matches(field, types, n=2)
                known = ", ".join(n.replace("_", "-") for n in types) or "none"
                hint = f" Did you mean {' or '.join(c.replace('_', '-') for c in close)}?" if close else ""
                raise PassError(f"pass '{cls.name}' has no option '{key}'.{hint} Its options: {known}.")
            values[field] = _convert(cls.name, key, text, types[field])
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise PassError(f"pass '{cls.name}': bad options {raw}: {e}") from None

    def non_default_options(self) -> dict[str, Any]:
        out = {}
        for f in self.options():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
            value = getattr(self, f.name)
            if value != default:
                out[f.name.replace("_", "-")] = value
        return out

    def __str__(self) -> str:
        return format_pass(self)


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    text = str(value)
    return f'"{text}"' if re.search(r'[,{}\[\]\s"]', text) else text


def format_pass(p: Pass) -> str:
    options = p.non_default_options()
    if not options:
        return p.name
    return p.name + "{" + ",".join(f"{k}={_format_value(v)}" for k, v in options.items()) + "}"


def _convert(pass_name: str, key: str, text: str, hint) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:   # Optional[T]
        if text in ("none", "None", ""):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            return int(text, 0)
        if hint is float:
            return float(text)
        if hint is str:
            return text
        if origin in (list, tuple):
            items = text[1:-1].split(",") if text.startswith("[") and text.endswith("]") else text.split(";")
            items = [s.strip() for s in items if s.strip()]
            item_type = args[0] if args else str
            return [_convert(pass_name, key, s, item_type) for s in items]
        if origin is typing.Literal:
            if text not in args:
                raise ValueError(f"expected one of {', '.join(map(str, args))}")
            return text
    except ValueError as e:
        raise PassError(f"pass '{pass_name}': option {key}={text!r} is not a valid "
                        f"{getattr(hint, '__name__', hint)}: {e}") from None
    raise PassError(f"pass '{pass_name}': option {key} has an unsupported type {hint}")


def describe_type(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "|".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is typing.Union:
        return " | ".join(describe_type(a) for a in typing.get_args(hint) if a is not type(None)) + "?"
    if typing.get_origin(hint) in (list, tuple):
        return f"list[{describe_type(typing.get_args(hint)[0])}]"
    return getattr(hint, "__name__", str(hint))


class PassRegistry:
    """Name -> pass class. Built-in passes and entry-point plugins are found on first use."""

    def __init__(self):
        self._passes: dict[str, type[Pass]] = {}
        self._discovered = False

    def register(self, cls: type[Pass]) -> type[Pass]:
        self.discover()   # built-ins first, so a clash always blames the newcomer
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not _KEBAB.match(name):
            raise PassError(f"pass class {cls.__qualname__} needs a kebab-case `name` such as 'fold-constants', "
                            f"got {name!r}")
        existing = self._passes.get(name)
        if existing is not None and existing is not cls:
            if (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__):
                self._passes[name] = cls       # the same module imported again (e.g. reloaded)
                return cls
            raise PassError(f"pass name '{name}' is taken by {existing.__module__}.{existing.__qualname__}; "
                            f"{cls.__module__}.{cls.__qualname__} must use another name")
        self._passes[name] = cls
        return cls

    def discover(self) -> None:
        """Import the built-in passes and every plugin module of the `qpass.passes` entry-point group."""
        if self._discovered:
            return
        self._discovered = True
        builtin = importlib.import_module(BUILTIN_PACKAGE)
        for module in pkgutil.iter_modules(builtin.__path__):
            importlib.import_module(f"{BUILTIN_PACKAGE}.{module.name}")
        from importlib.metadata import entry_points
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except Exception as e:
                raise PassError(f"cannot load pass plugin '{ep.name}' ({ep.value}) from entry-point group "
                                f"'{ENTRY_POINT_GROUP}': {type(e).__name__}: {e}") from e
            if isinstance(loaded, type) and issubclass(loaded, Pass) and loaded.name not in self._passes:
                self.register(loaded)

    def get(self, name: str) -> type[Pass]:
        self.discover()
        try:
            return self._passes[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._passes, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise PassError(f"unknown pass '{name}'.{hint} Run `qpass passes` to list the registered passes, "
                            "or load your own module with --load.") from None

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._passes)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._passes


REGISTRY = PassRegistry()


def register_pass(arg=None):
    """Register a pass class: `@register_pass` (uses cls.name) or `@register_pass("my-pass")`.

    The class becomes a frozen dataclass if it is not one already, so its annotated fields are
    its options. A name already taken by another class is an error.
    """
    def wrap(cls, name: Optional[str] = None):
        if name is not None:
            cls.name = name
        if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in cls.__dict__:
            cls = dataclasses.dataclass(frozen=True)(cls)
        return REGISTRY.register(cls)

    if isinstance(arg, str):
        return lambda cls: wrap(cls, arg)
    if arg is None:
        return wrap
    return wrap(arg)
