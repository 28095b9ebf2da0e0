"""Score translations against references with sacrebleu: BLEU, chrF, chrF++, TER.

Files hold one detokenised sentence per line (UTF-8, plain or .gz; '-' reads stdin).

Several --hyp files are compared in one table; the first is the baseline for --paired-bs.

Each score comes with its sacrebleu signature: report it together with the number.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import typer

from mt import MTError
from mt.metrics import (
    METRICS,
    MetricResult,
    PairedResult,
    check_tokenizer,
    paired_bootstrap,
    parse_metrics,
    score,
)

EPILOG = """\
[bold]Examples[/bold]

  mt evaluate --hyp out.de --ref newstest.de

  mt translate -m runs/demo < test.en | mt evaluate --hyp - --ref test.de --metrics bleu,chrf,ter

  mt evaluate --hyp base.de --hyp new.de --ref test.de --paired-bs --json > scores.json

  mt evaluate --hyp out.de --ref ref1.de --ref ref2.de --tokenize intl --lowercase
"""

BS_SEED = 12345  # sacrebleu's default seed, so results match `sacrebleu --paired-bs`


def evaluate(
    hyp: list[str] = typer.Option(
        [], "--hyp", metavar="FILE",
        help="Hypotheses, one per line ('-' = stdin). Required; repeat to compare systems, the first is the baseline.",
    ),
    ref: list[str] = typer.Option(
        [], "--ref", metavar="FILE", help="References, line-aligned with the hypotheses. Required; repeat for several references.",
    ),
    metrics: str = typer.Option("bleu,chrf", "--metrics", metavar="LIST", help=f"Comma-separated, from: {', '.join(METRICS)}."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (scores, signatures) instead of a table."),
    paired_bs: bool = typer.Option(False, "--paired-bs", help="Paired bootstrap test of each --hyp against the first."),
    bs_samples: int = typer.Option(1000, "--bs-samples", metavar="N", help="Bootstrap resamples for --paired-bs."),
    tokenize: str | None = typer.Option(None, "--tokenize", metavar="NAME", help="BLEU tokenizer (sacrebleu name; default 13a)."),
    lowercase: bool = typer.Option(False, "--lowercase", help="Case-insensitive BLEU and chrF (TER is case-insensitive already)."),
    precision: int = typer.Option(2, "--precision", metavar="DIGITS", help="Digits after the decimal point in the table."),
) -> None:
    metric_ids = _check_options(hyp, ref, metrics, paired_bs, bs_samples, tokenize, precision)
    refs = [_read_nonempty(path) for path in ref]
    systems = {_display(path): _read_nonempty(path) for path in hyp}
    _check_line_counts(systems, dict(zip(map(_display, ref), refs)))
    scores = {name: score(lines, refs, metric_ids, tokenize, lowercase, precision) for name, lines in systems.items()}
    paired = None
    if paired_bs:
        paired = paired_bootstrap(systems, refs, metric_ids, bs_samples, BS_SEED, tokenize, lowercase)
    if json_out:
        typer.echo(json.dumps(_to_json(scores, paired, ref, metric_ids, bs_samples), indent=2, ensure_ascii=False))
    elif sys.stdout.isatty():
        _print_rich(scores, paired, precision, bs_samples)
    else:
        _print_plain(scores, paired, precision, bs_samples)


def _check_options(
    hyp: list[str], ref: list[str], metrics: str, paired_bs: bool, bs_samples: int, tokenize: str | None, precision: int
) -> tuple[str, ...]:
    """Everything that can be checked before reading a file; returns the metric ids."""
    if not hyp:
        raise MTError("give at least one --hyp FILE ('-' for stdin)")
    if not ref:
        raise MTError("give at least one --ref FILE")
    for path in set(hyp):
        if hyp.count(path) > 1:
            raise MTError(f"{path} is given twice as --hyp")
    if (hyp + ref).count("-") > 1:
        raise MTError("stdin ('-') can be read only once")
    if paired_bs and len(hyp) < 2:
        raise MTError("--paired-bs compares systems: give at least two --hyp files")
    if bs_samples < 1:
        raise MTError(f"--bs-samples must be at least 1, got {bs_samples}")
    if not 0 <= precision <= 10:
        raise MTError(f"--precision must be between 0 and 10, got {precision}")
    check_tokenizer(tokenize)
    return parse_metrics(metrics)


def _display(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _read_nonempty(path: str) -> list[str]:
    from mt.data.text import iter_lines, read_lines

    lines = list(iter_lines(sys.stdin.buffer, "<stdin>")) if path == "-" else read_lines(path)
    if not lines:
        raise MTError(f"{_display(path)}: empty file")
    return lines


def _check_line_counts(systems: dict[str, list[str]], refs: dict[str, list[str]]) -> None:
    first_ref, ref_lines = next(iter(refs.items()))
    for name, lines in list(systems.items()) + list(refs.items()):
        if len(lines) != len(ref_lines):
            raise MTError(f"{name} has {len(lines)} lines but {first_ref} has {len(ref_lines)}")


def _to_json(
    scores: dict[str, dict[str, MetricResult]],
    paired: dict[str, dict[str, PairedResult]] | None,
    ref: list[str],
    metric_ids: tuple[str, ...],
    bs_samples: int,
) -> dict:
    systems = []
    for name, results in scores.items():
        entry = {mid: asdict(r) for mid, r in results.items()}
        if paired is not None:
            for mid, p in paired[name].items():
                entry[mid]["bootstrap"] = {"mean": p.mean, "ci": p.ci, "p_value": p.p_value, "signature": p.signature}
        systems.append({"name": name, "scores": entry})
    out: dict = {"refs": [_display(r) for r in ref], "metrics": list(metric_ids), "systems": systems}
    if paired is not None:
        out["paired_bs"] = {"baseline": systems[0]["name"], "samples": bs_samples, "seed": BS_SEED}
    return out


def _table(
    scores: dict[str, dict[str, MetricResult]], paired: dict[str, dict[str, PairedResult]] | None, precision: int
) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, signature lines) shared by the plain and the rich output."""
    first = next(iter(scores.values()))
    suffix = " (mean ± 95% CI)" if paired else ""
    header = ["system"] + [r.name + suffix for r in first.values()]
    rows = []
    for i, (name, results) in enumerate(scores.items()):
        label = f"baseline: {name}" if paired and i == 0 else name
        rows.append([label] + [_cell(mid, r, paired, name, precision) for mid, r in results.items()])
    sig_source = next(iter(paired.values())) if paired else first
    signatures = [f"{r.name} signature: {r.signature}" for r in sig_source.values()]
    return header, rows, signatures


def _cell(
    mid: str, r: MetricResult, paired: dict[str, dict[str, PairedResult]] | None, name: str, precision: int
) -> str:
    if paired is None:
        return f"{r.score:.{precision}f}"
    p = paired[name][mid]
    text = f"{p.score:.{precision}f} ({p.mean:.{precision}f} ± {p.ci:.{precision}f})"
    if p.p_value is not None:
        text += f" p={p.p_value:.4f}" + ("*" if p.p_value < 0.05 else "")
    return text


def _footnote(paired: dict | None, bs_samples: int) -> str | None:
    if paired is None:
        return None
    return f"p: paired bootstrap against the baseline, {bs_samples} resamples, seed {BS_SEED}; * p < 0.05"


def _print_plain(scores: dict, paired: dict | None, precision: int, bs_samples: int) -> None:
    header, rows, signatures = _table(scores, paired, precision)
    for row in [header] + rows:
        typer.echo("\t".join(row))
    for line in signatures + [_footnote(paired, bs_samples) or ""]:
        if line:
            typer.echo(line)


def _print_rich(scores: dict, paired: dict | None, precision: int, bs_samples: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    header, rows, signatures = _table(scores, paired, precision)
    table = Table(*header)
    for column in table.columns[1:]:
        column.justify = "right"
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console = Console()
    console.print(table)
    for line in signatures + [_footnote(paired, bs_samples) or ""]:
        if line:
            console.print(Text(line, style="dim"))
