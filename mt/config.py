"""Recipes: YAML files mapped onto frozen dataclasses.

Unknown keys are rejected with the dotted path of the key, and `--set a.b=v` overrides
any field (the value is parsed as YAML, so `--set train.lr=3e-4` gives a float).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml

from mt import MTError
from mt.files import atomic_write_text


class SettingError(MTError):
    """A setting out of range. The message names settings as a recipe does (decode.beam);
    `worded` names them as another front end does (the command line's --beam)."""

    def __init__(self, section: str, say: Callable[[Callable[[str], str]], str]) -> None:
        self.section, self._say = section, say  # say(name) -> the message; name(key) -> what to call a setting
        super().__init__(self.worded(lambda key: f"{section}.{key}"))

    def worded(self, name: Callable[[str], str]) -> str:
        return self._say(name)


@dataclass(frozen=True)
class TrainCorpus:
    """One training corpus of several (data.train): a pair of files or a known corpus, with a weight."""

    #: files: the pair src / tgt below; synthetic / multi30k / tatoeba: the known corpus's training split
    corpus: Literal["files", "synthetic", "multi30k", "tatoeba"] = "files"
    src: str | None = None
    tgt: str | None = None
    #: how much of each epoch comes from this corpus (see data.temperature for the formula)
    weight: float = 1.0
    #: a name for logs and the manifest [default: the corpus, or the source file's name]
    name: str | None = None

    def __post_init__(self) -> None:
        if self.corpus == "files" and not (self.src and self.tgt):
            raise MTError("data.train: a corpus of files needs src and tgt")
        if self.corpus != "files" and (self.src or self.tgt):
            raise MTError(f"data.train: corpus {self.corpus} takes no src / tgt files")
        if not self.weight > 0:
            raise MTError(f"data.train: weight must be > 0, got {self.weight}")

    @property
    def label(self) -> str:
        return self.name or (Path(self.src).name if self.corpus == "files" and self.src else self.corpus)


@dataclass(frozen=True)
class DataConfig:
    #: synthetic: the built-in generated pair; files: paths below; multi30k / tatoeba: known corpora
    corpus: Literal["synthetic", "files", "multi30k", "tatoeba"] = "synthetic"
    #: folder with the corpus files (relative paths below resolve against it); known corpora are
    #: downloaded here when missing
    data_dir: str = "data"
    #: folder searched for known corpus files before the network (e.g. ../shared/data/multi30k)
    mirror: str | None = None
    src_lang: str = "en"
    tgt_lang: str = "de"
    train_src: str | None = None
    train_tgt: str | None = None
    valid_src: str | None = None
    valid_tgt: str | None = None
    test_src: str | None = None
    test_tgt: str | None = None
    #: several training corpora with weights, instead of train_src / train_tgt (or the corpus's own
    #: training split); validation and test still come from the fields above
    train: tuple[TrainCorpus, ...] = ()
    #: corpus i (n_i pairs, weight w_i) gives round(N * (w_i n_i)^(1/T) / sum_j (w_j n_j)^(1/T)) pairs
    #: of every epoch of N = sum_j n_j pairs: T = 1 is in proportion to weight x size, a larger T
    #: flattens the mix towards equal shares (fairseq's multilingual temperature sampling)
    temperature: float = 1.0
    #: a directory written by `mt prepare` (memory-mapped token ids); without it, `mt train`
    #: prepares the recipe's corpora into RUN_DIR/prepared
    prepared: str | None = None
    #: training pairs longer than this many subword tokens (either side) are skipped
    max_len: int = 128
    #: training pairs whose longer side has more than max_ratio x the tokens of the shorter are
    #: skipped (0: no limit; 9 is the classic Moses clean-corpus-n rule)
    max_ratio: float = 9.0
    #: skip exact duplicate pairs (within each training corpus)
    dedup: bool = True
    #: skip pairs whose source is identical to their target (untranslated copies)
    drop_identical: bool = True
    #: lines with invalid UTF-8 or over the reader's byte limit: false: an error naming file and
    #: line; true: the pair is skipped and counted
    skip_invalid: bool = False
    #: in a training pair, each span that stands identically on both sides (a number, a name, a URL)
    #: is replaced on both by the same placeholder with this probability, so that the model learns
    #: to carry placeholders across (needs vocab.placeholders > 0)
    placeholder_prob: float = 0.3
    #: worker processes that encode while preparing (0: one per CPU core)
    workers: int = 0
    #: tatoeba has no official split: this many pairs (chosen by seed) become valid / test
    valid_size: int = 1000
    test_size: int = 1000
    #: synthetic corpus sizes and generator seed
    synthetic_train: int = 20000
    synthetic_valid: int = 300
    synthetic_test: int = 300
    synthetic_seed: int = 1
    synthetic_max_clauses: int = 2

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise MTError(f"data.max_len must be >= 1, got {self.max_len}")
        if self.max_ratio < 0 or 0 < self.max_ratio < 1:
            raise MTError(f"data.max_ratio must be 0 (no limit) or >= 1, got {self.max_ratio}")
        if not self.temperature > 0:
            raise MTError(f"data.temperature must be > 0, got {self.temperature}")
        if self.workers < 0:
            raise MTError(f"data.workers must be >= 0, got {self.workers}")
        if not 0 <= self.placeholder_prob <= 1:
            raise MTError(f"data.placeholder_prob must be in [0, 1], got {self.placeholder_prob}")
        if self.train and (self.train_src or self.train_tgt):
            raise MTError("data.train lists the training corpora: leave data.train_src / train_tgt unset")
        if self.corpus == "files" and not self.train and not (self.train_src and self.train_tgt):
            raise MTError("data.corpus=files needs data.train_src and data.train_tgt")
        for split in ("train", "valid", "test"):
            src, tgt = getattr(self, f"{split}_src"), getattr(self, f"{split}_tgt")
            if bool(src) != bool(tgt):
                given, missing = (f"{split}_src", f"{split}_tgt") if src else (f"{split}_tgt", f"{split}_src")
                raise MTError(f"data.{given} is set but data.{missing} is not: a parallel corpus needs both sides")


@dataclass(frozen=True)
class VocabConfig:
    size: int = 8000
    #: one SentencePiece model for both languages (needed to share source/target embeddings)
    joint: bool = True
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    character_coverage: float = 1.0
    #: sentences sampled from the training data to train SentencePiece
    max_sentences: int = 1_000_000
    #: characters outside the vocabulary become UTF-8 byte pieces (<0x..>) instead of the unknown
    #: piece, so a name in another script, an emoji or a rare symbol can be copied through and is
    #: decoded back into the character; adds 256 pieces. Runs trained before this option have
    #: vocabularies without byte pieces and keep working as they were (the SentencePiece model
    #: file, not this key, decides how an existing run segments)
    byte_fallback: bool = True
    #: placeholder pieces ⦅0⦆ ... ⦅N-1⦆ (user-defined symbols) that stand for spans passed through
    #: unchanged: URLs, e-mail addresses, numbers, words in characters the vocabulary lacks
    #: (mt.data.placeholders); 0: none (runs trained before placeholders existed). The SentencePiece
    #: model of a run, not this key, decides what decoding does; the shipped recipes set 8
    placeholders: int = 0
    #: separate source and target SentencePiece models numbered by one id table, so that the sides
    #: share ids (and may share embeddings): what `mt import huggingface` writes for a Marian model;
    #: mt's own vocabulary training never makes one, fine-tuning keeps it
    shared_ids: bool = False
    #: subword regularization (unigram models): training pairs are segmented by sampling from the
    #: 64 best segmentations with probability P^alpha (Kudo 2018; 0.1-0.5) instead of taking the
    #: best one; validation and decoding never sample. 0: off
    sampling_alpha: float = 0.0
    #: with sampling_alpha: sampled segmentations of each training pair written by `mt prepare`
    #: (the prepared tokens grow this many times); each epoch draws one per pair
    sampling_segmentations: int = 8

    def __post_init__(self) -> None:
        if self.size < 8:
            raise MTError(f"vocab.size must be >= 8, got {self.size}")
        if not 0 <= self.sampling_alpha <= 1:
            raise MTError(f"vocab.sampling_alpha must be in [0, 1], got {self.sampling_alpha}")
        if self.sampling_alpha and self.model_type != "unigram":
            raise MTError(f"vocab.sampling_alpha needs vocab.model_type unigram, not {self.model_type}")
        if not 1 <= self.sampling_segmentations <= 64:
            raise MTError(f"vocab.sampling_segmentations must be in [1, 64], got {self.sampling_segmentations}")
        if not 0 <= self.placeholders <= 100:
            raise MTError(f"vocab.placeholders must be in [0, 100], got {self.placeholders}")


@dataclass(frozen=True)
class TransformerConfig:
    arch: Literal["transformer"] = "transformer"
    d_model: int = 512
    heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    ff_dim: int = 2048
    #: the decoder's heads and feed-forward width where they differ from the encoder's (`heads`,
    #: `ff_dim`; Marian and Hugging Face configs name the two sides apart); unset: the same
    dec_heads: int | None = None
    dec_ff_dim: int | None = None
    dropout: float = 0.1
    attn_dropout: float = 0.0
    #: swish (x * sigmoid(x), Marian's) as well as relu and gelu (exact, erf)
    activation: Literal["relu", "gelu", "swish"] = "relu"
    norm: Literal["pre", "post"] = "pre"
    #: sinusoidal: sin/cos interleaved; sinusoidal_concat: the sines, then the cosines (Marian,
    #: Hugging Face's Marian port); learned: a trained table
    positions: Literal["sinusoidal", "sinusoidal_concat", "learned"] = "sinusoidal"
    max_positions: int = 1024
    #: one embedding matrix for source and target (needs one id space: vocab.joint, or the shared id
    #: table of a run imported from Hugging Face)
    share_embeddings: bool = False
    #: output projection tied to the target embedding
    tie_output: bool = True
    #: token embeddings multiplied by sqrt(d_model) before the positions are added
    embed_scale: bool = True
    #: a bias on the output logits (Marian's final logits bias)
    output_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("d_model", "heads", "enc_layers", "dec_layers", "ff_dim", "max_positions", "dec_heads",
                     "dec_ff_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MTError(f"model.{name} must be >= 1")
        for name, heads in (("heads", self.heads), ("dec_heads", self.decoder_heads)):
            if self.d_model % heads:
                raise MTError(f"model.d_model ({self.d_model}) must be divisible by model.{name} ({heads})")

    @property
    def decoder_heads(self) -> int:
        return self.heads if self.dec_heads is None else self.dec_heads

    @property
    def decoder_ff_dim(self) -> int:
        return self.ff_dim if self.dec_ff_dim is None else self.dec_ff_dim


@dataclass(frozen=True)
class RNNConfig:
    arch: Literal["rnn"] = "rnn"
    cell: Literal["gru", "lstm"] = "gru"
    #: none: d2l Seq2Seq (the final encoder state is the context of every step);
    #: bahdanau: additive attention; luong_dot / luong_general: multiplicative attention
    attention: Literal["none", "bahdanau", "luong_dot", "luong_general"] = "bahdanau"
    emb_dim: int = 256
    hidden: int = 512
    enc_layers: int = 2
    dec_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.2
    #: Luong input feeding: the previous attentional vector is part of the next input
    input_feeding: bool = True
    tie_output: bool = False
    share_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("emb_dim", "hidden", "enc_layers", "dec_layers"):
            if getattr(self, name) < 1:
                raise MTError(f"model.{name} must be >= 1")


ModelConfig = Union[TransformerConfig, RNNConfig]


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1
    device: str = "auto"
    batch_tokens: int = 4096
    accum: int = 1
    max_steps: int = 10000
    max_epochs: int = 0  # 0: no limit
    max_minutes: float = 0.0  # 0: no limit (wall clock of this process)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    schedule: Literal["inverse_sqrt", "cosine", "plateau", "constant"] = "inverse_sqrt"
    warmup: int = 4000
    min_lr: float = 0.0
    #: the update at which schedule=cosine reaches min_lr: max_steps, or "minutes": the updates that
    #: max_minutes hold, estimated by timing this run's first updates (before the warm-up ends) and
    #: kept in its checkpoints, so that a time budget ends with the rate annealed (the run then
    #: stops there or at max_steps, whichever is first; docs/training.md)
    horizon: Literal["max_steps", "minutes"] = "max_steps"
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0: no clipping
    #: auto: time a few steps of this model on this device in float32 and under bf16 autocast and
    #: keep the faster (mt.train.precision; a resume keeps the run's choice); none: float32;
    #: bf16 / fp16 (CUDA): autocast
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    valid_every: int = 1000
    save_every: int = 0  # 0: at every validation
    keep_last: int = 3
    #: at the end of training, average the weights of the last N checkpoints (0: none) into
    #: averaged.safetensors and validate it; where it validates better than the best checkpoint,
    #: decoding the run ("best") uses it (meta.json, "best_weights"). Needs keep_last >= N
    average_last: int = 0
    metric: Literal["bleu", "chrf", "loss"] = "bleu"
    patience: int = 0  # validations without improvement before stopping; 0: never stop early
    valid_max_sentences: int = 0  # 0: the whole validation set
    log_every: int = 100
    compile: bool = False
    tensorboard: bool = False
    #: run directory or model.safetensors to start from (fine-tuning); vocabulary must match
    init_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "accum", "valid_every", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise MTError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 1:
            raise MTError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if self.average_last < 0:
            raise MTError(f"train.average_last must not be negative, got {self.average_last}")
        if self.average_last > self.keep_last:
            raise MTError(f"train.average_last={self.average_last} needs train.keep_last >= {self.average_last} "
                          f"(checkpoints kept), got {self.keep_last}")
        if self.lr <= 0:
            raise MTError(f"train.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise MTError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.horizon == "minutes" and (self.schedule != "cosine" or self.max_minutes <= 0):
            raise MTError("train.horizon=minutes needs train.schedule=cosine and train.max_minutes > 0 "
                          f"(got schedule={self.schedule}, max_minutes={self.max_minutes})")


#: where a decoding option may reach besides the recipe's decode section (which holds every one):
#: the options of `mt translate` and `mt score`, the command line of `mt serve`, and the requests
#: of `mt serve` (POST /translate)
FRONT_ENDS = ("translate", "score", "serve", "request")

#: how the front ends that take a beam size (`beam`) choose the other searches: one switch each
#: (DecodeConfig.with_options combines them; the recipe names the search in decode.search)
SEARCH_SWITCHES = {"greedy": "Greedy search.", "sample": "Sampling search (see temperature, topk, topp, seed)."}


@dataclass(frozen=True)
class DecodeOption:
    """The declaration of one decoding option, held by its DecodeConfig field (`decode_option`): what
    it does, its bounds and the front ends that take it. The recipe's checks (DecodeConfig), the
    command lines' options (mt.cli.options) and the request model of `mt serve` (mt.serve.app) are
    derived from it, so an option declared once reaches them all. Its name, type and default are
    the field's."""

    help: str
    ge: int | None = None  # bounds: the value is >= ge, > gt, <= le
    gt: int | None = None
    le: int | None = None
    takes: tuple[str, ...] = ("translate", "request")  # of FRONT_ENDS
    short: str | None = None  # the command lines' short flag (-b)

    def __post_init__(self) -> None:
        unknown = set(self.takes) - set(FRONT_ENDS)
        if unknown:
            raise ValueError(f"unknown front ends {sorted(unknown)} (known: {', '.join(FRONT_ENDS)})")

    def allows(self, value: Any) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le))

    def rule(self) -> str:
        """The bounds as an error message says them: 'must be >= 1', 'must be in (0, 1]'."""
        low = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        if low is not None and self.le is not None:
            return f"must be in {low}, {self.le}]"
        if self.ge == 0:
            return "must not be negative"
        if self.ge is not None:
            return f"must be >= {self.ge}"
        return f"must be > {self.gt}" if self.gt is not None else f"must be <= {self.le}"


def decode_option(default: Any, help: str, **declaration: Any) -> Any:
    """A DecodeConfig field (default) with its declaration: help, bounds, front ends (DecodeOption)."""
    return field(default=default, metadata={"option": DecodeOption(help, **declaration)})


@functools.lru_cache(maxsize=None)  # read on every DecodeConfig made (each serve request makes one)
def decode_options(cls: type | None = None, front_end: str | None = None) -> tuple[tuple[str, Any, DecodeOption], ...]:
    """(name, type, declaration) of the declared fields of `cls` (DecodeConfig or a subclass of it),
    in field order; front_end: only the options that front end takes."""
    cls = cls or DecodeConfig
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name], f.metadata["option"]) for f in dataclasses.fields(cls)
                 if "option" in f.metadata and (front_end is None or front_end in f.metadata["option"].takes))


@dataclass(frozen=True)
class DecodeConfig:
    """How a run decodes (the recipe's decode section). Each field is declared once, here, with what
    it does, its bounds and the front ends that take it (decode_option)."""

    search: Literal["beam", "greedy", "sampling"] = decode_option(
        "beam", "beam, greedy or sampling (a front end chooses it with a beam size or a switch: SEARCH_SWITCHES).",
        takes=())
    beam: int = decode_option(5, "Beam size (beam search).", ge=1, short="-b")
    n_best: int = decode_option(
        1, "Hypotheses per sentence, best first (beam search or sampling). Given alone, K > 1 asks for a beam "
           "of at least K, or for K samples when the run samples. A line translated in pieces gets one.", ge=1)
    len_penalty: Literal["gnmt", "d2l", "none"] = decode_option(
        "gnmt", "Length penalty: gnmt, d2l (1/L^alpha) or none.", takes=("translate", "score", "request"))
    # a penalty that shrinks with length: longer would always win, and beam search's exact stopping
    # rule (early_stop: false) assumes the opposite
    alpha: float = decode_option(0.6, "Length penalty exponent.", ge=0, takes=("translate", "score", "request"))
    max_len_a: float = decode_option(1.5, "Max target length = max_len_a * source length + max_len_b (tokens).",
                                     ge=0)
    max_len_b: int = decode_option(10, "See max_len_a.", ge=0)
    min_len: int = decode_option(0, "Minimum target length (tokens).", ge=0)
    early_stop: bool = decode_option(
        True, "Stop a sentence once beam hypotheses have finished (fairseq); off: only once no open hypothesis "
              "can still beat them (exact, slower).")
    batch_tokens: int = decode_option(
        4096, "Token budget of a batch: padded source tokens x decoder rows per sentence (beam size, samples). "
              "Speed and memory against this budget: docs/performance.md.",
        ge=1, takes=("translate", "score", "serve"))
    topk: int = decode_option(0, "Sample from the k most likely tokens (0: all).", ge=0)
    topp: float = decode_option(1.0, "Nucleus sampling: the probability mass sampled from (1: all).", gt=0, le=1)
    temperature: float = decode_option(1.0, "Sampling temperature.", gt=0)
    seed: int = decode_option(1, "Sampling seed.", ge=0, le=2**63 - 1)
    alignment_layer: int = decode_option(
        -1, "Transformer decoder layer whose cross-attention (mean over heads) gives word alignments and "
            "attention plots; negative counts from the top.", takes=("translate", "score", "request"))
    copy_unseen: bool = decode_option(
        True, "Copy source words holding characters the vocabulary lacks (names in another script, emoji, rare "
              "symbols) into the translation, at the target word that attends to them most (mt.decode.unseen).")
    copy_layer: int = decode_option(
        0, "Transformer decoder layer whose cross-attention places the copied words (copy_unseen); negative "
           "counts from the top. Which layer places them best: docs/performance.md.")
    placeholders: bool = decode_option(
        True, "Pass URLs, e-mail addresses, numbers, words in characters the vocabulary lacks and decode.protect's "
              "patterns through unchanged: each is replaced by a placeholder the model was trained to carry "
              "across, and put back after the search (runs whose vocabulary has placeholders: "
              "vocab.placeholders; mt.data.placeholders).", takes=("translate", "score", "request"))
    protect: tuple[str, ...] = decode_option(
        (), "Regular expressions of more spans to pass through unchanged as placeholders (product names, "
            "codes; recipe only).", takes=())
    no_repeat_ngram: int = decode_option(
        0, "No n-gram of target pieces occurs twice in a translation (0: off).", ge=0)
    repetition_penalty: float = decode_option(
        1.0, "CTRL's penalty on pieces already in the translation, as CTranslate2's (1: off; > 1 penalises): "
             "their log-probabilities are multiplied by it, then renormalised.", gt=0)
    max_repeat: int = decode_option(
        3, "Loop guard: a unit of 1 to 4 pieces stands at most this many times in a row, unless the source "
           "repeats one as often or more (0: off).", ge=0)

    def __post_init__(self) -> None:
        for key, tp, option in decode_options(type(self)):
            value, choices = getattr(self, key), typing.get_args(tp) if typing.get_origin(tp) is Literal else None
            if choices is not None and value not in choices:
                rule = f"must be {', '.join(choices[:-1])} or {choices[-1]}"
            elif choices is None and not option.allows(value):
                rule = option.rule()
            else:
                continue
            raise SettingError("decode", lambda name, key=key, rule=rule: f"{name(key)} {rule}, got {getattr(self, key)!r}")
        if self.search == "beam" and self.n_best > self.beam:
            raise SettingError("decode", lambda name: f"{name('n_best')} ({self.n_best}) cannot exceed {name('beam')} "
                                                      f"({self.beam}): the n-best list comes from the beam")

    def with_options(self, *, greedy: bool = False, sample: bool = False, **options) -> "DecodeConfig":
        """These settings with a front end's decoding options (None: not given), combined the one way
        every front end does (mt translate, mt serve):
        - at most one of `beam` (beam search of that size), `greedy` and `sample`;
        - `n_best` K > 1 alone asks for K hypotheses of the run's search: K samples when it samples,
          else a beam of at least K (beam search even when the run decodes greedily);
        - greedy search gives one hypothesis: n_best > 1 with it is refused.
        Raises SettingError, whose `worded` names the options as the front end does (--beam, beam)."""
        beam, n_best = options.get("beam"), options.get("n_best")
        if greedy + sample + (beam is not None) > 1:
            raise SettingError("decode", lambda name: f"choose one of {name('beam')}, {name('greedy')} and "
                                                      f"{name('sample')}")
        if greedy and n_best is not None and n_best > 1:
            raise SettingError("decode", lambda name: f"{name('n_best')} > 1 needs beam search or sampling, "
                                                      f"not {name('greedy')}")
        changes = {k: v for k, v in options.items() if v is not None}
        if beam is not None:
            changes["search"] = "beam"
        elif greedy:
            changes["search"] = "greedy"
        elif sample:
            changes["search"] = "sampling"
        elif n_best is not None and n_best > 1 and self.search != "sampling":
            changes.update(search="beam", beam=max(self.beam, n_best))
        decode = dataclasses.replace(self, **changes)
        if decode.search == "greedy" and decode.n_best > 1:  # the run's own greedy search, n_best from elsewhere
            raise SettingError("decode", lambda name: f"{name('n_best')} > 1 needs beam search or sampling")
        return decode


@dataclass(frozen=True)
class ServeLimits:
    """What `mt serve` accepts and holds (its command line's --max-texts ...; checked here, before
    the server imports torch or loads a model)."""

    max_texts: int = 64  # texts per request
    max_chars: int = 2000  # characters per text
    max_body: int = 1 << 20  # request body bytes
    queue_size: int = 1024  # texts waiting per model (beyond: 503)
    timeout: float = 60.0  # seconds from arrival to answer (beyond: 504)
    batch_wait: float = 0.005  # seconds a batch waits for more requests before decoding
    max_beam: int = 16  # largest beam (and n-best, samples) a request may ask for
    max_output_tokens: int = 1024  # longest translation (of a text or of a piece of a long one), in tokens

    def __post_init__(self) -> None:
        rules = [(key, getattr(self, key) >= 1, "must be >= 1")
                 for key in ("max_texts", "max_chars", "max_body", "queue_size", "max_beam", "max_output_tokens")]
        rules += [("timeout", self.timeout > 0, "must be > 0 seconds"),
                  ("batch_wait", self.batch_wait >= 0, "must not be negative")]
        for key, ok, rule in rules:
            if not ok:
                raise SettingError("serve", lambda name, key=key, rule=rule: f"{name(key)} {rule}, got {getattr(self, key)!r}")
        if self.queue_size < self.max_texts:
            raise SettingError("serve", lambda name: f"{name('queue_size')} ({self.queue_size}) must hold one full "
                                                     f"request ({name('max_texts')} {self.max_texts})")


@dataclass(frozen=True)
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        if getattr(self.model, "share_embeddings", False) and not (self.vocab.joint or self.vocab.shared_ids):
            raise MTError("model.share_embeddings needs one id space for both sides: vocab.joint: true (or the "
                          "shared id table of a run imported from Hugging Face, vocab.shared_ids)")


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(str(a) for a in typing.get_args(tp))
            raise MTError(f"{where}: {value!r} is not one of: {choices}")
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:
            return _convert(value, args[0], where)
        raise TypeError(f"unsupported union at {where}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise MTError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if dataclasses.is_dataclass(args[0]):
                return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise MTError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise MTError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MTError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MTError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise MTError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported type {tp} at {where}")


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MTError(f"{where or 'recipe'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise MTError(
            f"unknown recipe key '{prefix}{unknown[0]}' (known keys{' of ' + where if where else ''}: "
            f"{', '.join(fields)})"
        )
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        tp = hints[name]
        if name == "model" and cls is Config:
            kwargs[name] = _build_model(value, path)
        elif dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, path)
        else:
            kwargs[name] = _convert(value, tp, path)
    return cls(**kwargs)


def _build_model(data: Any, where: str) -> ModelConfig:
    if data is not None and not isinstance(data, dict):
        raise MTError(f"{where}: expected a mapping (arch: transformer or rnn, and its sizes), got {data!r}")
    data = dict(data or {})
    arch = data.get("arch", "transformer")
    if arch == "transformer":
        return _build(TransformerConfig, data, where)
    if arch == "rnn":
        return _build(RNNConfig, data, where)
    raise MTError(f"{where}.arch: unknown architecture {arch!r} (choose transformer or rnn)")


def config_from_dict(data: dict) -> Config:
    return _build(Config, data, "")


def to_dict(cfg: Any) -> dict:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict, returning a new dict."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise MTError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise MTError(f"--set {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MTError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MTError(f"{path}: not a valid YAML recipe ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MTError(f"{path}: a recipe must be a mapping of sections")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))

