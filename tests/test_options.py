"""Each decoding option is declared once, beside its DecodeConfig field (mt.config.decode_option); the
recipe's checks, the options of `mt translate`, `mt score` and `mt serve`, and the request model of
POST /translate are derived from the declarations. These tests check that the front ends agree with
the declarations, and that an option added to them reaches every front end."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import typer
from typer.testing import CliRunner

from mt import MTError
from mt.cli import score, serve, translate
from mt.cli.options import decode_config, decoding_options, flag
from mt.config import SEARCH_SWITCHES, DecodeConfig, SettingError, decode_option, decode_options

RECIPE = {f.name for f in dataclasses.fields(DecodeConfig)}


def one_command_app(command) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app


def click_command(command) -> typer.main.TyperCommand:
    return typer.main.get_command(one_command_app(command))


def declared(front_end: str, cls: type | None = None) -> set[str]:
    names = {name for name, _, _ in decode_options(cls, front_end)}
    return names | set(SEARCH_SWITCHES) if "beam" in names else names


def test_every_recipe_field_is_declared() -> None:
    assert {name for name, _, _ in decode_options()} == RECIPE
    # the front ends' sets as issue 22 lists them (a change here is a change of the command lines / API)
    assert declared("score") == {"len_penalty", "alpha", "batch_tokens", "alignment_layer", "placeholders"}
    assert declared("serve") == {"batch_tokens"}
    # decode.protect (regular expressions) is the recipe's alone
    assert declared("translate") == RECIPE - {"search", "protect"} | set(SEARCH_SWITCHES)
    assert declared("request") == RECIPE - {"search", "batch_tokens", "protect"} | set(SEARCH_SWITCHES)


@pytest.mark.parametrize("front_end, command", [("translate", translate.translate), ("score", score.score),
                                                ("serve", serve.serve)])
def test_command_line_options_are_the_declared_ones(front_end: str, command) -> None:
    params = {p.name: p for p in click_command(command).params}
    decoding = {name for name in params if name in RECIPE | set(SEARCH_SWITCHES)}
    assert decoding == declared(front_end)  # none missing, none declared by hand beside the declaration
    for name, tp, option in decode_options(None, front_end):
        param = params[name]
        assert param.default is None  # not given: the run's setting
        assert flag(name) in param.opts
        assert (param.secondary_opts == [f"--no-{flag(name)[2:]}"]) == (tp is bool)
        assert option.help.split(" (")[0] in param.help
    assert "-b" in params["beam"].opts if front_end == "translate" else "beam" not in params


def test_request_fields_are_the_declared_ones() -> None:
    pytest.importorskip("fastapi")
    from mt.serve.app import TranslateRequest

    fields = set(TranslateRequest.model_fields)
    assert fields & (RECIPE | set(SEARCH_SWITCHES)) == declared("request")
    schema = TranslateRequest.model_json_schema()["properties"]
    for name, _, option in decode_options(None, "request"):
        (typed, _none) = schema[name]["anyOf"]
        bounds = {"minimum": option.ge, "exclusiveMinimum": option.gt, "maximum": option.le}
        assert {k: typed.get(k) for k in bounds} == bounds, name
        assert option.help in schema[name]["description"]  # the OpenAPI page describes each field


def test_bounds_speak_the_front_ends_words() -> None:
    for options, message in (({"beam": 0}, "--beam must be >= 1, got 0"),
                             ({"topp": 1.5}, "--topp must be in (0, 1], got 1.5"),
                             ({"seed": -1}, "--seed must be in [0, 9223372036854775807], got -1"),
                             ({"max_len_a": -0.5}, "--max-len-a must not be negative, got -0.5"),
                             ({"temperature": 0.0}, "--temperature must be > 0, got 0.0")):
        with pytest.raises(MTError) as e:
            decode_config(DecodeConfig(), **options)
        assert str(e.value) == message
    with pytest.raises(SettingError, match=r"^decode\.seed must be in \[0, 9223372036854775807\], got -1$"):
        DecodeConfig(seed=-1)


@dataclass(frozen=True)
class WithWindow(DecodeConfig):
    """DecodeConfig with one more declared option, taken by every front end."""

    window: int = decode_option(3, "A made-up window (tokens).", ge=1, takes=("translate", "score", "serve", "request"))


def test_an_option_declared_once_reaches_the_recipe() -> None:
    assert WithWindow().window == 3
    with pytest.raises(SettingError, match=r"^decode\.window must be >= 1, got 0$"):
        WithWindow(window=0)
    assert WithWindow().with_options(window=7, beam=None).window == 7


@pytest.mark.parametrize("front_end", ["translate", "score", "serve"])
def test_an_option_declared_once_reaches_the_command_lines(front_end: str) -> None:
    seen: dict = {}

    @decoding_options(front_end, WithWindow)
    def command(name: str = typer.Option("x", "--name"), **options) -> None:
        seen.update(options, decode=decode_config(WithWindow(), **options))

    runner, app = CliRunner(), one_command_app(command)
    result = runner.invoke(app, ["--window", "5"])
    assert result.exit_code == 0, result.output
    assert seen["window"] == 5 and seen["decode"].window == 5
    assert "--window" in runner.invoke(app, ["--help"]).output
    result = runner.invoke(app, ["--window", "0"])
    assert isinstance(result.exception, MTError) and str(result.exception) == "--window must be >= 1, got 0"


def test_an_option_declared_once_reaches_the_requests() -> None:
    pytest.importorskip("fastapi")
    from pydantic import ValidationError

    from mt.config import ServeLimits
    from mt.serve.app import request_decode, request_model

    model = request_model(WithWindow)
    assert "window" in model.model_json_schema()["properties"]
    assert request_decode(WithWindow(), model.model_validate({"text": "a", "window": 9}), ServeLimits()).window == 9
    assert request_decode(WithWindow(), model.model_validate({"text": "a"}), ServeLimits()).window == 3  # the run's
    with pytest.raises(ValidationError, match="window"):
        model.model_validate({"text": "a", "window": 0})
