"""Decoding speed work, one technique at a time: each is replaced by its alternative (the plain
way, or the way tried and dropped) while everything else stays as mt ships it, on the same model,
sentences and batch size, so the JSON shows what each one buys and that none changes the output.

    python benchmarks/decode_ablations.py [--quick] [--models transformer,rnn] [--batch-size 64]

Prints one JSON document on stdout (progress on stderr). See benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from translate_speed import make_search, measure_search, run_search, spread  # noqa: E402

from mt.config import DecodeConfig  # noqa: E402
from mt.data.batching import source_tensor, token_batches  # noqa: E402
from mt.models.base import DecoderState, Seq2Seq  # noqa: E402
from mt.models.transformer import KVCache, Transformer  # noqa: E402
from mt.decode.quantize import quantize_int8  # noqa: E402
from mt.decode.search import BeamSearch, Search  # noqa: E402
from mt.data.text import read_lines  # noqa: E402


def parse_args():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=None, help="sentences per batch (default 64; quick 8)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--sentences", type=int, default=None, help="test sentences (default 128; quick 16)")
    p.add_argument("--sorting-sentences", type=int, default=None,
                   help="test sentences for the length-sorting comparison (default 1000 = all; quick 64)")
    p.add_argument("--repeats", type=int, default=None, help="runs per measurement, fastest kept (default 2; quick 1)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="token budget of the sorted/unsorted comparison (default: the decode default)")
    p.add_argument("--int8", action="store_true", help="int8 weights (mt.decode.quantize.quantize_int8); CPU only")
    args = p.parse_args()
    args.batch_size = args.batch_size or (8 if args.quick else 64)
    args.sentences = args.sentences or (16 if args.quick else 128)
    args.batch_tokens = args.batch_tokens or DecodeConfig.batch_tokens
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.sorting_sentences = args.sorting_sentences or (64 if args.quick else 1000)
    args.max_len_a, args.max_len_b = 1.0, 0  # random weights: outputs capped at the source length
    return args


# ----------------------------------------------------------------------------------------------
# the plain alternatives


class PreallocatedKVCache:
    """The alternative to mt's concatenating cache: one [B, H, max_len, Dh] buffer per layer written
    in place, reordered by copying the filled prefix into a new buffer."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int = 0) -> None:
        self.k, self.v, self.length = k, v, length

    def append(self, k, v):
        n = self.length
        self.k[:, :, n : n + k.size(2)] = k
        self.v[:, :, n : n + v.size(2)] = v
        self.length = n + k.size(2)
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def index_select(self, dim, index):
        shape = (index.numel(),) + self.k.shape[1:]
        out = PreallocatedKVCache(self.k.new_empty(shape), self.v.new_empty(shape), self.length)
        n = self.length
        if n:
            torch.index_select(self.k[:, :, :n], 0, index, out=out.k[:, :, :n])
            torch.index_select(self.v[:, :, :n], 0, index, out=out.v[:, :, :n])
        return out


class EagerKVCache(KVCache):
    """The alternative to the fused reorder: every row selection copies the cache at once
    (index_select), and the next append copies it again (cat)."""

    def index_select(self, dim, index):
        if self.k is None:
            return EagerKVCache()
        return EagerKVCache(self.k.index_select(0, index), self.v.index_select(0, index))


class RideAlong:
    """The alternative to finished sentences leaving the batch: `model` seen through a state whose
    rows never leave. The search sees only its open rows (RideAlongState.open maps them to the
    model's rows); every decode_step runs the model on all rows and hands back the open ones."""

    def __init__(self, model: Seq2Seq) -> None:
        self.model = model

    def __getattr__(self, name: str):  # encode, the special ids, max_tgt_positions
        return getattr(self.model, name)

    def init_state(self, enc, max_len, need_attention=False):
        return RideAlongState(self.model.init_state(enc, max_len, need_attention))

    def decode_step(self, prev_tokens, state):
        state.prev[state.open] = prev_tokens  # finished rows repeat their last token
        lp, attn = self.model.decode_step(state.prev, state.inner)
        return lp[state.open], None if attn is None else attn[state.open]


class RideAlongState:
    """The DecoderState calls the searches make, on a state that keeps every row: dropping rows
    only forgets them (`open`); a reorder of beams moves the open rows and leaves the others."""

    def __init__(self, inner: DecoderState) -> None:
        self.inner = inner
        device = inner.static["src_mask"].device
        self.open = torch.arange(inner.batch_size, device=device)  # model row of each row the search sees
        self.prev = torch.zeros(inner.batch_size, dtype=torch.long, device=device)

    def expand(self, n: int) -> RideAlongState:
        self.inner = self.inner.expand(n)
        self.open = (self.open[:, None] * n + torch.arange(n, device=self.open.device)).view(-1)
        self.prev = self.prev.repeat_interleave(n)
        return self

    def select_(self, index, same_sources: bool = False) -> RideAlongState:
        if same_sources:  # beams reordered within their sentences: rows move
            full = torch.arange(self.prev.numel(), device=index.device)
            full[self.open] = self.open[index]
            self.inner.select_(full, same_sources=True)
            self.prev = self.prev[full]
        else:  # finished rows dropped (distinct rows, in order): they stay in the model's batch
            self.open = self.open[index]
        return self

    def keep_sentences_(self, keep, rows_per_sentence: int) -> RideAlongState:
        r = rows_per_sentence
        self.open = self.open[(keep[:, None] * r + torch.arange(r, device=keep.device)).view(-1)]
        return self


def with_hooks(search: Search, **hooks: Callable) -> Search:
    """`search` with some of its hook methods (Search.grad_mode, Search.start_state, BeamSearch.top)
    replaced on this one object; each function takes the search first, as a method does."""
    for name, hook in hooks.items():
        setattr(search, name, types.MethodType(hook, search))
    return search


def ride_along(search: Search) -> Search:
    """Finished sentences stay in the model's batch to the end: the search runs on RideAlong(model)
    (its __call__ is the one thing replaced; the search is still a GreedySearch or BeamSearch)."""

    class RidingAlong(type(search)):
        def __call__(self, model, src, src_lengths, prefixes=None):
            return super().__call__(RideAlong(model), src, src_lengths, prefixes)

    search.__class__ = RidingAlong
    return search


def top_per_row(search: BeamSearch, scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BeamSearch.top as a Python loop of one topk per sentence."""
    values, indices = zip(*(row.topk(n) for row in scores))
    return torch.stack(values), torch.stack(indices)


def loop_topk(search: BeamSearch) -> BeamSearch:
    """Beam search's topk per sentence in a Python loop instead of one topk over the
    [sentences, beam x vocab] tensor."""
    return with_hooks(search, top=top_per_row)


def state_changed(change: Callable[[Seq2Seq, DecoderState, int], None]) -> Callable[[str, object], Search]:
    """A search factory: the shipped search whose start_state hook then alters each new decoder
    state with change(model, state, max_len)."""

    def start_state(search, model, src, src_lengths, max_lens):
        state = Search.start_state(search, model, src, src_lengths, max_lens)
        change(model, state, int(max_lens.max()) + 1)
        return state

    return lambda kind, args: with_hooks(make_search(kind, args), start_state=start_state)


def no_grouped_static(model, state, max_len) -> None:
    """Static tensors copied per beam (state.expand falls back to select)."""
    state.grouped_static = False


def preallocated_cache(model, state, max_len) -> None:
    shape = (state.batch_size, model.cfg.heads, max_len, model.cfg.d_model // model.cfg.heads)
    like = state.static["k0"]  # the first layer's cross-attention keys: the model's dtype and device
    for key in state.dynamic:
        state.dynamic[key] = PreallocatedKVCache(like.new_empty(shape), like.new_empty(shape))


def eager_reorder(model, state, max_len) -> None:
    for key in state.dynamic:
        state.dynamic[key] = EagerKVCache()


def encode_per_beam(search: BeamSearch, model, src, src_lengths, max_lens) -> DecoderState:
    """Search.start_state with the source repeated beam times and encoded (and its cross-attention
    K/V projected) per beam, instead of once per sentence; the search then goes on from one copy
    per sentence as usual."""
    k = search.beam
    enc = model.encode(src.repeat_interleave(k, 0), src_lengths.repeat_interleave(k))
    state = model.init_state(enc, int(max_lens.max()) + 1, need_attention=search.return_attention)
    return state.select(torch.arange(src.size(0), device=src.device) * k)


def grad_mode(mode: Callable[[], contextlib.AbstractContextManager]) -> Callable[[str, object], Search]:
    """A search factory: the search run under mode() (torch.no_grad, torch.enable_grad) instead of
    torch.inference_mode()."""
    return lambda kind, args: with_hooks(make_search(kind, args), grad_mode=lambda search: mode())


BOTH, BEAM = ("beam", "greedy"), ("beam",)

# name -> (applies to, "technique (alternative: ...)", search factory (kind, args), searches)
VARIANTS: dict[str, tuple[str, str, Callable[[str, object], Search], tuple[str, ...]]] = {
    "shared_cross_attention_kv": (
        "all", "beams share their sentence's encoder output / cross-attention K/V (alternative: copied per beam)",
        state_changed(no_grouped_static), BEAM),
    "kv_cache_by_concatenation": (
        "transformer", "KV cache grown by torch.cat (alternative: a preallocated max_len buffer written in place)",
        state_changed(preallocated_cache), BOTH),
    "kv_reorder_fused": (
        "transformer", "a beam reorder of the KV cache gathered into the next append's buffer (alternative: "
        "index_select at the reorder, then cat at the append)",
        state_changed(eager_reorder), BEAM),
    "encoder_once": (
        "all", "source encoded once and expanded to beams (alternative: source repeated and encoded per beam)",
        lambda kind, a: with_hooks(make_search(kind, a), start_state=encode_per_beam), BEAM),
    "drop_finished_sentences": (
        "all", "finished sentences leave the batch (alternative: they ride along to the end)",
        lambda kind, a: ride_along(make_search(kind, a)), BOTH),
    "flat_topk": (
        "all", "one topk over [sentences, beam x vocab] (alternative: a Python loop of topk per sentence)",
        lambda kind, a: loop_topk(make_search(kind, a)), BEAM),
    "inference_mode": (
        "all", "torch.inference_mode (alternative: torch.no_grad)", grad_mode(torch.no_grad), BOTH),
    "no_autograd": (
        "all", "no autograd recording (alternative: grad enabled)", grad_mode(torch.enable_grad), BOTH),
}


def length_sorting(model, args, src_ids, ids, device) -> dict:
    """Beam search over token batches of the translator's budget (batch_tokens / beam source tokens)
    built from length-sorted vs input-order sentences."""
    lengths = [len(s) + 1 for s in src_ids]
    budget = args.batch_tokens // args.beam
    res = {"sentences": len(ids), "batch_source_tokens": budget}
    for name, order in (("sorted_by_length", sorted(ids, key=lambda i: -lengths[i])), ("input_order", list(ids))):
        batches = token_batches(lengths, budget, order)
        search = make_search("beam", args)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        with common.Measure(device) as m:
            for b in batches:
                src, src_len = source_tensor([src_ids[i] for i in b])
                search(model, src.to(device), src_len.to(device))
        res[name] = {"batches": len(batches), "padding_share": round(1 - sum(lengths[i] for i in ids) / padded, 3),
                     "sentences_per_s": round(len(ids) / m.seconds, 3), **m.record()}
    res["speedup"] = round(res["input_order"]["seconds"] / res["sorted_by_length"]["seconds"], 2)
    return res


def translator_budgets(model, vocab, args, lines, device) -> dict:
    """mt.decode.translator.Translator end to end (beam) with batches of about 820 (the default 4096 / beam),
    2048, 4096 and 8192 padded source tokens: speed against peak memory (decoder rows = sentences x
    beam). The translator's batch_tokens counts source tokens x beam, so it gets S x beam."""
    from mt.decode.translator import Translator

    res = {}
    decode = DecodeConfig(beam=args.beam, max_len_a=args.max_len_a, max_len_b=args.max_len_b, copy_unseen=False)
    for src_tokens in (args.batch_tokens // args.beam, 2048, 4096, 8192):  # the search of make_search("beam", args)
        tr = Translator.for_model(model, vocab, vocab, decode, device, batch_tokens=src_tokens * args.beam,
                                  warn=lambda m: None)
        with common.Measure(device) as m:
            tr.translate(lines)
        res[str(src_tokens)] = {"batch_tokens": src_tokens * args.beam,
                                "sentences_per_s": round(len(lines) / m.seconds, 3), **m.record()}
        common.log(f"translator, batches of {src_tokens} source tokens: {res[str(src_tokens)]['sentences_per_s']} "
                   f"sent/s, peak +{res[str(src_tokens)]['peak_delta_mib']} MiB")
    return res


def threads(model, args, src_ids, ids, device) -> dict:
    res = {}
    default = torch.get_num_threads()
    small = ids[: max(4, len(ids) // 8)]
    try:
        for n in sorted({1, default}):
            torch.set_num_threads(n)
            for kind in ("greedy", "beam"):
                for bs, sel in ((1, small), (args.batch_size, ids)):
                    rec, _ = measure_search(model, make_search(kind, args), src_ids, sel, bs, device)
                    res[f"{kind} batch {bs}, {n} thread{'s' if n > 1 else ''}"] = rec
    finally:
        torch.set_num_threads(default)
    return res


def main() -> None:
    args = parse_args()
    device = common.setup(args)
    common.check_weights(device, int8=args.int8)
    doc: dict = {"benchmark": "decode_ablations", "environment": common.environment(device)}
    common.warn_if_loaded(device)
    vocab = common.joint_vocab(args)
    en = read_lines(common.data_file(args, "test_2016_flickr.en.gz"))
    src_ids = vocab.encode_batch(en)
    by_len = sorted(range(len(src_ids)), key=lambda i: (len(src_ids[i]), i))
    ids = sorted(spread(by_len, args.sentences))
    doc["setup"] = {
        "sentences": len(ids), "batch_size": args.batch_size, "beam": args.beam,
        "data": "Multi30k test_2016_flickr en, evenly spaced over the length-sorted set",
        "length_control": "random seeded weights, output capped at 1.0 x source length (as translate_speed.py)",
        "method": "each variant replaces one technique by its alternative; baseline = mt as shipped; every run on the same "
                  "sentences; each figure the fastest of `repeats` runs; speedup = variant seconds / baseline "
                  "seconds (> 1: the technique beats the alternative); baseline measured before and after the variants, the "
                  "faster kept",
        "repeats": args.repeats,
        "weights": "int8 (mt.decode.quantize.quantize_int8)" if args.int8 else "float32",
    }
    doc["models"] = {}
    for name in common.models_arg(args):
        model = common.make_model(name, len(vocab), args.seed, device).eval()
        info = common.model_info(name, model)
        if args.int8:
            quantize_int8(model)
        is_transformer = isinstance(model, Transformer)
        run_search(model, make_search("beam", args), src_ids, ids[:8], 8, device)  # warm-up
        res: dict = {**info, "variants": {}}
        r = args.repeats
        base = {k: measure_search(model, make_search(k, args), src_ids, ids, args.batch_size, device, r) for k in BOTH}
        common.log(f"{name}: baseline beam {base['beam'][0]['sentences_per_s']} sent/s, "
                   f"greedy {base['greedy'][0]['sentences_per_s']}")
        for vname, (applies, what, factory, kinds) in VARIANTS.items():
            if applies == "transformer" and not is_transformer:
                continue
            entry: dict = {"technique": what}
            for kind in kinds:
                rec, out = measure_search(model, factory(kind, args), src_ids, ids, args.batch_size, device, r)
                same = sum(out[i] == base[kind][1][i] for i in ids)
                entry[kind] = {"alternative": rec, "same_output": f"{same}/{len(ids)}"}
                common.log(f"{name}: {vname}, alternative, {kind}: {rec['sentences_per_s']} sent/s, same {same}/{len(ids)}")
            res["variants"][vname] = entry
        for kind in BOTH:  # the baseline again: the faster of the two
            again = measure_search(model, make_search(kind, args), src_ids, ids, args.batch_size, device, r)
            if again[0]["seconds"] < base[kind][0]["seconds"]:
                base[kind] = again
        for entry in res["variants"].values():
            for kind in BOTH:
                if kind in entry:
                    off, b0 = entry[kind]["alternative"], base[kind][0]
                    entry[kind]["speedup"] = round(off["seconds"] / b0["seconds"], 2)
                    entry[kind]["speedup_cpu_time"] = round(off["cpu_seconds"] / b0["cpu_seconds"], 2)
        res["baseline_beam"], res["baseline_greedy"] = base["beam"][0], base["greedy"][0]
        res["beam_over_greedy_per_sentence"] = round(base["beam"][0]["ms_per_sentence"]
                                                     / base["greedy"][0]["ms_per_sentence"], 2)
        sort_ids = sorted(spread(by_len, args.sorting_sentences))
        res["length_sorting"] = length_sorting(model, args, src_ids, sort_ids, device)
        common.log(f"{name}: length sorting speed-up {res['length_sorting']['speedup']}")
        res["translator_batch_tokens"] = translator_budgets(model, vocab, args, [en[i] for i in ids], device)
        res["threads"] = threads(model, args, src_ids, ids, device)
        doc["models"][name] = res
    common.emit(doc, args)


if __name__ == "__main__":
    main()
