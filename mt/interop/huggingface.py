"""Marian models in the Hugging Face `transformers` format: `mt import huggingface` and
`mt export --format huggingface`.

A Marian folder (what `MarianMTModel.save_pretrained` and `MarianTokenizer.save_pretrained`
write, the form of the OPUS-MT models) holds config.json, the weights (model.safetensors, or
pytorch_model.bin, read with torch.load(weights_only=True)), source.spm and target.spm (the
SentencePiece models that segment each side) and vocab.json (the id table, piece -> id, shared by
both sides, or the source side's with target_vocab.json beside it; a piece a table lacks reads as
<unk>).

Import. mt's ids have <pad> 0, <unk> 1, <s> 2, </s> 3 (every batch, loss and search relies on
it), so the table is renumbered: Marian's pad, unk, decoder-start and eos tokens take ids 0-3 and
the other pieces follow in Marian's order. Marian starts decoding from its pad token; mt starts from
<s>, so the import adds an <s> row whose embedding is the pad row's (the same decoder input) and
whose output logit is pushed to -1e4 by the output bias (a probability of exactly zero in float32,
so every other log-probability is Marian's). Both SentencePiece models are rewritten with the whole
table as their ids (mt.data.vocab.spm_with_id_table): each segments as before, and the pieces of the
other side are UNUSED. A piece a SentencePiece model has and the table lacks gets an id after the
table, with the <unk> row's embedding and a -1e4 output logit (Marian reads it as <unk>). A model
with separate tables (target_vocab.json, decoder_vocab_size) is renumbered side by side: the
source table by vocab.json's own pad, unk and </s> pieces (what MarianTokenizer uses), the target
table by config.json's ids (what the decoder uses), each SentencePiece model with its own table,
and the model gets separate embeddings.

The architecture is mt's Transformer with the recipe options Marian needs: post-norm, no final
layer norms, `positions: sinusoidal_concat`, `embed_scale` (config.scale_embedding), `output_bias`
(final_logits_bias), the activation (swish, gelu, relu), and shared or separate embeddings.

Export. A post-norm mt Transformer becomes a MarianMTModel with mt's ids unchanged (pad 0, eos 3,
decoder start 2, <pad> and <s> never generated, as mt's search masks them); a pre-norm one (mt's
default) a PegasusForConditionalGeneration, the same layers with a layer norm after each stack and
one embedding for both sides, with Marian's tokenizer files beside it. mt's interleaved sinusoidal
positions become the concatenated ones both use by permuting the model's features: every weight that
reads or writes the residual stream is permuted alike, so the function is the same. Such a Pegasus
folder imports back (model_type pegasus, with source.spm, target.spm and vocab.json).
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mt import MTError, __version__
from mt.config import Config, DataConfig, DecodeConfig, TransformerConfig, VocabConfig, load_config, save_config
from mt.data.vocab import SPECIAL_PIECES, spm_pieces, spm_trainer_option, spm_with_id_table
from mt.files import atomic_write_json, publish, publish_replacing, temp_dir
from mt.rundir import CONFIG, META, SRC_VOCAB, TGT_VOCAB, WEIGHTS, check_export_target, check_run_dir

#: the files of a Marian folder that the import reads (and fetches, for a model id)
HF_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "vocab.json", "target_vocab.json",
            "source.spm", "target.spm", "model.safetensors", "pytorch_model.bin")
#: the output logit of rows Marian does not have (mt's <s>, pieces the id table lacks)
NEVER = -1e4
_ACTIVATIONS = {"swish": "swish", "silu": "swish", "gelu": "gelu", "relu": "relu"}
_SPM_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}

#: (mt module, Hugging Face modules concatenated into it) of one encoder / decoder layer
ENCODER_LAYER = (("attn.qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                 ("attn.out", ("self_attn.out_proj",)), ("sub_attn.norm", ("self_attn_layer_norm",)),
                 ("ff.fc1", ("fc1",)), ("ff.fc2", ("fc2",)), ("sub_ff.norm", ("final_layer_norm",)))
DECODER_LAYER = (("self_attn.qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                 ("self_attn.out", ("self_attn.out_proj",)), ("sub_self.norm", ("self_attn_layer_norm",)),
                 ("cross_attn.q", ("encoder_attn.q_proj",)),
                 ("cross_attn.kv", ("encoder_attn.k_proj", "encoder_attn.v_proj")),
                 ("cross_attn.out", ("encoder_attn.out_proj",)), ("sub_cross.norm", ("encoder_attn_layer_norm",)),
                 ("ff.fc1", ("fc1",)), ("ff.fc2", ("fc2",)), ("sub_ff.norm", ("final_layer_norm",)))


# ----------------------------------------------------------------------------------------------
# reading a Marian folder


def _read_json(folder: Path, name: str, required: bool = True) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        if required:
            raise MTError(f"{folder}: no {name} (not a Marian model saved by transformers)")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MTError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise MTError(f"{path}: not a JSON object")
    return data


def fetch(source: str) -> Path:
    """A local folder as it is; a model id ("Helsinki-NLP/opus-mt-en-de") fetched with huggingface_hub."""
    folder = Path(source)
    if folder.is_dir():
        return folder
    if folder.exists() or source.count("/") > 1 or source.startswith((".", "/")):
        raise MTError(f"{source}: no such folder (give a folder saved by transformers, or a model id)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MTError(f"{source}: no such folder; fetching a model id needs huggingface_hub: "
                      "pip install 'mt[hf]'") from None
    try:
        return Path(snapshot_download(source, allow_patterns=list(HF_FILES)))
    except Exception as e:  # noqa: BLE001 - offline, unknown id, gated model: one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise MTError(f"{source}: no such folder, and fetching it from the Hugging Face hub failed ({first})") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's tensors: model.safetensors, else pytorch_model.bin read without running code."""
    if (folder / "model.safetensors").is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(folder / "model.safetensors"), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise MTError(f"{folder / 'model.safetensors'}: not a readable safetensors file ({e})") from None
    path = folder / "pytorch_model.bin"
    if not path.is_file():
        raise MTError(f"{folder}: no weights (model.safetensors or pytorch_model.bin)")
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise MTError(f"{path}: refused: not a plain tensor file (torch.load with weights_only=True: {first})") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise MTError(f"{path}: not a dictionary of tensors")
    return tensors


def model_config(hf: dict[str, Any], folder: Path, separate: bool = False) -> TransformerConfig:
    """mt's TransformerConfig of a Marian config.json (post-norm), or of a Pegasus one (pre-norm, one
    embedding: what `mt export` writes for a pre-norm run); an MTError for what mt's Transformer lacks.
    separate: the folder has separate source and target id tables (target_vocab.json)."""
    kind = hf.get("model_type")
    if kind not in ("marian", "pegasus"):
        raise MTError(f"{folder}: model_type {kind!r}, not a Marian model (model_type marian; or pegasus)")
    decoder_vocab = hf.get("decoder_vocab_size") or hf.get("vocab_size")
    if decoder_vocab != hf.get("vocab_size") and not separate:
        raise MTError(f"{folder}: decoder_vocab_size {decoder_vocab} and vocab_size {hf.get('vocab_size')} differ, "
                      "but there is no target_vocab.json (the target side's id table)")
    shared = kind == "pegasus" or hf.get("share_encoder_decoder_embeddings", True)
    if separate and shared:
        raise MTError(f"{folder}: separate source and target id tables (target_vocab.json) with one shared "
                      "embedding (share_encoder_decoder_embeddings)")
    activation = _ACTIVATIONS.get(hf.get("activation_function", "gelu"))
    if activation is None:
        raise MTError(f"{folder}: activation_function {hf.get('activation_function')!r} (mt has swish, gelu, relu)")
    try:
        return TransformerConfig(
            d_model=hf["d_model"], heads=hf["encoder_attention_heads"], enc_layers=hf["encoder_layers"],
            dec_layers=hf["decoder_layers"], ff_dim=hf["encoder_ffn_dim"],
            dec_heads=_unless_equal(hf["decoder_attention_heads"], hf["encoder_attention_heads"]),
            dec_ff_dim=_unless_equal(hf["decoder_ffn_dim"], hf["encoder_ffn_dim"]), dropout=float(hf.get("dropout", 0.1)),
            attn_dropout=float(hf.get("attention_dropout", 0.0)), activation=activation,
            norm="pre" if kind == "pegasus" else "post",
            positions="sinusoidal_concat", max_positions=hf.get("max_position_embeddings", 1024),
            share_embeddings=shared,
            tie_output=hf.get("tie_word_embeddings", True), embed_scale=bool(hf.get("scale_embedding", False)),
            output_bias=True)
    except KeyError as e:
        raise MTError(f"{folder / 'config.json'}: no {e.args[0]}") from None


def _unless_equal(decoder: int, encoder: int) -> int | None:
    """The decoder's value where it differs from the encoder's (mt's dec_heads / dec_ff_dim: unset
    means the same)."""
    return None if decoder == encoder else decoder


# ----------------------------------------------------------------------------------------------
# the id table


@dataclass
class IdTable:
    """mt's pieces in id order and, for each mt id, the Marian row it takes (embedding, output)."""

    pieces: list[str]
    rows: list[int]
    dead: list[int]  # mt ids Marian never gives probability (<s> when added, pieces the table lacks)


def _token(tok: dict[str, Any], name: str, default: str) -> str:
    """A special token's piece as tokenizer_config.json names it (a string, or {"content": ...})."""
    piece = tok.get(name, default)
    return piece.get("content", default) if isinstance(piece, dict) else piece


def id_table(vocab: dict[str, Any], hf: dict[str, Any], tok: dict[str, Any], spm_protos: list[bytes],
             folder: Path, name: str = "vocab.json", size_key: str = "vocab_size",
             by_pieces: bool = False) -> IdTable:
    """Renumber one of Marian's id tables for mt: pad, unk, decoder start (or a new <s>), eos, the
    rest. The special ids are config.json's (the decoder's), or with by_pieces the table's own pad
    and </s> pieces (a source table of its own: what MarianTokenizer appends and pads with)."""
    size = hf.get(size_key) or hf["vocab_size"]
    ids = sorted(vocab.values()) if all(isinstance(v, int) for v in vocab.values()) else None
    if ids != list(range(size)):
        raise MTError(f"{folder / name}: {len(vocab)} entries with ids that are not 0..{size - 1} "
                      f"(config.json has {size_key} {size}); the vocabulary does not fit the model")
    piece_of = {i: p for p, i in vocab.items()}
    unk_piece = _token(tok, "unk_token", "<unk>")
    if unk_piece not in vocab:
        raise MTError(f"{folder / name}: no unknown piece {unk_piece!r}")
    if by_pieces:
        pad, eos = (vocab.get(_token(tok, key, piece)) for key, piece in (("pad_token", "<pad>"), ("eos_token", "</s>")))
        start = vocab.get("<s>", pad)  # no decoder reads this side: <s> where the table has one (an mt export)
        where = folder / name
    else:
        pad, eos, start = hf.get("pad_token_id"), hf.get("eos_token_id"), hf.get("decoder_start_token_id")
        start = pad if start is None else start
        where = folder / "config.json"
    for key, i in (("pad_token_id", pad), ("eos_token_id", eos)):
        if not isinstance(i, int) or not 0 <= i < size:
            raise MTError(f"{where}: {key} {i!r} is not an id of {name}")
    new_bos = start in (pad, eos, vocab[unk_piece])
    specials = [pad, vocab[unk_piece], pad if new_bos else start, eos]
    rows = specials + [i for i in range(size) if i not in specials]
    pieces = list(SPECIAL_PIECES) + [piece_of[i] for i in rows[4:]]
    if len(set(pieces)) != len(pieces):  # a piece named like one of mt's special pieces
        raise MTError(f"{folder / name}: an ordinary piece is named like a special one ({', '.join(SPECIAL_PIECES)})")
    dead = [2] if new_bos else []
    for proto in spm_protos:  # pieces that segmentation produces but the table lacks read as <unk>
        for piece, (_, kind) in spm_pieces(proto).items():
            if kind not in (2, 3) and piece not in vocab and piece not in pieces:
                dead.append(len(pieces))
                pieces.append(piece)
                rows.append(vocab[unk_piece])
    return IdTable(pieces, rows, dead)


# ----------------------------------------------------------------------------------------------
# weights


def _tensor(hf: dict[str, torch.Tensor], *names: str) -> torch.Tensor:
    for name in names:
        if name in hf:
            return hf[name].float()
    raise MTError(f"the weights have no {names[0]} (not a MarianMTModel checkpoint)")


def mt_state(hf: dict[str, torch.Tensor], cfg: TransformerConfig, table: IdTable,
             src_table: IdTable | None = None) -> dict[str, torch.Tensor]:
    """mt's Transformer state dict from a MarianMTModel state dict (tied tensors may be stored once);
    table: the target side's id table, src_table the source side's where it has its own."""
    rows = torch.tensor(table.rows)
    src_rows = torch.tensor((src_table or table).rows)
    shared = ("model.shared.weight",)
    src = _tensor(hf, "model.encoder.embed_tokens.weight", *shared)[src_rows]
    tgt = _tensor(hf, "model.decoder.embed_tokens.weight", *shared)[rows]
    state = {"src_embed.tokens.weight": src, "tgt_embed.tokens.weight": src if cfg.share_embeddings else tgt}
    output = tgt if cfg.tie_output else _tensor(hf, "lm_head.weight")[rows]
    bias = _tensor(hf, "final_logits_bias").reshape(-1)[rows].clone()
    bias[table.dead] = NEVER
    state["output.weight"], state["output.bias"] = state["tgt_embed.tokens.weight"] if cfg.tie_output else output, bias
    for side, layers, count in (("encoder", ENCODER_LAYER, cfg.enc_layers), ("decoder", DECODER_LAYER, cfg.dec_layers)):
        for i in range(count):
            for mine, theirs in layers:
                for kind in ("weight", "bias"):
                    state[f"{side}.{i}.{mine}.{kind}"] = torch.cat(
                        [_tensor(hf, f"model.{side}.layers.{i}.{name}.{kind}") for name in theirs], dim=0)
    if cfg.norm == "pre":  # Pegasus: the layer norm after each stack
        for side, ours in (("encoder", "enc_norm"), ("decoder", "dec_norm")):
            for kind in ("weight", "bias"):
                state[f"{ours}.{kind}"] = _tensor(hf, f"model.{side}.layer_norm.{kind}")
    return state


# ----------------------------------------------------------------------------------------------
# import


def _decode_config(folder: Path, hf: dict[str, Any]) -> DecodeConfig:
    """The folder's generation settings as mt's decode section (beam, length penalty L ** alpha)."""
    gen = {**hf, **_read_json(folder, "generation_config.json", required=False)}
    beam = int(gen.get("num_beams") or 4)
    alpha = float(gen.get("length_penalty", 1.0))
    # transformers has no loop guard (max_repeat) and stops beams as early_stopping says (True: mt's
    # early_stop; False, its default, a heuristic bound that mt's exact bound replaces)
    return DecodeConfig(search="beam" if beam > 1 else "greedy", beam=max(beam, 1), len_penalty="d2l", alpha=alpha,
                        early_stop=gen.get("early_stopping") is True, max_repeat=0)


def import_huggingface(source: str, out: str | Path, log=lambda msg: None) -> Path:
    """Make the run directory `out` from a Marian folder or model id. Nothing is left behind on error."""
    out = Path(out)
    if out.exists():
        raise MTError(f"{out}: already exists; import into a new directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise MTError(f"{parent}: no such directory for the run")
    folder = fetch(source)
    hf = _read_json(folder, "config.json")
    separate = (folder / "target_vocab.json").is_file()
    cfg = model_config(hf, folder, separate)
    protos = []
    for name in ("source.spm", "target.spm"):
        if not (folder / name).is_file():
            raise MTError(f"{folder}: no {name} (the SentencePiece model of the "
                          f"{'source' if name.startswith('source') else 'target'} side)")
        protos.append((folder / name).read_bytes())
    tok = _read_json(folder, "tokenizer_config.json", False)
    if separate:
        table = id_table(_read_json(folder, "target_vocab.json"), hf, tok, protos[1:], folder, "target_vocab.json",
                         "decoder_vocab_size")
        src_table = id_table(_read_json(folder, "vocab.json"), hf, tok, protos[:1], folder, by_pieces=True)
    else:
        table = src_table = id_table(_read_json(folder, "vocab.json"), hf, tok, protos, folder)
    weights = read_weights(folder)
    return _write_run(out, parent, cfg, (src_table, table), protos, weights, _decode_config(folder, hf), source, log)


def _write_run(out: Path, parent: Path, cfg: TransformerConfig, tables: tuple[IdTable, IdTable], protos: list[bytes],
               weights: dict[str, torch.Tensor], decode: DecodeConfig, source: str, log) -> Path:
    from mt.checkpoint import save_weights
    from mt.data.vocab import Vocab
    from mt.models.transformer import Transformer

    src_table, table = tables
    separate = src_table is not table
    tmp = temp_dir(parent, f".{out.name}.")
    try:
        for proto, name, side in zip(protos, (SRC_VOCAB, TGT_VOCAB), tables):
            (tmp / name).write_bytes(spm_with_id_table(proto, side.pieces))
            Vocab(tmp / name)  # loads, with mt's special ids
        model = Transformer(cfg, len(src_table.pieces), len(table.pieces))
        state = mt_state(weights, cfg, table, src_table)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
            raise MTError(f"{source}: the weights do not fit config.json ({first})") from None
        save_weights(model, tmp / WEIGHTS)
        vocab = VocabConfig(size=len(table.pieces), joint=False, shared_ids=not separate,
                            model_type=_SPM_TYPES.get(spm_trainer_option(protos[0], 3, 1), "unigram"),
                            byte_fallback=bool(spm_trainer_option(protos[0], 35, 0)))
        save_config(Config(name=Path(out).name, data=DataConfig(), vocab=vocab, model=cfg,
                           decode=decode), tmp / "config.yaml")
        rows = {"marian_rows": table.rows, **({"marian_source_rows": src_table.rows} if separate else {})}
        atomic_write_json(tmp / META, {"mt_version": __version__, "arch": "transformer", "step": 0,
                                       "src_vocab_size": len(src_table.pieces), "tgt_vocab_size": len(table.pieces),
                                       "imported_from": {"huggingface": source, **rows}})
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"imported {source}: {len(table.pieces)} target pieces ({len(table.dead)} never generated)"
        + (f", {len(src_table.pieces)} source pieces" if separate else "") + ", "
        f"{cfg.enc_layers}+{cfg.dec_layers} layers, d_model {cfg.d_model}")
    return out


# ----------------------------------------------------------------------------------------------
# export


def check_exportable(cfg) -> None:
    """An MTError naming the first model option the Hugging Face form cannot express: a post-norm
    Transformer becomes a MarianMTModel, a pre-norm one a PegasusForConditionalGeneration (pre-norm
    layers, a final layer norm after each stack, one embedding for both sides)."""
    if not isinstance(cfg, TransformerConfig):
        raise MTError(f"model.arch={getattr(cfg, 'arch', type(cfg).__name__)}: Hugging Face's Marian and Pegasus "
                      "models are Transformers; only Transformer runs can be exported")
    if cfg.positions == "learned":
        raise MTError("model.positions=learned: Hugging Face's Marian and Pegasus models have sinusoidal "
                      "positions only")
    if cfg.norm == "pre" and not cfg.share_embeddings:
        raise MTError("model.norm=pre with model.share_embeddings=false: a pre-norm run exports as Hugging Face's "
                      "PegasusForConditionalGeneration, whose encoder and decoder share one embedding")


def feature_order(cfg: TransformerConfig) -> torch.Tensor:
    """The model's features in Marian's order: mt's interleaved sinusoidal positions (sin, cos,
    sin, ...) become Marian's concatenated ones (the sines, then the cosines)."""
    d = cfg.d_model
    if cfg.positions == "sinusoidal_concat":
        return torch.arange(d)
    return torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])


def _permuted(name: str, t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """A tensor of mt's state dict with its residual-stream features in `order`: inputs read from
    the stream are columns, outputs written to it rows (and their biases)."""
    writes = name.endswith((".out.weight", ".out.bias", "fc2.weight", "fc2.bias", "norm.weight", "norm.bias"))
    if writes:
        return t[order]
    reads = name.endswith(("tokens.weight", "output.weight", "qkv.weight", ".q.weight", ".kv.weight", "fc1.weight"))
    return t[:, order] if reads else t


def hf_state(model, cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """The MarianMTModel (post-norm) or PegasusForConditionalGeneration (pre-norm) state dict of an
    mt Transformer (mt's ids are kept)."""
    order = feature_order(cfg)
    mine = {name: _permuted(name, t.detach().float(), order).contiguous() for name, t in model.state_dict().items()}
    src, tgt = mine["src_embed.tokens.weight"], mine["tgt_embed.tokens.weight"]
    state = {"model.encoder.embed_tokens.weight": src, "model.decoder.embed_tokens.weight": tgt,
             "lm_head.weight": mine["output.weight"],
             "final_logits_bias": mine.get("output.bias", torch.zeros(tgt.size(0)))[None, :]}
    if cfg.share_embeddings:
        state["model.shared.weight"] = src
    for side, layers, count in (("encoder", ENCODER_LAYER, cfg.enc_layers), ("decoder", DECODER_LAYER, cfg.dec_layers)):
        for i in range(count):
            for ours, theirs in layers:
                for kind in ("weight", "bias"):
                    parts = mine[f"{side}.{i}.{ours}.{kind}"].chunk(len(theirs), dim=0)
                    for name, part in zip(theirs, parts):
                        state[f"model.{side}.layers.{i}.{name}.{kind}"] = part.contiguous()
    if cfg.norm == "pre":  # the layer norm after each stack
        for side, ours in (("encoder", "enc_norm"), ("decoder", "dec_norm")):
            for kind in ("weight", "bias"):
                state[f"model.{side}.layer_norm.{kind}"] = mine[f"{ours}.{kind}"]
    return state


def _hf_config(transformers, run, separate: bool):
    """The model's config (MarianConfig, or PegasusConfig for a pre-norm run) and its generation config."""
    cfg, d = run.config.model, run.config.decode
    src_size, tgt_size = len(run.src_vocab), len(run.tgt_vocab)
    common = dict(
        vocab_size=src_size, d_model=cfg.d_model, encoder_layers=cfg.enc_layers,
        decoder_layers=cfg.dec_layers, encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.decoder_heads,
        encoder_ffn_dim=cfg.ff_dim, decoder_ffn_dim=cfg.decoder_ff_dim, activation_function=cfg.activation,
        dropout=cfg.dropout, attention_dropout=cfg.attn_dropout, activation_dropout=cfg.dropout,
        max_position_embeddings=cfg.max_positions, scale_embedding=cfg.embed_scale,
        tie_word_embeddings=cfg.tie_output, pad_token_id=0, eos_token_id=3, decoder_start_token_id=2,
        forced_eos_token_id=3)
    if cfg.norm == "pre":
        model = transformers.PegasusConfig(**common)
    else:
        model = transformers.MarianConfig(**common, decoder_vocab_size=tgt_size,
                                          share_encoder_decoder_embeddings=cfg.share_embeddings and not separate)
    beam = {} if d.search == "greedy" else {  # transformers refuses beam settings without a beam
        "num_beams": d.beam, "early_stopping": d.early_stop,
        "length_penalty": {"none": 0.0}.get(d.len_penalty, d.alpha)}  # gnmt has no transformers form: L ** alpha
    repeats = {"no_repeat_ngram_size": d.no_repeat_ngram} if d.no_repeat_ngram else {}
    if d.repetition_penalty != 1.0:
        repeats["repetition_penalty"] = d.repetition_penalty
    generation = transformers.GenerationConfig(
        max_length=cfg.max_positions, bad_words_ids=[[0], [2]], pad_token_id=0, eos_token_id=3,
        decoder_start_token_id=2, forced_eos_token_id=3, **beam, **repeats)
    return model, generation


def _write_tokenizer(transformers, run, folder: Path, separate: bool) -> None:
    """source.spm, target.spm and the id table(s) as MarianTokenizer reads them."""
    shutil.copyfile(run.src_vocab.path, folder / "source.spm")
    shutil.copyfile(run.tgt_vocab.path, folder / "target.spm")
    tables = [("vocab.json", run.src_vocab)] + ([("target_vocab.json", run.tgt_vocab)] if separate else [])
    for name, vocab in tables:
        pieces = {piece: i for i, piece in enumerate(vocab.pieces(range(len(vocab))))}
        (folder / name).write_text(json.dumps(pieces, ensure_ascii=False), encoding="utf-8")
    extra = {"target_vocab_file": str(folder / "target_vocab.json")} if separate else {}
    tok = transformers.MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"),
                                       str(folder / "vocab.json"), separate_vocabs=separate,
                                       model_max_length=run.config.model.max_positions, **extra)
    tok.save_pretrained(str(folder))


def export_notes(d: DecodeConfig) -> list[str]:
    """What of the run's decode section generation_config.json cannot say."""
    notes = [f"transformers' maximum length is fixed (max_length / max_new_tokens), not {d.max_len_a} * source "
             f"length + {d.max_len_b} as in mt"]
    if d.len_penalty == "gnmt":
        notes.append(f"the run's GNMT length penalty has no transformers form: length_penalty={d.alpha} is "
                     f"L ** {d.alpha}, what `mt translate --len-penalty d2l` uses")
    if d.max_repeat:
        notes.append(f"mt's loop guard (decode.max_repeat {d.max_repeat}) has no transformers form; "
                     "no_repeat_ngram_size is the nearest")
    if d.repetition_penalty != 1.0:
        notes.append("repetition_penalty: transformers applies it to the logits, mt to the log-probabilities "
                     "(which it renormalises); the same setting penalises alike but not identically")
    if d.placeholders:
        notes.append("placeholders (a vocabulary with ⦅0⦆...): masking and restoring happen outside the model: "
                     "mask each line before generate and restore each output after it (mt.data.placeholders)")
    if not d.early_stop and d.search == "beam":
        notes.append("early_stopping=False is transformers' heuristic bound; mt's early_stop false is exact")
    return notes


def export_huggingface(run_dir: str | Path, out: str | Path, checkpoint: str = "best", force: bool = False) -> Path:
    """Write the run as a folder that AutoModelForSeq2SeqLM / AutoTokenizer load: a MarianMTModel
    (post-norm runs) or a PegasusForConditionalGeneration (pre-norm), with Marian's tokenizer."""
    from mt.decode.translator import load_run

    run_dir, out = Path(run_dir), Path(out)
    check_export_target(run_dir, out, force)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise MTError(f"{parent}: no such directory for the exported model")
    check_exportable(load_config(check_run_dir(run_dir) / CONFIG).model)  # before the weights are read
    run = load_run(run_dir, "cpu", checkpoint)
    try:
        import transformers
    except ImportError:
        raise MTError("exporting to Hugging Face needs the transformers package: pip install 'mt[hf]'") from None
    separate = not (run.src_vocab.same_as(run.tgt_vocab) or run.config.vocab.shared_ids)
    config, generation = _hf_config(transformers, run, separate)
    pre = run.config.model.norm == "pre"
    cls = transformers.PegasusForConditionalGeneration if pre else transformers.MarianMTModel
    tmp = temp_dir(parent, f".{out.name}.")
    try:
        model_dir = tmp / "model"
        model = cls(config)
        missing, unexpected = model.load_state_dict(hf_state(run.model, run.config.model), strict=False)
        # not in the state: the sinusoidal tables, and the tied copies of the one embedding
        derived = ("embed_positions", "embed_tokens") if pre else ("embed_positions",)
        if unexpected or any(not any(part in name for part in derived) for name in missing):
            raise MTError(f"{run_dir}: the weights do not map onto a {cls.__name__} ({(unexpected + missing)[:3]})")
        model.generation_config = generation
        model.save_pretrained(str(model_dir))
        _write_tokenizer(transformers, run, model_dir, separate)
        atomic_write_json(model_dir / "mt_export.json", {"exported_by": f"mt {__version__}", "run": str(run_dir),
                                                         "checkpoint": checkpoint, "format": "huggingface",
                                                         "notes": export_notes(run.config.decode)})
        publish_replacing(model_dir, out, tmp / "replaced")  # an earlier export moves aside
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


