"""Corpus-level MT metrics through sacrebleu: BLEU, chrF, chrF++, TER with their signatures.

Nothing here computes a metric by hand: scores come from `sacrebleu.metrics` objects and the
paired bootstrap test from `sacrebleu.significance.PairedTest` (what `sacrebleu -i A B --paired-bs` runs).

References are given as sacrebleu takes them: one stream (a list of lines, one per hypothesis) or a
list of streams for several references per sentence.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric
from sacrebleu.significance import PairedTest

from mt import MTError

METRICS: tuple[str, ...] = ("bleu", "chrf", "chrf++", "ter")
"""Metric ids accepted by `score` and `paired_bootstrap`."""

TOKENIZERS: tuple[str, ...] = tuple(BLEU.TOKENIZERS)
"""BLEU tokenizer names sacrebleu knows (some need extras or a download: ja-mecab, spm, flores*)."""

References = Sequence[str] | Sequence[Sequence[str]]


@dataclass(frozen=True)
class MetricResult:
    """One corpus score: `name` as sacrebleu prints it (BLEU, chrF2, TER), `text` its formatted line."""

    name: str
    score: float
    signature: str
    text: str


@dataclass(frozen=True)
class PairedResult:
    """One system's score under the paired bootstrap test.

    `mean` and `ci` are the bootstrap mean and the half-width of its 95% confidence interval
    (sacrebleu prints them as `mean ± ci`). `p_value` is None for the baseline (the first system).
    The signature carries the number of resamples (bs) and the seed.
    """

    name: str
    score: float
    mean: float
    ci: float
    p_value: float | None
    signature: str


def parse_metrics(spec: str) -> tuple[str, ...]:
    """'bleu, chrF' -> ('bleu', 'chrf'); unknown or no names are an MTError."""
    names = [part.strip().lower() for part in spec.split(",") if part.strip()]
    if not names:
        raise MTError(f"no metric given (choose from {', '.join(METRICS)})")
    for name in names:
        if name not in METRICS:
            raise MTError(f"unknown metric {name!r} (choose from {', '.join(METRICS)})")
    return tuple(dict.fromkeys(names))


def check_tokenizer(name: str | None) -> None:
    """An MTError unless `name` is None (sacrebleu's default, 13a) or one of TOKENIZERS."""
    if name is not None and name not in TOKENIZERS:
        raise MTError(f"unknown tokenizer {name!r} (choose from {', '.join(TOKENIZERS)})")


def score(
    hyps: Sequence[str],
    refs: References,
    metrics: Sequence[str] = ("bleu", "chrf", "ter"),
    tokenize: str | None = None,
    lowercase: bool = False,
    precision: int = 2,
) -> dict[str, MetricResult]:
    """Corpus scores of `hyps` against `refs`, keyed by metric id ('bleu', 'chrf', ...).

    `tokenize` is BLEU's tokenizer (default 13a); `lowercase` applies to BLEU and chrF
    (TER is case-insensitive by default in sacrebleu and stays so). `precision` is the
    number of digits in `text`.
    """
    streams = _ref_streams(refs)
    _check_lengths(hyps, streams)
    results = {}
    for metric_id, metric in _build_metrics(metrics, tokenize, lowercase).items():
        result = metric.corpus_score(list(hyps), streams)
        results[metric_id] = MetricResult(
            name=result.name,
            score=float(result.score),
            signature=metric.get_signature().format(),
            text=result.format(width=precision),
        )
    return results


def paired_bootstrap(
    systems: Mapping[str, Sequence[str]],
    refs: References,
    metrics: Sequence[str] = ("bleu", "chrf"),
    n_samples: int = 1000,
    seed: int = 12345,
    tokenize: str | None = None,
    lowercase: bool = False,
) -> dict[str, dict[str, PairedResult]]:
    """Paired bootstrap resampling (Koehn 2004) of every system against the first one (the baseline).

    Returns {system: {metric id: PairedResult}} in the order given. The test is sacrebleu's own
    (`PairedTest(test_type='bs')`). One guard on top: a system whose output is identical to the
    baseline's gets p = 1.0; sacrebleu's test reports the smallest p-value, 1/(n_samples+1), there
    because every resampled difference is exactly zero.
    """
    if len(systems) < 2:
        raise MTError(f"the paired test needs at least two systems, got {len(systems)}")
    if n_samples < 1:
        raise MTError(f"the number of bootstrap samples must be at least 1, got {n_samples}")
    if seed < 1:
        raise MTError(f"the bootstrap seed must be a positive integer, got {seed}")
    streams = _ref_streams(refs)
    for hyps in systems.values():
        _check_lengths(hyps, streams)
    built = _build_metrics(metrics, tokenize, lowercase)
    named = [(name, list(hyps)) for name, hyps in systems.items()]
    with _sacrebleu_seed(seed):
        test = PairedTest(named, built, references=streams, test_type="bs", n_samples=n_samples)
    signatures, table = test()
    return _paired_results(systems, list(built), signatures, table)


def _paired_results(
    systems: Mapping[str, Sequence[str]],
    metric_ids: list[str],
    signatures: Mapping[str, object],
    table: Mapping[str, list],
) -> dict[str, dict[str, PairedResult]]:
    """Reshape PairedTest's {'System': [...], 'BLEU': [Result, ...]} into per-system results."""
    # PairedTest keys its columns by sacrebleu's metric names, in the order the metrics were given.
    columns = [key for key in table if key != "System"]
    baseline = list(systems.values())[0]
    out: dict[str, dict[str, PairedResult]] = {}
    for row, (name, hyps) in enumerate(systems.items()):
        identical = row > 0 and list(hyps) == list(baseline)
        out[name] = {}
        for metric_id, column in zip(metric_ids, columns):
            r = table[column][row]
            out[name][metric_id] = PairedResult(
                name=column,
                score=float(r.score),
                mean=float(r.mean),
                ci=float(r.ci),
                p_value=1.0 if identical else (None if r.p_value is None else float(r.p_value)),
                signature=signatures[column].format(),
            )
    return out


@contextlib.contextmanager
def _sacrebleu_seed(seed: int) -> Iterator[None]:
    """sacrebleu's PairedTest reads its seed only from $SACREBLEU_SEED; set it for the call, then restore."""
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = old


def _build_metrics(metrics: Sequence[str], tokenize: str | None, lowercase: bool) -> dict[str, Metric]:
    if not metrics:
        raise MTError(f"no metric given (choose from {', '.join(METRICS)})")
    check_tokenizer(tokenize)
    built: dict[str, Metric] = {}
    for metric_id in dict.fromkeys(m.lower() for m in metrics):
        if metric_id == "bleu":
            built[metric_id] = _bleu(tokenize, lowercase)
        elif metric_id == "chrf":
            built[metric_id] = CHRF(lowercase=lowercase)
        elif metric_id == "chrf++":
            built[metric_id] = CHRF(word_order=2, lowercase=lowercase)
        elif metric_id == "ter":
            built[metric_id] = TER()
        else:
            raise MTError(f"unknown metric {metric_id!r} (choose from {', '.join(METRICS)})")
    return built


def _bleu(tokenize: str | None, lowercase: bool) -> BLEU:
    try:
        return BLEU(tokenize=tokenize, lowercase=lowercase)
    except (RuntimeError, ImportError, OSError) as e:
        # ja-mecab / ko-mecab need extras; spm / flores* download a model
        detail = " ".join(str(e).split())
        raise MTError(f"tokenizer {tokenize!r} is not available: {detail}") from None


def _ref_streams(refs: References) -> list[list[str]]:
    """One stream (list of str) or several (list of lists) -> list of streams."""
    if isinstance(refs, str):
        raise MTError("references must be a list of lines, not one string")
    if not refs:
        raise MTError("no reference lines")
    if all(isinstance(r, str) for r in refs):
        return [list(refs)]  # type: ignore[arg-type]
    if any(isinstance(stream, str) for stream in refs):
        raise MTError("references mix lines and lists of lines")
    return [list(stream) for stream in refs]


def _check_lengths(hyps: Sequence[str], streams: list[list[str]]) -> None:
    if not hyps:
        raise MTError("no hypothesis lines")
    for i, stream in enumerate(streams, 1):
        if len(stream) != len(hyps):
            which = "the reference" if len(streams) == 1 else f"reference {i}"
            raise MTError(f"the hypothesis has {len(hyps)} lines but {which} has {len(stream)}")
