"""Decoding speed: greedy and beam search over batch sizes, for a Transformer base and an attention
GRU, on Multi30k test_2016_flickr en->de; a naive unbatched, uncached beam search as the
reference point; mt.decode.translator.Translator end to end once.

    python benchmarks/translate_speed.py [--quick] [--device auto|cpu|cuda] [--data DIR] ...

Prints one JSON document on stdout (progress on stderr). See benchmarks/README.md.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mt.config import DecodeConfig  # noqa: E402
from mt.data.batching import TokenBatcher, source_tensor  # noqa: E402
from mt.device import set_decoding_dtype  # noqa: E402
from mt.models.base import DecoderState, Seq2Seq  # noqa: E402
from mt.decode.quantize import quantize_int8  # noqa: E402
from mt.decode.search import BeamSearch, GreedySearch, LengthPenalty, Search  # noqa: E402
from mt.data.text import read_lines  # noqa: E402
from mt.decode.translator import Translator  # noqa: E402

NEG_INF = float("-inf")


def parse_args():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default=None, help="sentences per batch (default 1,8,32,64,128; quick 1,64)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--sentences", type=int, default=None, help="test sentences (default 1000 = all; quick 64)")
    p.add_argument("--small-batch-sentences", type=int, default=None,
                   help="at most this many sentences for batch sizes below 8, chosen across the length range "
                        "(default 200; quick 8)")
    p.add_argument("--ref-sentences", type=int, default=None,
                   help="sentences for the naive reference beam search (default 30; quick 2; 0: skip)")
    p.add_argument("--max-len-a", type=float, default=None, help="max output length a*src_len+b (default 1.0)")
    p.add_argument("--max-len-b", type=int, default=None, help="(default 0)")
    p.add_argument("--train-steps", type=int, default=0,
                   help="train each model this many steps on Multi30k train first (weights cached in "
                        "benchmarks/.cache/) so it emits eos by itself; then the length caps default to "
                        "the decode defaults (1.5, 10). 0 (default): random weights with a=1.0, b=0 caps")
    p.add_argument("--no-translator", action="store_true", help="skip the Translator end-to-end run")
    p.add_argument("--int8", action="store_true",
                   help="decode with int8 weights (mt.decode.quantize.quantize_int8, as `mt translate --int8`); CPU only")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="decode in this precision (as `mt translate --dtype`); float16: CUDA only")
    p.add_argument("--breakdown", default=None,
                   help="batch sizes at which to time the parts of beam search (encode, init_state, decode_step, "
                        "state expand/select/keep_sentences, rest); "
                        "default 1,64 (quick 64); 'none' to skip")
    args = p.parse_args()
    q = args.quick
    args.batch_sizes = common.int_list(args.batch_sizes or ("1,64" if q else "1,8,32,64,128"))
    args.sentences = args.sentences or (64 if q else 1000)
    args.breakdown = [] if args.breakdown == "none" else common.int_list(args.breakdown or ("64" if q else "1,64"))
    args.small_batch_sentences = args.small_batch_sentences or (8 if q else 200)
    if args.ref_sentences is None:
        args.ref_sentences = 2 if q else 30
    trained = args.train_steps > 0
    if args.max_len_a is None:
        args.max_len_a = DecodeConfig.max_len_a if trained else 1.0
    if args.max_len_b is None:
        args.max_len_b = DecodeConfig.max_len_b if trained else 0
    return args


def spread(order: list[int], n: int) -> list[int]:
    """n items evenly spaced over `order` (sorted by length: the subset keeps the length mix)."""
    if n >= len(order):
        return list(order)
    return [order[int((i + 0.5) * len(order) / n)] for i in range(n)]


# ----------------------------------------------------------------------------------------------
# the batched searches of mt


def make_search(kind: str, args) -> Search:
    common_kw = dict(max_len_a=args.max_len_a, max_len_b=args.max_len_b)
    if kind == "greedy":
        return GreedySearch(**common_kw)
    d = DecodeConfig()
    return BeamSearch(beam=args.beam, len_penalty=LengthPenalty(d.len_penalty, d.alpha), early_stop=d.early_stop,
                      **common_kw)


def run_search(model: Seq2Seq, search: Search, src_ids: list[list[int]], ids: list[int], batch_size: int,
               device: torch.device) -> tuple[dict[int, list[int]], int]:
    """Translate sentences `ids` longest first in batches of `batch_size` sentences (the
    translator sorts the same way); returns best tokens per sentence and batches run."""
    order = sorted(ids, key=lambda i: len(src_ids[i]), reverse=True)
    out: dict[int, list[int]] = {}
    batches = 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        src, lengths = source_tensor([src_ids[i] for i in chunk])
        hyps = search(model, src.to(device), lengths.to(device))
        for i, h in zip(chunk, hyps):
            out[i] = h[0].tokens if h else []
        batches += 1
    return out, batches


def measure_search(model, search: Search, src_ids, ids, batch_size, device, repeats: int = 1
                   ) -> tuple[dict, dict[int, list[int]]]:
    """Time `search` over sentences `ids` in batches of `batch_size`: the fastest of `repeats` runs."""
    best = None
    for _ in range(repeats):
        with common.Measure(device) as m:
            out, batches = run_search(model, search, src_ids, ids, batch_size, device)
        if best is None or m.seconds < best[0].seconds:
            best = (m, out)
    m, out = best
    tokens = sum(len(t) + 1 for t in out.values())  # eos included
    n = len(ids)
    rec = {
        "search": f"beam{search.beam}" if isinstance(search, BeamSearch) else "greedy",
        "batch_size": batch_size,
        "sentences": n,
        "batches": batches,
        "sentences_per_s": round(n / m.seconds, 3),
        "tokens_per_s": round(tokens / m.seconds, 2),
        "ms_per_sentence": round(1000 * m.seconds / n, 2),
        # process CPU time per sentence: steadier than wall time when other processes share the cores
        "cpu_ms_per_sentence": round(1000 * m.cpu_seconds / n, 2),
        "mean_output_tokens": round(tokens / n, 2),
        "runs": repeats,
        **m.record(),
    }
    return rec, out


# ----------------------------------------------------------------------------------------------
# the reference point: one sentence at a time, beam as a Python list, no cache


@torch.inference_mode()
def naive_beam(model: Seq2Seq, src_ids: list[int], beam: int, max_len: int, lp: LengthPenalty,
               device: torch.device) -> list[int]:
    """Textbook beam search: for every open hypothesis and step, model.forward over the whole
    source and the whole target prefix (no encoder reuse, no KV cache, no batching of hypotheses).
    Same rules as mt.decode.search.BeamSearch (2 x beam candidates, eos among the best `beam` ends a
    hypothesis, at most max_len tokens before eos, pad/bos never, stop when `beam` have ended),
    so its output should equal the batched search's."""
    src, lengths = source_tensor([src_ids])
    src, lengths = src.to(device), lengths.to(device)
    eos = model.eos_id
    open_hyps: list[tuple[list[int], float]] = [([model.bos_id], 0.0)]
    ended: list[tuple[float, list[int]]] = []  # (normalised score, tokens)
    step = 0
    while open_hyps:
        cands: list[tuple[float, list[int], int]] = []
        for prefix, score in open_hyps:
            logits = model(src, lengths, torch.tensor([prefix], device=device))[0, -1]
            logp = logits.float().log_softmax(-1)
            logp[model.pad_id] = NEG_INF
            logp[model.bos_id] = NEG_INF
            if step >= max_len:  # only eos is allowed
                e = float(logp[eos])
                logp.fill_(NEG_INF)
                logp[eos] = e if math.isfinite(e) else 0.0
            values, tokens = logp.topk(min(2 * beam, logp.numel()))
            cands.extend((score + v, prefix, t) for v, t in zip(values.tolist(), tokens.tolist()))
        cands.sort(key=lambda c: -c[0])
        cands = cands[: 2 * beam]
        new_open: list[tuple[list[int], float]] = []
        for rank, (score, prefix, tok) in enumerate(cands):
            if not math.isfinite(score):
                continue
            if tok == eos:
                if rank < beam:
                    ended.append((score / float(lp(float(step + 1))), prefix[1:]))
            elif len(new_open) < beam:
                new_open.append((prefix + [tok], score))
        open_hyps = new_open
        step += 1
        if len(ended) >= beam:
            break
    ended.sort(key=lambda e: -e[0])
    return ended[0][1] if ended else []


def measure_reference(model, args, src_ids, ids, device) -> tuple[dict, dict[int, list[int]]]:
    search = make_search("beam", args)
    max_lens = search.max_lengths(model, torch.tensor([len(src_ids[i]) + 1 for i in ids]))
    out: dict[int, list[int]] = {}
    with common.Measure(device) as m:
        for i, ml in zip(ids, max_lens.tolist()):
            out[i] = naive_beam(model, src_ids[i], args.beam, ml, search.lp, device)
    tokens = sum(len(t) + 1 for t in out.values())
    rec = {
        "search": f"naive beam{args.beam}: one sentence at a time, hypotheses in a Python list, "
                  "model.forward over source and whole prefix per hypothesis and step (no cache)",
        "sentences": len(ids),
        "sentences_per_s": round(len(ids) / m.seconds, 4),
        "tokens_per_s": round(tokens / m.seconds, 3),
        "ms_per_sentence": round(1000 * m.seconds / len(ids), 1),
        "cpu_ms_per_sentence": round(1000 * m.cpu_seconds / len(ids), 1),
        "mean_output_tokens": round(tokens / len(ids), 2),
        **m.record(),
    }
    return rec, out


# ----------------------------------------------------------------------------------------------
# where beam time goes


def breakdown(model, args, src_ids, ids, batch_size, device) -> dict:
    """Beam search at `batch_size` with encode, init_state, decode_step and the DecoderState methods
    the search calls (expand, select_, keep_sentences_) timed (wrapped for this run only; with a
    device sync around each call on CUDA)."""
    methods = ("expand", "select_", "keep_sentences_")
    timers = {"encode": 0.0, "init_state": 0.0, "decode_step": 0.0, **{f"state.{m}": 0.0 for m in methods}}
    calls = {k: 0 for k in timers}

    def timed(name, fn):
        def wrapper(*a, **kw):
            common.sync(device)
            t = time.perf_counter()
            r = fn(*a, **kw)
            common.sync(device)
            timers[name] += time.perf_counter() - t
            calls[name] += 1
            return r
        return wrapper

    originals = {m: getattr(DecoderState, m) for m in methods}
    model.encode = timed("encode", model.encode)
    model.init_state = timed("init_state", model.init_state)
    model.decode_step = timed("decode_step", model.decode_step)
    for m, fn in originals.items():
        setattr(DecoderState, m, timed(f"state.{m}", fn))
    try:
        rec, _ = measure_search(model, make_search("beam", args), src_ids, ids, batch_size, device)
    finally:
        for m, fn in originals.items():
            setattr(DecoderState, m, fn)
        for name in ("encode", "init_state", "decode_step"):
            delattr(model, name)  # the instance attribute set above; the class method shows again
    total = rec["seconds"]
    parts = {k: {"seconds": round(v, 3), "share": round(v / total, 3), "calls": calls[k]} for k, v in timers.items()}
    rest = total - sum(timers.values())
    parts["search bookkeeping (topk, masks, cat, Python)"] = {"seconds": round(rest, 3), "share": round(rest / total, 3)}
    return {"batch_size": batch_size, "sentences": len(ids), "total_seconds": total, "parts": parts}


# ----------------------------------------------------------------------------------------------
# length control by training (optional)


def trained_model(name, vocab, args, device) -> Seq2Seq:
    from mt.checkpoint import load_weights, save_weights

    model = common.make_model(name, len(vocab), args.seed, device)
    path = common.CACHE / f"{name}-{len(vocab)}-{args.train_steps}steps-seed{args.seed}.safetensors"
    if path.is_file():
        load_weights(model, path)
        common.log(f"{name}: loaded {path.name}")
        return model
    src, tgt = common.train_pairs(args, vocab)
    batches = TokenBatcher.from_lists(src, tgt, 4096, args.seed)
    stepper = common.Stepper(name, model, device, lr=5e-4, warmup=min(4000, max(args.train_steps // 4, 1)))
    order = [b for e in range(100) for b in batches.epoch_batches(e)]
    t = time.perf_counter()
    for step in range(args.train_steps):
        loss, ntok = stepper.step(batches.collate(order[step]))
        if (step + 1) % 50 == 0 or step == 0:
            common.log(f"{name}: train step {step + 1}/{args.train_steps} loss {loss / ntok:.3f} "
                       f"({time.perf_counter() - t:.0f}s)")
    common.CACHE.mkdir(parents=True, exist_ok=True)
    save_weights(model, path)
    return model


# ----------------------------------------------------------------------------------------------


@dataclass
class Sentences:
    """Which test sentences each measurement decodes (indices into the test set)."""

    ids: list[int]  # the batch-size runs
    by_len: list[int]  # ids sorted by source length
    small: list[int]  # batch sizes below 8: a subset with the same length mix
    reference: list[int]  # the naive reference beam search: a subset of those at reference_batch_size
    reference_batch_size: int


def choose_sentences(args, src_ids: list[list[int]]) -> Sentences:
    by_len = sorted(range(len(src_ids)), key=lambda i: (len(src_ids[i]), i))
    ids = sorted(spread(by_len, args.sentences))
    ids_by_len = sorted(ids, key=lambda i: (len(src_ids[i]), i))  # the smaller sets are subsets of ids
    small = sorted(spread(ids_by_len, min(args.small_batch_sentences, len(ids))))
    # the reference is compared with the batched beam search at ref_bs, so its sentences are a
    # subset of the ones decoded at that batch size
    ref_bs = 64 if 64 in args.batch_sizes else max(args.batch_sizes)
    ref_pool = sorted(small if ref_bs < 8 else ids, key=lambda i: (len(src_ids[i]), i))
    ref_ids = sorted(spread(ref_pool, min(args.ref_sentences, len(ref_pool)))) if args.ref_sentences else []
    return Sentences(ids, ids_by_len, small, ref_ids, ref_bs)


def setup_record(args, vocab, src_ids: list[list[int]], de: list[str], sents: Sentences) -> dict:
    ids = sents.ids
    ref_de_tokens = sum(len(t) + 1 for t in vocab.encode_batch([de[i] for i in ids])) / len(ids)
    return {
        "data": {
            "test": str(common.data_file(args, "test_2016_flickr.en.gz")),
            "sentences": len(ids),
            "sentences_small_batches": len(sents.small),
            "sentences_reference": len(sents.reference),
            "mean_source_tokens_with_eos": round(sum(len(src_ids[i]) + 1 for i in ids) / len(ids), 2),
            "mean_reference_de_tokens_with_eos": round(ref_de_tokens, 2),
            "subsets": "evenly spaced over the length-sorted test set (same length mix as the whole set)",
        },
        "weights": ("int8 (mt.decode.quantize.quantize_int8: Linear per output row, GRU/LSTM per matrix; "
                    "activations quantized per call)" if args.int8 else args.dtype),
        "vocab": {"kind": "SentencePiece unigram, joint en+de, trained on Multi30k train", "size": len(vocab)},
        "length_control": (
            f"(b) each model trained {args.train_steps} steps on Multi30k train (batch_tokens 4096) so it ends "
            f"sentences itself; caps max_len_a={args.max_len_a}, max_len_b={args.max_len_b}"
            if args.train_steps > 0 else
            f"(c) random seeded weights; output length capped at max_len_a*src_len+max_len_b with "
            f"max_len_a={args.max_len_a}, max_len_b={args.max_len_b} (src_len counts eos): a random model "
            f"rarely emits eos, so outputs are about as long as the source (compare "
            f"mean_output_tokens with mean_reference_de_tokens_with_eos)"
        ),
        "max_len_a": args.max_len_a,
        "max_len_b": args.max_len_b,
        "beam": {"size": args.beam, "len_penalty": f"{DecodeConfig.len_penalty} alpha {DecodeConfig.alpha}",
                 "early_stop": DecodeConfig.early_stop},
        "batching": "by sentence count, longest first (as the translator sorts); batch sizes < 8 on the smaller subset",
        "tokens": "target subword tokens of the best hypothesis, eos included",
        "memory": "CPU: peak RSS of the process during the run (VmHWM reset by /proc/self/clear_refs), delta over "
                  "the RSS at its start; CUDA: torch.cuda.max_memory_allocated",
        "quick": args.quick,
    }


def decoding_model(name: str, vocab, args, device) -> tuple[Seq2Seq, dict]:
    """The model as it will decode (trained or random; int8 or another dtype) and its description."""
    model = trained_model(name, vocab, args, device) if args.train_steps > 0 else common.make_model(
        name, len(vocab), args.seed, device)
    model.eval()
    info = common.model_info(name, model)  # before quantizing: int8 layers hide their weights from parameters()
    if args.int8:
        quantize_int8(model)
    elif args.dtype != "float32":
        set_decoding_dtype(model, args.dtype, device, warn=common.log)
    return model, info


def batch_size_runs(name: str, model, args, src_ids, sents: Sentences, device) -> tuple[list[dict], dict]:
    """Greedy and beam at each batch size: the records, and the outputs by (search, batch size)."""
    runs, outputs = [], {}
    for bs in args.batch_sizes:
        sel = sents.small if bs < 8 else sents.ids
        for kind in ("greedy", "beam"):
            rec, out = measure_search(model, make_search(kind, args), src_ids, sel, bs, device)
            outputs[(kind, bs)] = out
            runs.append(rec)
            common.log(f"{name} {rec['search']:>6} batch {bs:>3}: {rec['sentences_per_s']:8.2f} sent/s "
                       f"{rec['tokens_per_s']:9.1f} tok/s  peak +{rec['peak_delta_mib']} MiB  "
                       f"load {common.load_average()}")
    return runs, outputs


def greedy_vs_beam(runs: list[dict], batch_sizes: list[int]) -> dict:
    """Greedy and beam cost per sentence, at each batch size."""
    per_bs = {}
    for bs in batch_sizes:
        g = next(r for r in runs if r["batch_size"] == bs and r["search"] == "greedy")
        b = next(r for r in runs if r["batch_size"] == bs and r["search"] != "greedy")
        per_bs[str(bs)] = {"greedy_ms_per_sentence": g["ms_per_sentence"], "beam_ms_per_sentence": b["ms_per_sentence"],
                           "beam_over_greedy": round(b["ms_per_sentence"] / g["ms_per_sentence"], 2),
                           "beam_over_greedy_cpu_time": round(b["cpu_ms_per_sentence"] / g["cpu_ms_per_sentence"], 2)}
    return per_bs


def against_reference(name: str, model, args, src_ids, sents: Sentences, runs, outputs, device) -> dict:
    """The naive reference beam search on its sentences, and the batched search's speed-up over it."""
    ref_ids, ref_bs = sents.reference, sents.reference_batch_size
    common.log(f"{name}: naive reference beam search on {len(ref_ids)} sentences")
    ref, ref_out = measure_reference(model, args, src_ids, ref_ids, device)
    batched = next(r for r in runs if r["batch_size"] == ref_bs and r["search"] != "greedy")
    batched_out = outputs[("beam", ref_bs)]
    same = sum(batched_out.get(i) == ref_out[i] for i in ref_ids)
    ref["same_output_as_batched"] = f"{same}/{len(ref_ids)}"
    speedup = {
        "batched": f"beam{args.beam} batch {ref_bs}",
        "ratio_sentences_per_s": round(batched["sentences_per_s"] / ref["sentences_per_s"], 2),
        "ratio_cpu_time_per_sentence": round(ref["cpu_ms_per_sentence"] / batched["cpu_ms_per_sentence"], 2),
        "target": ">= 10 on CPU",
    }
    common.log(f"{name}: reference {ref['sentences_per_s']:.3f} sent/s -> speed-up "
               f"{speedup['ratio_sentences_per_s']}x, same output {same}/{len(ref_ids)}")
    return {"reference": ref, "speedup_vs_reference": speedup}


def translator_run(name: str, model, vocab, args, lines: list[str], device) -> dict:
    """mt.decode.translator.Translator end to end (beam) on `lines`."""
    decode = DecodeConfig(beam=args.beam, max_len_a=args.max_len_a, max_len_b=args.max_len_b, copy_unseen=False)
    batch_tokens = decode.batch_tokens  # the search of make_search("beam", args)
    tr = Translator.for_model(model, vocab, vocab, decode, device, warn=lambda m: None)
    with common.Measure(device) as m:
        result = tr.translate(lines)
    tokens = sum(len(vocab.encode(t.text)) + 1 for t in result)
    rec = {
        "what": f"Translator.translate(lines): encode, token batches of {batch_tokens}, beam{args.beam}, detokenise",
        "batch_tokens": batch_tokens,
        "sentences": len(lines),
        "sentences_per_s": round(len(lines) / m.seconds, 3),
        "tokens_per_s_approx": round(tokens / m.seconds, 2),
        **m.record(),
    }
    common.log(f"{name}: translator {rec['sentences_per_s']} sent/s")
    return rec


def bench_model(name: str, args, vocab, en: list[str], src_ids, sents: Sentences, device) -> dict:
    common.log(f"== {name}")
    model, info = decoding_model(name, vocab, args, device)
    res: dict = {**info, "rss_after_model_mib": common.rss_mib()}
    # warm-up (first-call allocations, kernel selection); not timed
    warm = sents.ids[: min(8, len(sents.ids))]
    for kind in ("greedy", "beam"):
        run_search(model, make_search(kind, args), src_ids, warm, 8, device)
    res["runs"], outputs = batch_size_runs(name, model, args, src_ids, sents, device)
    res["greedy_vs_beam"] = greedy_vs_beam(res["runs"], args.batch_sizes)
    if sents.reference:
        res.update(against_reference(name, model, args, src_ids, sents, res["runs"], outputs, device))
    res["beam_breakdown"] = []
    for bs in args.breakdown:
        sub = sorted(spread(sents.by_len, min(16 if bs < 8 else 128, len(sents.ids))))
        bd = breakdown(model, args, src_ids, sub, bs, device)
        res["beam_breakdown"].append(bd)
        common.log(f"{name}: beam breakdown at batch {bs}: "
                   + ", ".join(f"{k} {v['share']:.0%}" for k, v in bd["parts"].items()))
    if not args.no_translator:
        res["translator"] = translator_run(name, model, vocab, args, [en[i] for i in sents.ids], device)
    return res


def main() -> None:
    args = parse_args()
    device = common.setup(args)
    common.check_weights(device, args.dtype, args.int8)
    doc: dict = {"benchmark": "translate_speed", "environment": common.environment(device)}
    common.log(f"device {device}, {torch.get_num_threads()} threads, load {common.load_average()}")
    common.warn_if_loaded(device)

    vocab = common.joint_vocab(args)
    en = read_lines(common.data_file(args, "test_2016_flickr.en.gz"))
    de = read_lines(common.data_file(args, "test_2016_flickr.de.gz"))
    src_ids = vocab.encode_batch(en)
    sents = choose_sentences(args, src_ids)
    doc["setup"] = setup_record(args, vocab, src_ids, de, sents)
    doc["models"] = {name: bench_model(name, args, vocab, en, src_ids, sents, device) for name in common.models_arg(args)}
    common.emit(doc, args)


if __name__ == "__main__":
    main()
