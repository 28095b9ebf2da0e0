"""Decoding under control: the speed cost of terminology constraints and n-gram blocking against
plain beam search, the constraints' coverage and BLEU on Multi30k test_2016_flickr, and how often
the loop guard fires.

    python benchmarks/constraints.py RUN [--sentences 200] [--batch-sizes 32,1] [--beam 5] [--quick]
                                         [--guard-sentences 1000] [--data DIR] [--threads N] [--output FILE]

RUN is a trained en->de run (Multi30k). The searches run on the source pieces directly (the
translator's own work is the same in every setting), longest first, in batches of a fixed number
of sentences. Settings, all beam RUN's decode settings with --beam:
- plain: no rule (decode.max_repeat 0);
- guard: the loop guard as shipped (decode.max_repeat 3);
- no_repeat_ngram: decode.no_repeat_ngram 3 (guard off);
- constraints: two phrases per line (guard off), the two longest words of the line's reference
  (one where the reference has a single word of 4+ letters).
Quality (with the first --sentences lines): BLEU and chrF without and with constraints of one or
two words per line (alternating), and the share of constraint words found in the output.
Guard: on the first --guard-sentences lines, how often it removed a token (rows x steps) and how
many outputs differ from decoding without it.

Prints one JSON document on stdout (progress on stderr). Goal (issue 21): no_repeat_ngram <= 10%
slower than plain, two constraints per line <= 2x plain; the guard ~never fires on test2016.
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mt.data.batching import source_tensor  # noqa: E402
from mt.data.text import read_lines  # noqa: E402
from mt.decode.constraints import segmentations  # noqa: E402
from mt.decode.loading import load_for_decoding  # noqa: E402
from mt.decode.search import build_search  # noqa: E402
from mt.metrics import score  # noqa: E402

_WORD = re.compile(r"\w{4,}")


def parse_args(argv: list[str] | None = None):
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--sentences", type=int, default=None, help="test lines timed and scored (default 200; quick 8)")
    p.add_argument("--batch-sizes", default=None, help="sentences per batch (default 32,1; quick 4,1)")
    p.add_argument("--guard-sentences", type=int, default=None, help="lines for the guard count (default 1000; "
                                                                       "quick 8)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per setting, the fastest kept (default 2)")
    args = p.parse_args(argv)
    q = args.quick
    args.sentences = args.sentences or (8 if q else 200)
    args.guard_sentences = args.guard_sentences or (8 if q else 1000)
    args.batch_sizes = common.int_list(args.batch_sizes or ("4,1" if q else "32,1"))
    args.repeats = args.repeats or (1 if q else 2)
    return args


def reference_words(ref: str, n: int) -> list[str]:
    """The n longest distinct words of 4+ letters of a reference, in the order they appear."""
    words = list(dict.fromkeys(_WORD.findall(ref)))
    longest = set(sorted(words, key=len, reverse=True)[:n])
    return [w for w in words if w in longest]


def run_all(model, search, src_ids, batch_size, device, constraints=None) -> dict[int, list[int]]:
    """Best tokens per line, longest first in batches of batch_size lines."""
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]), reverse=True)
    out: dict[int, list[int]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        src, lengths = source_tensor([src_ids[i] for i in chunk])
        cons = [constraints[i] for i in chunk] if constraints is not None else None
        hyps = search(model, src.to(device), lengths.to(device), constraints=cons)
        out.update({i: h[0].tokens if h else [] for i, h in zip(chunk, hyps)})
    return out


def timed(model, search, src_ids, batch_size, device, repeats, constraints=None) -> tuple[dict, dict]:
    best = None
    for _ in range(repeats):
        with common.Measure(device) as m:
            out = run_all(model, search, src_ids, batch_size, device, constraints)
        if best is None or m.seconds < best[0].seconds:
            best = (m, out)
    m, out = best
    n = len(src_ids)
    return {"ms_per_sentence": round(1000 * m.seconds / n, 2), "cpu_ms_per_sentence": round(1000 * m.cpu_seconds / n, 2),
            "mean_output_tokens": round(sum(len(t) + 1 for t in out.values()) / n, 2)}, out


def speed(loaded, decode, src_ids, refs, args) -> dict:
    vocab, model, device = loaded.run.tgt_vocab, loaded.run.model, loaded.device
    two = [[segmentations(vocab, w)[0] for w in reference_words(r, 2)] for r in refs]
    settings = {"plain": (replace(decode, max_repeat=0), None), "guard": (decode, None),
                "no_repeat_ngram": (replace(decode, max_repeat=0, no_repeat_ngram=3), None),
                "constraints": (replace(decode, max_repeat=0), two)}
    report: dict = {"constraints_per_line": round(sum(len(c) for c in two) / len(two), 2)}
    run_all(model, build_search(decode), src_ids[:4], 4, device)  # warm-up
    for bs in args.batch_sizes:
        rows = {}
        for name, (d, cons) in settings.items():
            common.log(f"speed: {name}, batch {bs}")
            rows[name], _ = timed(model, build_search(d), src_ids, bs, device, args.repeats, cons)
        base = rows["plain"]["cpu_ms_per_sentence"]
        for row in rows.values():
            row["cpu_time_vs_plain"] = round(row["cpu_ms_per_sentence"] / base, 3)
        report[f"batch_{bs}"] = rows
    return report


def quality(loaded, decode, src_ids, refs, args) -> dict:
    vocab, model, device = loaded.run.tgt_vocab, loaded.run.model, loaded.device
    words = [reference_words(r, 1 + i % 2) for i, r in enumerate(refs)]
    cons = [[segmentations(vocab, w)[0] for w in ws] for ws in words]
    bs = max(args.batch_sizes)
    plain = run_all(model, build_search(decode), src_ids, bs, device)
    constrained = run_all(model, build_search(decode), src_ids, bs, device, cons)
    report = {"lines": len(refs), "constraints": sum(len(w) for w in words)}
    for name, out in (("without", plain), ("with", constrained)):
        hyps = [vocab.decode(out[i]) for i in range(len(refs))]
        s = score(hyps, refs, ["bleu", "chrf"])
        found = sum(w in h for ws, h in zip(words, hyps) for w in ws)
        report[name] = {"bleu": round(s["bleu"].score, 2), "chrf": round(s["chrf"].score, 2),
                        "constraint_words_in_output": found,
                        "share": round(found / max(report["constraints"], 1), 4)}
    return report


def guard(loaded, decode, src_ids, args) -> dict:
    model, device, bs = loaded.run.model, loaded.device, max(args.batch_sizes)
    search = build_search(decode)
    on = run_all(model, search, src_ids, bs, device)
    off = run_all(model, build_search(replace(decode, max_repeat=0)), src_ids, bs, device)
    return {"lines": len(src_ids), "max_repeat": decode.max_repeat, "fired": search.guard_fired,
            "outputs_changed": sum(on[i] != off[i] for i in on)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = common.setup(args)
    environment = common.environment(device)
    common.warn_if_loaded(device)
    loaded = load_for_decoding([args.run], device=str(device), threads=args.threads or None)
    decode = replace(loaded.run.config.decode, search="beam", beam=args.beam, n_best=1)
    src = read_lines(common.data_file(args, "test_2016_flickr.en.gz"))
    refs = read_lines(common.data_file(args, "test_2016_flickr.de.gz"))
    src_ids = loaded.run.src_vocab.encode_batch(src)
    n = args.sentences
    doc = {"benchmark": "constraints", "environment": environment, "run": str(args.run), "beam": args.beam,
           "sentences": n, "speed": speed(loaded, decode, src_ids[:n], refs[:n], args),
           "quality": quality(loaded, decode, src_ids[:n], refs[:n], args),
           "guard": guard(loaded, decode, src_ids[: args.guard_sentences], args)}
    common.emit(doc, args)


if __name__ == "__main__":
    main()
