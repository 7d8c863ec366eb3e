"""infra.model_options: options from a pydantic model's scalar fields, given ones back as overrides."""

from __future__ import annotations

from typing import Literal

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from infra.model_options import ModelOptions, merge


class Inner(BaseModel):
    width: int = Field(8, description="Width.")
    rate: float = Field(0.5, description="Rate.")


class Outer(BaseModel):
    inner: Inner = Field(default_factory=lambda: Inner(width=4))
    rate: float = Field(0.1, description="Outer rate.")
    mode: Literal["fast", "slow"] = Field("fast", description="Mode.")
    verbose: bool = Field(False, description="Talk.")
    name: str | None = Field(None, description="A name.")
    sizes: tuple[int, ...] = Field((1, 2), description="Not a scalar: no option.")


def test_names_types_and_help_come_from_the_fields() -> None:
    options = {option.path: option for option in ModelOptions(Outer, aliases={"inner.width": "--w"}).options}
    assert set(options) == {("inner", "width"), ("inner", "rate"), ("rate",), ("mode",), ("verbose",), ("name",)}
    assert options[("inner", "width")].names == ("--width", "--w")
    assert options[("inner", "width")].help == "Width. (default: 4)"  # the parent's default instance
    assert options[("rate",)].names == ("--rate",)  # the shallower field keeps the plain name
    assert options[("inner", "rate")].names == ("--inner-rate",)
    assert options[("name",)].help == "A name."
    with pytest.raises(ValueError, match="no scalar fields"):
        ModelOptions(Outer, exclude={"inner.depth"})


def test_a_command_gets_the_given_options_as_overrides() -> None:
    seen: list[dict[str, object]] = []

    def command(overrides: dict[str, object], extra: int = 0) -> None:
        seen.append({"extra": extra, **overrides})

    app = typer.Typer()
    app.command("run")(ModelOptions(Outer, exclude={"inner.rate"}).command(command))
    app.command("other")(lambda: None)
    runner = CliRunner()
    assert runner.invoke(app, ["run"]).exit_code == 0
    result = runner.invoke(app, ["run", "--width", "3", "--mode", "slow", "--verbose", "--extra", "1"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["run", "--mode", "medium"]).exit_code == 2
    assert runner.invoke(app, ["run", "--inner-rate", "1"]).exit_code == 2  # excluded
    assert seen == [{"extra": 0}, {"extra": 1, "inner": {"width": 3}, "mode": "slow", "verbose": True}]


def test_merge_puts_overrides_over_nested_fields() -> None:
    base = {"inner": {"width": 2, "rate": 0.3}, "rate": 0.2}
    assert merge(base, {"inner": {"width": 5}, "mode": "slow"}) == {
        "inner": {"width": 5, "rate": 0.3},
        "rate": 0.2,
        "mode": "slow",
    }
    assert base["inner"] == {"width": 2, "rate": 0.3}
