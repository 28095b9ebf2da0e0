"""The decoding options of the command lines, derived from their declarations beside DecodeConfig
(mt.config.decode_option), so that an option declared there is an option here too:

    @decoding_options("translate")
    def translate(model: ..., **options) -> None:   # options: the decoding options, None when not given

gives the command one Typer option per decoding option that front end takes (a bool one as
--name/--no-name), and, where the front end takes a beam size, the search switches --greedy and
--sample. Typer reads a command's parameters from `inspect.signature`, which a `__signature__` sets.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Literal, Optional

import typer

from mt import MTError
from mt.config import SEARCH_SWITCHES, DecodeConfig, SettingError, decode_options


#: what --checkpoint takes, said once for mt translate, score, serve and export
CHECKPOINT_HELP = ("best (the run's best validated weights: the average of its last checkpoints where "
                   "train.average_last's validated better), last, or a .safetensors file (e.g. from `mt average`)")


def flag(name: str) -> str:
    """A decoding option's flag: decode.max_len_a is --max-len-a."""
    return "--" + name.replace("_", "-")


def check_at_least_one(**values: int | None) -> None:
    """The command line's counts (--threads 0 ...), each None (not given) or >= 1, named by their flags."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise MTError(f"{flag(name)} must be >= 1, got {value}")


def option_parameters(front_end: str, cls: type | None = None) -> list[inspect.Parameter]:
    """One keyword parameter (a Typer option, default None: the run's setting) per decoding option of
    `cls` (default DecodeConfig) that `front_end` takes, in declaration order; the search switches
    (False by default) follow the beam size."""
    params = []
    for name, tp, option in decode_options(cls, front_end):
        flags = (f"{flag(name)}/--no-{flag(name)[2:]}",) if tp is bool else (flag(name),)
        help = option.help.replace("[", "\\[") + f" \\[default: the run's decode.{name}]"
        kind = str if typing.get_origin(tp) is Literal else tp  # checked by DecodeConfig, in its words
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                                        default=typer.Option(None, *flags, *filter(None, [option.short]), help=help)))
        if name == "beam":
            params += [inspect.Parameter(switch, inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                         default=typer.Option(False, flag(switch), help=help))
                       for switch, help in SEARCH_SWITCHES.items()]
    return params


def decoding_options(front_end: str, cls: type | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator: the command's `**options` become the decoding options of `front_end`."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = signature.replace(parameters=fixed + option_parameters(front_end, cls))
        return command

    return decorate


def decode_config(base: DecodeConfig, greedy: bool = False, sample: bool = False, **options: Any) -> DecodeConfig:
    """A run's decode settings with the command line's decoding options (None: not given), combined and
    checked by DecodeConfig.with_options, an MTError naming the options by their flags."""
    try:
        return base.with_options(greedy=greedy, sample=sample, **options)
    except SettingError as e:
        raise MTError(e.worded(flag)) from None
