"""Command-line options derived from a pydantic model's fields.

``ModelOptions(TrainConfig)`` holds one option per scalar field of the model and of the models
nested in it: the name is the field name with dashes (``num_blocks`` -> ``--num-blocks``), the
help the field's description and its default, the type the annotation (a ``Literal`` gives
choices, a ``bool`` a ``--x/--no-x`` flag). ``ModelOptions.command`` adds them to a typer
command, which then receives the options given on the command line as nested ``overrides``
(``{"encoder": {"dim": 64}, "epochs": 3}``), ready to ``merge`` over a config file's fields::

    OPTIONS = ModelOptions(TrainConfig, exclude={"encoder.kind"}, aliases={"encoder.num_blocks": "--blocks"})
    app.command("train")(OPTIONS.command(train))  # def train(overrides: dict[str, Any], ...) -> None
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel

SCALAR_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class FieldOption:
    """The option of one scalar field: its path through the nested models and its names."""

    path: tuple[str, ...]  # ("encoder", "num_blocks")
    names: tuple[str, ...]  # ("--num-blocks", "--blocks"); the first is the field's own
    annotation: Any  # the value type: int, float, str, bool or a Literal
    help: str

    @property
    def param(self) -> str:
        """The command's parameter name of the option."""
        return "__".join(self.path)

    def parameter(self) -> inspect.Parameter:
        """A keyword-only typer parameter whose value is None when the option is not given."""
        names = self.names
        if self.annotation is bool:
            names = tuple(f"{name}/--no-{name.removeprefix('--')}" for name in names)
        option = typer.Option(*names, help=self.help)
        annotation = Annotated[self.annotation | None, option]  # type: ignore[name-defined]  # built at runtime
        return inspect.Parameter(self.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


class ModelOptions:
    """The options of a pydantic model's scalar fields (nested models' fields included)."""

    def __init__(
        self,
        model: type[BaseModel],
        *,
        exclude: set[str] | frozenset[str] = frozenset(),
        aliases: Mapping[str, str] | None = None,
        defaults: BaseModel | None = None,
    ) -> None:
        """``exclude`` and ``aliases`` name fields by dotted path (``encoder.kind``); an alias is
        an extra option name. Defaults shown in the help come from ``defaults`` (else ``model()``).
        Where nested models share a field name, the shallowest field keeps the plain name and the
        others are prefixed with their model's field name (``--encoder-dropout``)."""
        aliases = dict(aliases or {})
        found = list(_scalar_fields(model, defaults if defaults is not None else model(), ()))
        unknown = (set(exclude) | set(aliases)) - {".".join(path) for path, _, _ in found}
        if unknown:
            raise ValueError(f"{model.__name__} has no scalar fields {sorted(unknown)}")
        found = [(path, kind, text) for path, kind, text in found if ".".join(path) not in exclude]
        names: dict[tuple[str, ...], str] = {}
        for path, _, _ in sorted(found, key=lambda field: len(field[0])):  # the shallowest first
            name = _option_name(path[-1:])
            if name in names.values():
                name = _option_name(path[-2:])
            if name in names.values():
                raise ValueError(f"{model.__name__}: two fields would both be {name}")
            names[path] = name
        self.model = model
        self.options = [
            FieldOption(path, (names[path], *filter(None, [aliases.get(".".join(path))])), kind, text)
            for path, kind, text in found
        ]

    def overrides(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The options given (not None) in ``values`` (parameter name -> value), as nested fields."""
        nested: dict[str, Any] = {}
        for option in self.options:
            value = values.get(option.param)
            if value is None:
                continue
            target = nested
            for key in option.path[:-1]:
                target = target.setdefault(key, {})
            target[option.path[-1]] = value
        return nested

    def command(self, function: Callable[..., None]) -> Callable[..., None]:
        """``function`` with an option per field added to its own; it is called with the given
        ones as ``overrides=`` (see ``overrides``) and its other parameters as they were."""
        signature = inspect.signature(function, eval_str=True)
        own = [parameter for parameter in signature.parameters.values() if parameter.name != "overrides"]
        clash = {parameter.name for parameter in own} & {option.param for option in self.options}
        if clash:
            raise ValueError(f"{function.__name__} has parameters named like fields: {sorted(clash)}")
        params = {option.param for option in self.options}

        def command(**values: Any) -> None:
            fields = {name: values.pop(name) for name in params if name in values}
            function(overrides=self.overrides(fields), **values)

        command.__name__, command.__qualname__ = function.__name__, function.__qualname__
        command.__doc__, command.__module__ = function.__doc__, function.__module__
        parameters = [*own, *(option.parameter() for option in self.options)]
        command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return command


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (a config file's fields) with ``overrides`` on top, nested mappings merged."""
    merged = dict(base)
    for key, value in overrides.items():
        below = merged.get(key)
        merged[key] = merge(below, value) if isinstance(below, Mapping) and isinstance(value, Mapping) else value
    return merged


def _option_name(path: tuple[str, ...]) -> str:
    return "--" + "-".join(path).replace("_", "-")


def _scalar_fields(
    model: type[BaseModel], defaults: BaseModel, prefix: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Any, str]]:
    """(path, value type, help) of every scalar field, nested models' in their place."""
    for name, info in model.model_fields.items():
        default = getattr(defaults, name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _scalar_fields(annotation, default, (*prefix, name))
            continue
        value_type = _scalar_type(annotation)
        if value_type is None:
            continue
        shown = "" if default is None else f" (default: {default})"
        yield (*prefix, name), value_type, f"{(info.description or '').strip()}{shown}".strip()


def _scalar_type(annotation: Any) -> Any:
    """The option type of a field annotation (``X | None`` -> X), or None when it is no scalar."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) != 1:
            return None
        annotation = args[0]
    if annotation in SCALAR_TYPES:
        return annotation
    if get_origin(annotation) is Literal and all(isinstance(value, str) for value in get_args(annotation)):
        return annotation
    return None
