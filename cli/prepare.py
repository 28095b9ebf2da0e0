"""Prepare a recipe's training corpora once: train SentencePiece on a streamed sample, clean and encode every pair in parallel, write memory-mapped token files and a manifest. Train on it with `--set data.prepared=DIR` (or `data.prepared: DIR` in the recipe); `mt train` without it prepares into RUN_DIR/prepared by itself.

Cleaning rules, each counted in DIR/manifest.json and printed at the end: invalid UTF-8 and lines over 4 MiB (an error naming file and line, or skipped with data.skip_invalid: true), an empty side, source identical to target (data.drop_identical), a side over data.max_len tokens, a length ratio over data.max_ratio, exact duplicate pairs within a corpus (data.dedup).

With train.init_from (fine-tuning), the corpus is encoded with that run's vocabulary instead of a new one.

Subword regularization (vocab.sampling_alpha > 0, unigram vocabularies): each pair is written vocab.sampling_segmentations times, segmentations sampled from its 64 best; training draws one per pair each epoch."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

EPILOG = """\b
Examples:
  mt prepare recipes/multi30k/transformer.yaml --out data/prepared/m30k
  mt train recipes/multi30k/transformer.yaml --set data.prepared=data/prepared/m30k
  mt prepare big.yaml --out /data/wmt14-prep --set data.workers=16 --set vocab.max_sentences=2000000
  mt prepare big.yaml --out /data/wmt14-prep --force     # inputs changed: prepare again in place
  mt prepare recipes/multi30k/transformer-cpu.yaml --out data/prepared/m30k-sampled --set vocab.sampling_alpha=0.2
\b
Several corpora with weights (recipe):
  data:
    corpus: files
    train:
      - {src: europarl.en, tgt: europarl.de, weight: 1}
      - {src: news.en, tgt: news.de, weight: 3, name: news}
    temperature: 1      # epoch share of corpus i: (w_i n_i)^(1/T) / sum_j (w_j n_j)^(1/T)
"""


def prepare(
    recipe: Path = typer.Argument(..., help="YAML recipe (its data and vocab sections are used)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (new, or empty)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe value: --set data.max_len=100 (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace the prepared corpus already in --out."),
) -> None:
    from rich.console import Console

    from mt.config import load_config
    from mt.data.prepare import prepare as run_prepare
    from mt.train.data import parent_vocab

    cfg = load_config(recipe, overrides)
    console = Console(stderr=True)
    # fine-tuning (train.init_from): the corpus is encoded with the parent run's vocabulary, as
    # `mt train` prepares it by itself; a vocabulary of its own could not be trained on
    vocab_from = parent_vocab(cfg) if cfg.train.init_from else None
    manifest = run_prepare(cfg, out, log=lambda msg: console.print(f"[bold]mt[/bold] {msg}", highlight=False),
                           vocab_from=vocab_from, force=force)
    for c in manifest["corpora"]:
        counts = c["counts"]
        dropped = {k: v for k, v in counts.items() if k not in ("read", "kept") and v}
        console.print(f"[bold]mt[/bold]   {c['name']}: {counts['kept']} of {counts['read']} pairs kept"
                      + (f" (dropped: {', '.join(f'{k} {v}' for k, v in dropped.items())})" if dropped else ""),
                      highlight=False)
    console.print(f"[bold]mt[/bold] wrote {out}", highlight=False)
