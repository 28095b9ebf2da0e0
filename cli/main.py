"""The `mt` command: a thin Typer layer over the mt library. One file per command."""

from __future__ import annotations

import os
import sys

import typer

from mt import MTError, __version__

app = typer.Typer(
    name="mt",
    help="Neural machine translation: train, translate and evaluate from the shell.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Neural machine translation: train, translate and evaluate from the shell."""


def _register() -> None:
    from mt.cli import average, data, evaluate, train, translate

    app.command("train", help=train.__doc__, epilog=train.EPILOG)(train.train)
    app.command("translate", help=translate.__doc__, epilog=translate.EPILOG)(translate.translate)
    app.command("evaluate", help=evaluate.__doc__, epilog=evaluate.EPILOG)(evaluate.evaluate)
    app.command("average", help=average.__doc__, epilog=average.EPILOG)(average.average)
    app.add_typer(data.app, name="data")


def fail(message: str, code: int = 1) -> None:
    """One clear line on stderr and a non-zero exit."""
    sys.stderr.write(f"mt: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main() -> None:
    _register()
    debug = os.environ.get("MT_DEBUG") == "1"
    try:
        app()
    except MTError as e:
        if debug:
            raise
        fail(str(e))
    except KeyboardInterrupt:
        if debug:
            raise
        fail("interrupted", 130)
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly like other Unix tools
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        raise SystemExit(141)
    except MemoryError:
        if debug:
            raise
        fail("out of memory (try a smaller --batch-tokens)")
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if debug:
            raise
        fail(f"{type(e).__name__}: {e} (set MT_DEBUG=1 for the traceback)")


if __name__ == "__main__":
    main()
