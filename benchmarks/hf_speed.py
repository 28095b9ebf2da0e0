"""A Marian model decoded three ways, side by side: transformers' `generate`, mt
(the model imported with `mt import huggingface`), and CTranslate2 (the imported run exported with
`mt export --format ctranslate2`), float32, greedy and beam 4, on Multi30k test2016 English; and
mt's int8 (`mt translate --int8`) against CTranslate2's int8.

    python benchmarks/hf_speed.py [--lines 500] [--threads 2] [--max-len 40] [--layers 6] [--d-model 512]
        [--settings greedy,beam4,int8-greedy,int8-beam4] [--data DIR] [--output FILE]

The model is Marian-base sized (6+6 layers, d_model 512, 8 heads, ff 2048, swish, scaled and shared
embeddings, as OPUS-MT's) with random weights and SentencePiece models of up to 8000 pieces per side
trained on Multi30k's training text; nothing is downloaded. A random model rarely ends a sentence,
so every engine decodes up to the same fixed length (--max-len new tokens; mt: max_len_a 0,
max_len_b; CTranslate2: max_decoding_length): the measure is target tokens per second, counted
from each engine's own output. The same batches for all (--batch sentences, sorted by length),
<pad> never generated (transformers: bad_words_ids; mt masks it; CTranslate2:
suppress_sequences), length penalty 1.0, early stopping. Times exclude loading and
SentencePiece. Engines alternate setting by setting: transformers and mt in this process (one
torch), CTranslate2 in a process of its own (benchmarks/fresh.py), as is the
export to it, so that CTranslate2's OpenMP runtime never shares a process with torch's timings.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import fresh  # noqa: E402

import sentencepiece as spm  # noqa: E402
import transformers  # noqa: E402

from mt.config import DecodeConfig  # noqa: E402
from mt.data.text import read_lines  # noqa: E402
from mt.decode.quantize import quantize_int8  # noqa: E402
from mt.decode.translator import Translator, load_run  # noqa: E402
from mt.interop.huggingface import import_huggingface  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=common.DEFAULT_DATA, help=f"Multi30k folder (default {common.DEFAULT_DATA})")
    p.add_argument("--lines", type=int, default=500, help="first N lines of test_2016_flickr.en (default 500)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-len", type=int, default=40, help="new tokens per sentence (default 40)")
    p.add_argument("--batch", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--settings", default="greedy,beam4,int8-greedy,int8-beam4")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", default=None)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # a job file (CTranslate2)
    return p.parse_args()


def marian_folder(args: argparse.Namespace, folder: Path) -> Path:
    """A random Marian-base model with its MarianTokenizer files, as save_pretrained writes them."""
    data = common.data_dir(args)
    pieces = ["</s>", "<unk>"]
    for name, lang in (("source", "en"), ("target", "de")):
        lines = read_lines(data / f"train.{lang}.gz")
        spm.SentencePieceTrainer.Train(sentence_iterator=iter(lines), model_prefix=str(folder / name),
                                       vocab_size=8000, hard_vocab_limit=False, minloglevel=2,
                                       num_threads=args.threads)
        (folder / f"{name}.model").rename(folder / f"{name}.spm")
        sp = spm.SentencePieceProcessor(model_file=str(folder / f"{name}.spm"))
        pieces += [sp.IdToPiece(i) for i in range(sp.GetPieceSize()) if not (sp.IsControl(i) or sp.IsUnknown(i))]
    pieces = list(dict.fromkeys(pieces)) + ["<pad>"]
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}), encoding="utf-8")
    d, n = args.d_model, len(pieces)
    cfg = transformers.MarianConfig(
        vocab_size=n, d_model=d, encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
        max_position_embeddings=512, pad_token_id=n - 1, eos_token_id=0, decoder_start_token_id=n - 1,
        forced_eos_token_id=0, activation_function="swish", scale_embedding=True, bad_words_ids=[[n - 1]])
    torch.manual_seed(args.seed)
    model = transformers.MarianMTModel(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    transformers.MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"),
                                 str(folder / "vocab.json")).save_pretrained(folder)
    return folder


def _batches(n: int, lengths: list[int], size: int) -> list[list[int]]:
    order = sorted(range(n), key=lambda i: -lengths[i])
    return [order[i: i + size] for i in range(0, n, size)]


def run_transformers(model, tok, lines: list[str], batches, beam: int, max_len: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in lines]
    eos = model.config.eos_token_id
    for batch in batches:
        enc = tok([lines[i] for i in batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            gen = model.generate(**enc, num_beams=beam, max_new_tokens=max_len, do_sample=False,
                                 length_penalty=1.0, early_stopping=True if beam > 1 else None)
        for i, seq in zip(batch, gen.tolist()):
            seq = seq[1:]
            out[i] = seq[: seq.index(eos)] if eos in seq else seq
    return out


def run_mt(translator: Translator, ids: list[list[int]], batches) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in ids]
    for batch in batches:
        for i, hyps in zip(batch, translator.search_ids([ids[i] for i in batch])):
            out[i] = hyps[0].tokens
    return out


def ct2_worker(job: dict) -> dict:
    """In a process of its own: export the imported run (job "export"), or time CTranslate2 on the
    batches (job "translate")."""
    if job["job"] == "export":
        from mt.interop.ctranslate2 import export_ctranslate2

        return {"dir": str(export_ctranslate2(Path(job["run"]), Path(job["out"])))}
    import ctranslate2

    engine = ctranslate2.Translator(job["dir"], device="cpu", compute_type=job["compute_type"], inter_threads=1,
                                    intra_threads=job["threads"])
    pieces, batches, beam, max_len = job["pieces"], job["batches"], job["beam"], job["max_len"]

    def run(batches):
        out: list[list[str]] = [[] for _ in pieces]
        for batch in batches:
            res = engine.translate_batch([pieces[i] for i in batch], beam_size=beam, length_penalty=1.0,
                                         max_decoding_length=max_len - 1, min_decoding_length=0,
                                         suppress_sequences=[["<pad>"]])
            for i, r in zip(batch, res):
                out[i] = r.hypotheses[0]
        return out

    run(batches[:1])  # warm-up
    out, seconds = timed(run, batches)
    return {"pieces": out, "seconds": seconds, "version": ctranslate2.__version__}


def timed(fn, *a):
    t0 = time.perf_counter()
    result = fn(*a)
    return result, time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        return fresh.answer(args.worker, ct2_worker)
    torch.set_num_threads(args.threads)
    lines = read_lines(common.data_dir(args) / "test_2016_flickr.en.gz")[: args.lines]
    env = common.environment(torch.device("cpu"))
    common.warn_if_loaded(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common.log("building the random Marian model")
        (tmp / "hf").mkdir()
        folder = marian_folder(args, tmp / "hf")
        import_huggingface(str(folder), tmp / "run")
        ct2_dir = fresh.in_fresh_process(__file__, {"job": "export", "run": str(tmp / "run"),
                                                     "out": str(tmp / "ct2")}, tmp)["dir"]
        hf = transformers.MarianMTModel.from_pretrained(folder).eval()
        tok = transformers.MarianTokenizer.from_pretrained(folder)
        run = load_run(tmp / "run")
        ct2 = {"job": "translate", "dir": ct2_dir, "threads": args.threads}
        rows = json.loads((tmp / "run" / "meta.json").read_text())["imported_from"]["marian_rows"]
        ids = run.src_vocab.encode_batch(lines)
        pieces = [run.src_vocab.pieces(x) for x in ids]
        batches = _batches(len(lines), [len(x) for x in ids], args.batch)
        results = [setting_row(s, args, hf, tok, run, ct2, lines, ids, pieces, batches, rows, tmp)
                   for s in args.settings.split(",")]
    doc = {"benchmark": "hf_speed", "lines": len(lines), "threads": args.threads, "max_new_tokens": args.max_len,
           "model": {"layers": f"{args.layers}+{args.layers}", "d_model": args.d_model, "vocab": len(rows),
                     "weights": "random (seed %d)" % args.seed},
           "versions": {"transformers": transformers.__version__, "ctranslate2": results[0]["ctranslate2_version"],
                        "torch": torch.__version__},
           "results": results, "environment": env}
    common.emit(doc, args)


def setting_row(setting, args, hf, tok, run, ct2, lines, ids, pieces, batches, rows, tmp) -> dict:
    """greedy, beam4: the three engines in float32; int8-greedy, int8-beam4: mt --int8 against
    CTranslate2's int8 (transformers has no int8 decoding on the CPU to set beside them)."""
    int8 = setting.startswith("int8-")
    beam = 4 if setting.endswith("beam4") else 1
    decode = DecodeConfig(search="beam" if beam > 1 else "greedy", beam=beam, len_penalty="d2l", alpha=1.0,
                          early_stop=True, max_len_a=0.0, max_len_b=args.max_len - 1, copy_unseen=False,
                          max_repeat=0)  # transformers has no loop guard
    model = run.model if not int8 else quantize_int8(copy.deepcopy(run.model))
    translator = Translator.for_model(model, run.src_vocab, run.tgt_vocab, decode, "cpu")
    warm = batches[:1]
    run_mt(translator, ids, warm)
    engines = ["mt", "ctranslate2"]
    if not int8:
        engines.insert(0, "transformers")
        run_transformers(hf, tok, lines, warm, beam, args.max_len)
        common.log(f"{setting}: transformers")
        theirs, t_hf = timed(run_transformers, hf, tok, lines, batches, beam, args.max_len)
    common.log(f"{setting}: mt")
    mine, t_mt = timed(run_mt, translator, ids, batches)
    common.log(f"{setting}: CTranslate2 (a process of its own)")
    res = fresh.in_fresh_process(__file__, dict(ct2, pieces=pieces, batches=batches, beam=beam, max_len=args.max_len,
                                                 compute_type="int8" if int8 else "float32"), tmp)
    ct2_out, t_ct2 = res["pieces"], res["seconds"]
    mine_hf = [[rows[t] for t in m] for m in mine]
    ct2_hf = [[rows[run.tgt_vocab.sp.PieceToId(p)] for p in h] for h in ct2_out]
    outputs = {"mt": mine_hf, "ctranslate2": ct2_hf, **({} if int8 else {"transformers": theirs})}
    seconds = {"mt": t_mt, "ctranslate2": t_ct2, **({} if int8 else {"transformers": t_hf})}
    tokens = {name: sum(len(o) + 1 for o in outs) for name, outs in outputs.items()}
    speed = {name: round(tokens[name] / seconds[name], 1) for name in engines}
    row = {"setting": setting, "seconds": {k: round(seconds[k], 2) for k in engines},
           "target_tokens_per_second": speed,
           **({} if int8 else {"mt_over_transformers": round(speed["mt"] / speed["transformers"], 2)}),
           "mt_over_ctranslate2": round(speed["mt"] / speed["ctranslate2"], 2),
           "identical_to_mt": {name: sum(a == b for a, b in zip(outputs[name], mine_hf))
                               for name in engines if name != "mt"},
           "mean_output_tokens": round(tokens["mt"] / len(lines) - 1, 1), "ctranslate2_version": res["version"]}
    common.log(f"  {row}")
    return row


if __name__ == "__main__":
    main()
