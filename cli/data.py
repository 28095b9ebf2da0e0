"""`mt data`: fetch known corpora (checked by sha256) from a mirror folder or the network."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mt.data.download import KNOWN_CORPORA, Corpus, fetch, get_corpus, known_corpora_text

EPILOG = """Examples:

  mt data list

  mt data get multi30k --dest data/multi30k --mirror ../shared/data/multi30k --langs en,de

  mt data get tatoeba --dest data/tatoeba --mirror ../shared/data
"""

GET_EPILOG = (
    "Each file is checked by sha256 and written atomically: a file already in DEST with the right checksum "
    "is kept; otherwise it is copied from MIRROR/NAME (or MIRROR/CORPUS-FOLDER/NAME, so the parent folder of "
    "several corpora works too), otherwise downloaded. A wrong checksum is an error and leaves nothing behind."
    "\n\n"
    "Download location: --url, else the environment variable MT_MULTI30K_URL (multi30k) or MT_TATOEBA_URL "
    "(tatoeba), else upstream. It is the folder URL that holds the files (multi30k: train.en.gz ...; "
    "tatoeba: fra-eng.zip)."
    "\n\n"
    """Examples:

  mt data get multi30k --dest data/multi30k --mirror ../shared/data/multi30k --langs en,de

  mt data get multi30k --dest data/multi30k    (all 4 languages, from GitHub)

  mt data get tatoeba --dest data/tatoeba --mirror ../shared/data

  MT_MULTI30K_URL=http://localhost:8000 mt data get multi30k --dest data/multi30k
"""
)

app = typer.Typer(
    help=f"Fetch known corpora, checked by sha256: {known_corpora_text()}.",
    epilog=EPILOG,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def url_env_var(corpus: Corpus) -> str:
    """MT_MULTI30K_URL, MT_TATOEBA_URL: overrides the corpus' download location."""
    return f"MT_{corpus.name.upper()}_URL"


def _parse_langs(langs: str | None) -> list[str] | None:
    if langs is None:
        return None
    return [lang.strip() for lang in langs.split(",") if lang.strip()]


@app.command("get", epilog=GET_EPILOG)
def get(
    corpus: str = typer.Argument(..., help=f"Corpus name: {', '.join(KNOWN_CORPORA)}.", show_default=False),
    dest: Path | None = typer.Option(
        None, "--dest", "-d", help="Folder for the files (created if missing). Default: data/CORPUS.",
        show_default=False,
    ),
    mirror: Path | None = typer.Option(
        None, "--mirror", "-m", help="Folder searched for the files before the network.", show_default=False
    ),
    langs: str | None = typer.Option(
        None, "--langs", "-l", help="Comma-separated languages, e.g. en,de (multi30k). Default: all.",
        show_default=False,
    ),
    url: str | None = typer.Option(
        None, "--url", help="Download from this folder URL instead of upstream "
        "(default: $MT_MULTI30K_URL / $MT_TATOEBA_URL when set).", show_default=False,
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines on stderr."),
) -> None:
    """Fetch a known corpus into DEST (progress on stderr, the file paths on stdout)."""
    spec = get_corpus(corpus)
    folder = dest if dest is not None else Path("data") / spec.name
    base_url = url or os.environ.get(url_env_var(spec)) or None
    paths = fetch(spec.name, folder, mirror=mirror, langs=_parse_langs(langs), progress=not quiet, base_url=base_url)
    names = {p.name for p in paths}
    shown = [lang for lang in spec.langs if any(lang in f.langs for f in spec.files if f.name in names)]
    typer.echo(f"{spec.name} ({', '.join(shown)}): {len(paths)} file(s) in {folder}")
    for path in paths:
        typer.echo(str(path))


@app.command("list", epilog="Examples:\n\n  mt data list")
def list_corpora() -> None:
    """List the known corpora: name, languages, files and terms of use."""
    for spec in KNOWN_CORPORA.values():
        typer.echo(f"{spec.name}\tlanguages: {', '.join(spec.langs)}\tfiles: {len(spec.files)}")
        typer.echo(f"\t{spec.about}")
        typer.echo(f"\tupstream: {spec.base_url} (override with --url or ${url_env_var(spec)})")


@app.command("synthetic", epilog="Examples:\n\n  mt data synthetic --dest data/synthetic --test 300")
def synthetic(
    dest: Path = typer.Option(Path("data/synthetic"), "--dest", "-d", help="Folder for train/valid/test .src/.tgt files."),
    train: int = typer.Option(20000, "--train", help="Training pairs."),
    valid: int = typer.Option(300, "--valid", help="Validation pairs."),
    test: int = typer.Option(300, "--test", help="Test pairs."),
    seed: int = typer.Option(1, "--seed", help="Generator seed (the demo recipe uses 1)."),
    max_clauses: int = typer.Option(2, "--max-clauses", help="Longest sentence, in clauses."),
) -> None:
    """Write the built-in generated language pair (the data of `make demo`) as plain text files."""
    from mt import MTError
    from mt.data import synthetic as gen
    from mt.files import atomic_write_text

    if min(train, valid, test) < 0 or max_clauses < 1:
        raise MTError("sizes must be >= 0 and --max-clauses >= 1")
    parts = gen.splits(train, valid, test, seed, max_clauses)
    for name, pairs in parts.items():
        atomic_write_text(dest / f"{name}.src", "".join(s + "\n" for s, _ in pairs))
        atomic_write_text(dest / f"{name}.tgt", "".join(t + "\n" for _, t in pairs))
    typer.echo(f"synthetic pair: {train}/{valid}/{test} train/valid/test pairs in {dest}")
