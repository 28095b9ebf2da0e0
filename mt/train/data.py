"""What a run trains on: the prepared training corpus (data.prepared, or RUN_DIR/prepared made by
the main process on the first start), the run's vocabularies, the token batches, the validation set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mt import MTError
from mt.config import Config
from mt.data.batching import TokenBatcher
from mt.data.dataset import MANIFEST, PreparedData, sha256_file
from mt.data.prepare import check_prepared, prepare
from mt.data.text import load_corpus
from mt.data.vocab import Vocab
from mt.files import atomic_copy
from mt.rundir import CONFIG, PREPARED, is_run_dir, vocab_files
from mt.train.world import World


@dataclass
class TrainData:
    """The vocabularies, the training batches and the validation set of a run."""

    src_vocab: Vocab
    tgt_vocab: Vocab
    batcher: TokenBatcher
    valid: tuple[list[str], list[str]] | None  # validation text (BLEU / chrF)
    valid_batcher: TokenBatcher | None  # its pairs that fit the model (validation loss)


def max_len(cfg: Config) -> int:
    """data.max_len, capped so that a sentence plus eos (bos) fits a Transformer's positions."""
    positions = getattr(cfg.model, "max_positions", None)
    return min(cfg.data.max_len, positions - 1) if positions else cfg.data.max_len


def load_train_data(cfg: Config, run_dir: Path, world: World, info: Callable[[str], None],
                    resume: bool = False) -> TrainData:
    """The run's data, each process its own view of the same files; `info` reports what was found."""
    t = cfg.train
    prepared = _prepared(cfg, run_dir, world, info, resume)
    src_vocab, tgt_vocab = _vocabs(cfg, run_dir, prepared, world)
    batcher = TokenBatcher(prepared.src, prepared.tgt, t.batch_tokens, t.seed,
                           corpora=[(c["start"], c["end"], float(c["weight"])) for c in prepared.corpora],
                           temperature=cfg.data.temperature, max_len=max_len(cfg),
                           segmentations=int(prepared.manifest.get("segmentations", 1)))
    if len(batcher) < world.size:
        raise MTError(f"only {len(batcher)} batches for {world.size} processes; use a smaller train.batch_tokens")
    shares = ", ".join(f"{c['name']} {n}" for c, n in zip(prepared.corpora, batcher.shares))
    info(f"{prepared.manifest['pairs']} training pairs from {prepared.root}"
         + (f" ({batcher.skipped} longer than {max_len(cfg)} tokens skipped)" if batcher.skipped else "")
         + (f"; per epoch: {shares}" if len(prepared.corpora) > 1 else "")
         + f"; vocab {len(src_vocab)}/{len(tgt_vocab)}")
    valid = load_corpus(cfg.data, t.seed, splits=("valid",)).get("valid")
    valid, valid_batcher = _validation_set(cfg, valid, src_vocab, tgt_vocab, info)
    return TrainData(src_vocab, tgt_vocab, batcher, valid, valid_batcher)


def _prepared(cfg: Config, run_dir: Path, world: World, info: Callable[[str], None], resume: bool) -> PreparedData:
    """data.prepared, or RUN_DIR/prepared, prepared here by the main process on the first start."""
    root = Path(cfg.data.prepared) if cfg.data.prepared else run_dir / PREPARED
    if world.is_main and not cfg.data.prepared and not (root / MANIFEST).is_file():
        own = vocab_files(run_dir, cfg.vocab.joint)[: 1 if cfg.vocab.joint else 2]
        # a run started before prepared corpora existed keeps its vocabulary
        vocab = own if own[0].is_file() else parent_vocab(cfg) if cfg.train.init_from else None
        prepare(cfg, root, log=info, vocab_from=vocab, force=resume)
    world.barrier()
    prepared = PreparedData.open(root)
    check_prepared(prepared, cfg)
    return prepared


def _validation_set(cfg: Config, valid: tuple[list[str], list[str]] | None, src_vocab: Vocab, tgt_vocab: Vocab,
                    info: Callable[[str], None]) -> tuple[tuple[list[str], list[str]] | None, TokenBatcher | None]:
    if valid is None:
        return None, None
    t = cfg.train
    vs, vt = valid
    if t.valid_max_sentences:
        vs, vt = vs[: t.valid_max_sentences], vt[: t.valid_max_sentences]
    # the validation loss needs a teacher-forced pass, so it skips pairs the model has no
    # positions for; BLEU / chrF cover every sentence (the translator cuts long inputs)
    positions = getattr(cfg.model, "max_positions", None)
    ids = [(a, b) for a, b in zip(src_vocab.encode_batch(vs), tgt_vocab.encode_batch(vt))
           if not positions or max(len(a), len(b)) < positions]
    if len(ids) < len(vs):
        info(f"validation loss over {len(ids)} of {len(vs)} pairs (the others exceed model.max_positions)")
    return (vs, vt), TokenBatcher.from_lists([a for a, _ in ids], [b for _, b in ids], t.batch_tokens, 0)


def _vocabs(cfg: Config, run_dir: Path, prepared: PreparedData, world: World) -> tuple[Vocab, Vocab]:
    """The run's SentencePiece model(s): those of the prepared corpus, copied into the run
    directory on the first start and the same file on every resume."""
    files = vocab_files(run_dir, cfg.vocab.joint)
    theirs = prepared.vocab_files()
    if init := cfg.train.init_from:
        parent = parent_vocab(cfg)
        if [sha256_file(p) for p in parent] != [sha256_file(p) for p in theirs]:
            raise MTError(f"train.init_from: {init} has another vocabulary than the prepared corpus {prepared.root}; "
                          "fine-tuning needs the same vocabulary (prepare with the parent's)")
    for mine, source in zip(files, theirs):
        if not mine.is_file():
            if world.is_main:
                atomic_copy(source, mine)
        elif sha256_file(mine) != prepared.manifest["vocab"][source.name]:
            raise MTError(f"{mine} is not the vocabulary {prepared.root} was prepared with; "
                          "a run keeps the vocabulary it started with")
    world.barrier()
    src_vocab = Vocab(files[0])
    return src_vocab, (src_vocab if files[1] == files[0] else Vocab(files[1]))


def parent_vocab(cfg: Config) -> tuple[Path, ...]:
    """train.init_from's SentencePiece model(s), after checking they fit this recipe."""
    from mt.config import load_config

    init = Path(cfg.train.init_from)
    parent_run = init if init.is_dir() else init.parent
    if not is_run_dir(parent_run):
        raise MTError(f"train.init_from: {init} is not a run directory (no {CONFIG})")
    parent_cfg = load_config(parent_run / CONFIG)
    for key in ("joint", "size", "model_type"):
        theirs, ours = getattr(parent_cfg.vocab, key), getattr(cfg.vocab, key)
        if theirs != ours:
            raise MTError(
                f"train.init_from: the vocabulary differs ({parent_run} has vocab.{key}={theirs}, "
                f"this recipe {ours}); fine-tuning needs the same vocabulary"
            )
    files = vocab_files(parent_run, parent_cfg.vocab.joint)
    return files[:1] if parent_cfg.vocab.joint else files
