"""The `mt` command: a thin Typer layer over the mt library. One file per command."""

from __future__ import annotations

import os
import sys

import typer

try:  # typer >= 0.20 vendors click; older releases raise click's own classes
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException, UsageError

from mt import MTError, __version__

app = typer.Typer(
    name="mt",
    help="Neural machine translation: train, translate and evaluate from the shell.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    epilog="""[bold]Examples[/bold]

  mt data synthetic --dest data/synthetic

  mt train recipes/demo.yaml --run-dir runs/demo

  mt translate -m runs/demo --beam 5 < data/synthetic/test.src > test.hyp

  mt evaluate --hyp test.hyp --ref data/synthetic/test.tgt
""",
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
    from mt.cli import average, data, evaluate, export, importer, prepare, score, serve, train, translate

    app.command("prepare", help=prepare.__doc__, epilog=prepare.EPILOG)(prepare.prepare)
    app.command("train", help=train.__doc__, epilog=train.EPILOG)(train.train)
    app.command("translate", help=translate.__doc__, epilog=translate.EPILOG)(translate.translate)
    app.command("evaluate", help=evaluate.__doc__, epilog=evaluate.EPILOG)(evaluate.evaluate)
    app.command("score", help=score.__doc__, epilog=score.EPILOG)(score.score)
    app.command("average", help=average.__doc__, epilog=average.EPILOG)(average.average)
    app.command("serve", help=serve.__doc__, epilog=serve.EPILOG)(serve.serve)
    app.command("export", help=export.__doc__, epilog=export.EPILOG)(export.export)
    app.add_typer(data.app, name="data")
    app.add_typer(importer.app, name="import")


def fail(message: str, code: int = 1) -> None:
    """One clear line on stderr and a non-zero exit."""
    sys.stderr.write(f"mt: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main() -> None:
    if sys.argv[1:2] == ["train"]:  # glibc's allocator as training needs it (mt.device.training_allocator_env)
        from mt.device import reexec_for_training

        reexec_for_training()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        _main()
        return
    # A worker of a distributed run (torchrun) leaves without interpreter shutdown. DDP's reducer keeps
    # the gloo process group, and so its worker threads, alive after destroy_process_group(); a worker
    # thread that drops the last reference to a tensor of the final collective while the interpreter
    # shuts down must take the GIL, which Python answers with pthread_exit, and the C++ unwinding ends
    # in std::terminate: SIGABRT after a finished run ("terminate called without an active
    # exception"), depending on thread timing. Everything the run writes is closed by now.
    try:
        _main()
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException:  # MT_DEBUG=1 lets errors through: the traceback, as Python would print it
        import traceback

        traceback.print_exc()
        code = 1
    if not isinstance(code, int):  # SystemExit("message") or SystemExit(None), as Python exits for them
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _main() -> None:
    _register()
    debug = os.environ.get("MT_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except UsageError as e:
        # bad command-line syntax: one line, and where to look
        if not e.format_message().strip():  # no arguments at all: the help was printed
            raise SystemExit(e.exit_code)
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        fail(f"{e.format_message()}{where}", 2)
    except typer.Abort:
        fail("aborted", 130)
    except ClickException as e:
        fail(e.format_message(), e.exit_code)
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
