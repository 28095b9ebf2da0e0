"""Unseen characters: how many characters the vocabulary never saw reach the translation.

    python benchmarks/unseen_characters.py RUN [RUN ...] [--input FILE] [--beam 5] [--bleu] [--data DIR]
        [--threads N] [--output FILE]

For each run (a Multi30k en->de run, with or without vocab.byte_fallback) the built-in lines (names
in other scripts, emoji, currency and other symbols, rare diacritics; or --input FILE) are translated
with the run's decoding settings. A character counts as unseen when it is not one of the
vocabulary's pieces' characters; the JSON reports, per run: whether the vocabulary has byte pieces,
how many unseen character occurrences the input holds, how many of them reach the output (each
output line is credited with at most as many of a character as its input line has), how many
unknown pieces the source segmentation holds, and how many `⁇` the output holds, each for the model
alone (`--no-copy-unseen`) and with the copy step (`decode.copy_unseen`, mt.decode.unseen). The pieces
round trip (source -> pieces -> text) is reported too: what segmentation alone keeps. --bleu also
translates Multi30k test_2016_flickr (DIR/test_2016_flickr.{en,de}.gz) and reports its BLEU with
and without the copy step, to see that byte fallback and the copy leave ordinary text alone. Not part of `make bench`: it needs trained runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mt.metrics import score  # noqa: E402
from mt.data.text import read_lines  # noqa: E402
from mt.decode.loading import load_for_decoding  # noqa: E402
from mt.decode.translator import Translator  # noqa: E402
from mt.data.vocab import UNK_ID  # noqa: E402

LINES = [
    "A man from Москва is standing in front of a shop.",
    "Two women walk through the streets of 東京 at night.",
    "The sign says the coffee costs 3 € or 4 £.",
    "A child smiles 😀 while holding a red balloon.",
    "Zoë and Søren are playing with a dog in the park.",
    "A man named Đorđe rides a bicycle past a café.",
    "The tourists in Kraków take pictures of a church.",
    "A woman holds a sign that reads «Welcome» in the rain.",
    "Two boys play football near the Σ-shaped fountain.",
    "A group of people in İstanbul watch a street performer.",
    "A dog runs on the beach ☀ while people swim.",
    "The chef from 北京 prepares noodles in a small kitchen.",
    "A musician plays a guitar on a stage in Reykjavík ♪.",
    "A man wearing a shirt with the number № 7 jumps.",
    "Children in Αθήνα are dancing on the square.",
    "An old man reads a newspaper called Ŝtrumpo.",
    "A woman in Łódź is selling flowers at the market 🌷.",
    "Three friends drink tea in a café in القاهرة.",
    "A worker carries boxes marked ✓ into a truck.",
    "Two girls from Seoul, 서울, are taking a selfie.",
]


def measure(run_dir: Path, lines: list[str], args: argparse.Namespace) -> dict:
    beam = args.beam
    run = load_for_decoding([run_dir], device="cpu").run
    decode = run.config.decode if beam is None else replace(run.config.decode, search="beam", beam=beam)
    known = run.src_vocab.characters | set(" ")
    unseen_in = [Counter(c for c in line if c not in known) for line in lines]
    translators = {copy: Translator.for_model(run.model, run.src_vocab, run.tgt_vocab, replace(decode, copy_unseen=copy),
                                              "cpu") for copy in (False, True)}
    outputs, seconds = {}, {}
    for copy, translator in translators.items():
        start = time.perf_counter()
        outputs[copy] = [t.text for t in translator.translate(lines)]
        seconds[copy] = time.perf_counter() - start
    round_trip = [run.src_vocab.decode(run.src_vocab.encode(line)) for line in lines]

    def kept(texts: list[str]) -> int:
        return sum(min(n, text.count(c)) for counts, text in zip(unseen_in, texts) for c, n in counts.items())

    res = {
        "run": str(run_dir),
        "byte_fallback": run.src_vocab.byte_fallback,
        "search": f"{decode.search} {decode.beam}" if decode.search == "beam" else decode.search,
        "lines": len(lines),
        "unseen_characters_in_input": sum(sum(c.values()) for c in unseen_in),
        "distinct_unseen": "".join(sorted({c for counts in unseen_in for c in counts})),
        "unknown_pieces_in_source": sum(run.src_vocab.encode(line).count(UNK_ID) for line in lines),
        "unseen_kept_by_segmentation": kept(round_trip),
        "unseen_in_output_model_alone": kept(outputs[False]),
        "unseen_in_output_copy_unseen": kept(outputs[True]),
        "unk_marks_in_output_model_alone": sum(text.count("\u2047") for text in outputs[False]),
        "unk_marks_in_output_copy_unseen": sum(text.count("\u2047") for text in outputs[True]),
        "lines_changed_by_copy_unseen": sum(a != b for a, b in zip(outputs[False], outputs[True])),
        "seconds_model_alone": round(seconds[False], 2),
        "seconds_copy_unseen": round(seconds[True], 2),
        "outputs_model_alone": outputs[False],
        "outputs_copy_unseen": outputs[True],
    }
    if args.bleu:
        src = read_lines(common.data_file(args, f"test_2016_flickr.{run.config.data.src_lang}.gz"))
        ref = read_lines(common.data_file(args, f"test_2016_flickr.{run.config.data.tgt_lang}.gz"))
        hyps = {copy: [t.text for t in translator.translate(src)] for copy, translator in translators.items()}
        for copy, name in ((False, "model_alone"), (True, "copy_unseen")):
            res[f"test_2016_flickr_bleu_{name}"] = round(score(hyps[copy], ref, metrics=("bleu",))["bleu"].score, 2)
        res["test_2016_flickr_lines_changed_by_copy_unseen"] = sum(a != b for a, b in zip(hyps[False], hyps[True]))
    return res



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (mt train on Multi30k en->de)")
    p.add_argument("--input", type=Path, help="lines to translate instead of the built-in ones")
    p.add_argument("--beam", type=int, help="beam size (default: the run's decode settings)")
    p.add_argument("--bleu", action="store_true", help="also the BLEU of test_2016_flickr")
    p.add_argument("--data", default=common.DEFAULT_DATA, help=f"Multi30k folder (default {common.DEFAULT_DATA})")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--output", default=None, help="also write the JSON document to this file")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    lines = args.input.read_text(encoding="utf-8").splitlines() if args.input else LINES
    device = torch.device("cpu")
    doc = {"benchmark": "unseen_characters", "environment": common.environment(device),
           "runs": [measure(r, lines, args) for r in args.runs]}
    common.emit(doc, args)


if __name__ == "__main__":
    main()
