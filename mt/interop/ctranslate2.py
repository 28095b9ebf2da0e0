"""`mt export --format ctranslate2`: a Transformer run as a CTranslate2 model directory.

The conversion goes through ctranslate2's own converter API, as its fairseq, OpenNMT-py and
Marian converters do: `CTranslate2Converter(run)._load()` fills a `TransformerSpec` with the run's
weights, and `Converter.convert` validates, optionally quantizes and saves it. The SentencePiece
model(s) are copied beside it, so the usual CTranslate2 code works on the directory:

    sp = sentencepiece.SentencePieceProcessor("DIR/spm.model")   # source.spm.model if not joint
    translator = ctranslate2.Translator("DIR", compute_type="int8")
    out = translator.translate_batch([sp.encode(line, out_type=str)], beam_size=5, length_penalty=0.6)
    print(sp.decode(out[0].hypotheses[0]))

How mt's Transformer maps onto the spec (mt/models/transformer.py):
- pre-norm (x + f(norm(x)), final layer norms) or post-norm (norm(x + f(x))): `pre_norm`;
- token embedding x sqrt(d_model) (x 1 without model.embed_scale) + position: `scale_embeddings`;
- positions: mt's sinusoidal table interleaves sin/cos (CTranslate2's built-in one concatenates
  them), so the table itself is written to `position_encodings`, as learned positions are;
- self-attention's fused q|k|v and cross-attention's q and fused k|v Linear layers are exactly
  the spec's `linear[0]`, `linear[1]` layouts; the output projection has no bias;
- shared source/target embeddings and the tied output projection are the same arrays (the spec
  stores one copy); LayerNorm epsilon 1e-5 (torch's);
- the source ends with </s> (`add_source_eos`), decoding starts from <s> (`decoder_start_token`).

Decoding differences that stay (see `mt_export.json` in the directory): CTranslate2's length
penalty is `score / length ** alpha` (mt's `d2l`; there is no GNMT form), its maximum length is a
fixed `max_decoding_length` (not a * source length + b), and it does not mask <pad>/<s> at each
step as mt does (a trained model gives them no probability).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from ctranslate2.converters.converter import Converter
from ctranslate2.specs import common_spec, transformer_spec

from mt import MTError, __version__
from mt.config import TransformerConfig
from mt.files import publish_replacing, temp_dir
from mt.decode.translator import Run, load_run
from mt.rundir import check_export_target

#: every TransformerConfig field and whether the spec can express its value; a field missing here
#: (one added to mt later) is refused by name rather than silently dropped
_EXPRESSIBLE = {
    "arch": lambda v: v == "transformer",
    "d_model": lambda v: True,
    "heads": lambda v: True,
    "enc_layers": lambda v: True,
    "dec_layers": lambda v: True,
    "ff_dim": lambda v: True,
    "dec_heads": lambda v: True,  # each side's spec has its own heads
    "dec_ff_dim": lambda v: True,  # the weights' shapes carry the widths
    "dropout": lambda v: True,  # training only
    "attn_dropout": lambda v: True,  # training only
    "activation": lambda v: v in _ACTIVATIONS,
    "norm": lambda v: v in ("pre", "post"),
    "positions": lambda v: v in ("sinusoidal", "sinusoidal_concat", "learned"),  # the table is written
    "max_positions": lambda v: True,
    "share_embeddings": lambda v: True,
    "tie_output": lambda v: True,
    "embed_scale": lambda v: True,  # the spec's scale_embeddings
    "output_bias": lambda v: True,  # the spec's output projection's bias
}
# torch's nn.GELU() is the exact (erf) form: CTranslate2's GELU, not GELUTanh
_ACTIVATIONS = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU,
                "swish": common_spec.Activation.SWISH}
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which mt's layers use
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")


def check_exportable(cfg) -> None:
    """An MTError naming the first model option CTranslate2's TransformerSpec cannot express."""
    if not isinstance(cfg, TransformerConfig):
        arch = getattr(cfg, "arch", type(cfg).__name__)
        raise MTError(f"model.arch={arch}: CTranslate2 has no RNN encoder-decoders (it runs Transformer models); "
                      "only Transformer runs can be exported")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        ok = _EXPRESSIBLE.get(f.name)
        if ok is None or not ok(value):
            raise MTError(f"model.{f.name}={value!r}: CTranslate2's TransformerSpec has no equivalent; "
                          "this run cannot be exported")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


class CTranslate2Converter(Converter):
    """Converts an mt Transformer run (loaded with mt.decode.translator.load_run) to a CTranslate2 TransformerSpec."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._arrays: dict[int, np.ndarray] = {}  # one numpy array per torch parameter (shared embeddings)

    def _load(self) -> transformer_spec.TransformerSpec:
        cfg, model = self.run.config.model, self.run.model
        check_exportable(cfg)
        # from_config(num_layers, num_heads, ...) takes one head count; the two specs take one each
        activation, pre_norm = _ACTIVATIONS[cfg.activation], cfg.norm == "pre"
        spec = transformer_spec.TransformerSpec(
            transformer_spec.TransformerEncoderSpec(cfg.enc_layers, cfg.heads, pre_norm=pre_norm, activation=activation),
            transformer_spec.TransformerDecoderSpec(cfg.dec_layers, cfg.decoder_heads, pre_norm=pre_norm,
                                                    activation=activation))
        self._embedder(spec.encoder, model.src_embed, cfg.embed_scale)
        self._embedder(spec.decoder, model.tgt_embed, cfg.embed_scale)
        for layer_spec, layer in zip(spec.encoder.layer, model.encoder):
            self._attention(layer_spec.self_attention, layer.attn, layer.sub_attn.norm)
            self._ffn(layer_spec.ffn, layer.ff, layer.sub_ff.norm)
        for layer_spec, layer in zip(spec.decoder.layer, model.decoder):
            self._attention(layer_spec.self_attention, layer.self_attn, layer.sub_self.norm)
            self._attention(layer_spec.attention, layer.cross_attn, layer.sub_cross.norm)
            self._ffn(layer_spec.ffn, layer.ff, layer.sub_ff.norm)
        if cfg.norm == "pre":
            self._norm(spec.encoder.layer_norm, model.enc_norm)
            self._norm(spec.decoder.layer_norm, model.dec_norm)
        # tied: the same array as the target embedding, which the spec saves once
        output = _np(model.output.weight)
        spec.decoder.projection.weight = spec.decoder.embeddings.weight if cfg.tie_output else output
        if model.output.bias is not None:
            spec.decoder.projection.bias = _np(model.output.bias)
        spec.config.add_source_eos = True
        spec.config.decoder_start_token = "<s>"
        spec.config.layer_norm_epsilon = LAYER_NORM_EPS
        src_vocab, tgt_vocab = self.run.src_vocab, self.run.tgt_vocab
        spec.register_source_vocabulary([src_vocab.sp.IdToPiece(i) for i in range(len(src_vocab))])
        spec.register_target_vocabulary([tgt_vocab.sp.IdToPiece(i) for i in range(len(tgt_vocab))])
        return spec

    def _embedder(self, spec, embedder, scale: bool) -> None:
        embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
        # a shared embedding is one numpy array for both sides (the spec saves aliases once)
        weight = embedder.tokens.weight
        embeddings.weight = self._arrays.setdefault(id(weight), _np(weight))
        spec.scale_embeddings = scale  # x sqrt(d_model), as mt's Embedder with model.embed_scale
        table = embedder.positions.weight if embedder.positions is not None else embedder.table
        spec.position_encodings.encodings = _np(table)

    @staticmethod
    def _attention(spec, attn, norm) -> None:
        if attn.self_attention:
            _linear(spec.linear[0], attn.qkv)
        else:
            _linear(spec.linear[0], attn.q)
            _linear(spec.linear[1], attn.kv)
        _linear(spec.linear[-1], attn.out)
        CTranslate2Converter._norm(spec.layer_norm, norm)

    @staticmethod
    def _ffn(spec, ff, norm) -> None:
        _linear(spec.linear_0, ff.fc1)
        _linear(spec.linear_1, ff.fc2)
        CTranslate2Converter._norm(spec.layer_norm, norm)

    @staticmethod
    def _norm(spec, norm) -> None:
        spec.gamma, spec.beta = _np(norm.weight), _np(norm.bias)


def _linear(spec, linear) -> None:
    spec.weight = _np(linear.weight)
    if linear.bias is not None:
        spec.bias = _np(linear.bias)


def decoding_options(run: Run) -> dict:
    """The run's `decode` section as ctranslate2.Translator.translate_batch options, and what they lack."""
    d, cfg = run.config.decode, run.config.model
    limit = cfg.max_positions - 1  # positions beyond the exported table do not exist
    options = {
        "beam_size": 1 if d.search == "greedy" else d.beam,
        "num_hypotheses": d.n_best,
        "length_penalty": {"d2l": d.alpha, "none": 0.0}.get(d.len_penalty, d.alpha),
        "min_decoding_length": d.min_len,
        "max_decoding_length": min(256, limit),
        "max_input_length": limit,
        "no_repeat_ngram_size": d.no_repeat_ngram,
        "repetition_penalty": d.repetition_penalty,
    }
    notes = ["CTranslate2's maximum length is fixed (max_decoding_length), not "
             f"{d.max_len_a} * source length + {d.max_len_b} as in mt"]
    if d.len_penalty == "gnmt":
        notes.append(f"the run's GNMT length penalty ((5 + L) / 6) ** {d.alpha} has no CTranslate2 form; "
                     f"length_penalty={d.alpha} is L ** {d.alpha}, what `mt translate --len-penalty d2l` uses")
    if d.search == "sampling":
        notes.append("the run samples: use sampling_topk / sampling_topp / sampling_temperature")
    if d.repetition_penalty != 1.0:
        notes.append("repetition_penalty: CTranslate2 applies it to the logits, mt to the log-probabilities "
                     "(which it renormalises); the same setting penalises alike but not identically")
    if d.max_repeat > 0:
        notes.append(f"not passed: max_repeat={d.max_repeat} (mt's loop guard) has no CTranslate2 option; "
                     "no_repeat_ngram_size is the nearest")
    notes.append("not passed: per-line constraints (phrases the output must contain) have no CTranslate2 "
                 "option; per-line avoid lists map only to suppress_sequences, which holds for the whole batch")
    placeholders = min(run.src_vocab.placeholders, run.tgt_vocab.placeholders) if d.placeholders else 0
    if placeholders:
        notes.append(f"placeholders: the model carries {placeholders} placeholders (⦅0⦆...) across; masking and "
                     "restoring happen outside the engine: mask each line before translate_batch and restore each "
                     "output after it (mt.data.placeholders: Protector.mask, Masked.restore), as mt translate does")
    return {"translate_batch": options, "notes": notes, "placeholders": placeholders}


def export_ctranslate2(run_dir: str | Path, out: str | Path, checkpoint: str = "best",
                       quantization: str | None = None, force: bool = False) -> Path:
    """Write the CTranslate2 model of `run_dir` to `out` (a new directory; `force` replaces one).
    The directory appears whole or not at all: it is written under a temporary name first."""
    run_dir, out = Path(run_dir), Path(out)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise MTError(f"unknown quantization {quantization!r} (use {', '.join(QUANTIZATIONS)})")
    check_export_target(run_dir, out, force)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise MTError(f"{parent}: no such directory for the exported model")
    run = load_run(run_dir, "cpu", checkpoint)
    check_exportable(run.config.model)  # before any writing
    tmp = temp_dir(parent, f".{out.name}.")
    try:
        model_dir = tmp / "model"
        CTranslate2Converter(run).convert(str(model_dir), quantization=quantization)
        joint = run.src_vocab.path == run.tgt_vocab.path
        if joint:
            shutil.copyfile(run.src_vocab.path, model_dir / "spm.model")
        else:
            shutil.copyfile(run.src_vocab.path, model_dir / "source.spm.model")
            shutil.copyfile(run.tgt_vocab.path, model_dir / "target.spm.model")
        info = {
            "exported_by": f"mt {__version__}",
            "run": str(run_dir),
            "checkpoint": checkpoint,
            "quantization": quantization or "float32",
            "source_language": run.config.data.src_lang,
            "target_language": run.config.data.tgt_lang,
            "sentencepiece": {"source": "spm.model" if joint else "source.spm.model",
                              "target": "spm.model" if joint else "target.spm.model"},
            **decoding_options(run),
        }
        (model_dir / "mt_export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        publish_replacing(model_dir, out, tmp / "replaced")  # an earlier export moves aside (deleted below)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
