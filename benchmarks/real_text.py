"""Real text: names in other scripts, emoji, URLs, addresses and numbers must come through a translation intact.

    python benchmarks/real_text.py RUN [RUN ...] [--beam 5] [--bleu] [--data DIR] [--threads N] [--output FILE]

Each run (a Multi30k en->de run) translates the built-in lines: everyday captions that carry a name
in another script (CJK, Cyrillic, Arabic, Greek, Hebrew, Devanagari, Korean, Japanese), an emoji, a
URL, an e-mail address, a time, a house or product number. Each line lists the spans that must reach
the output unchanged. The JSON reports, per run and per setting (the run's decoding settings; those
without the loop guard; without placeholders; as mt decoded before either, with the copy of unseen
words alone; and the model alone):

- degenerate: outputs with a loop (a word 4 times in a row, or a run of 2+ characters repeated 4
  times in a row inside a word, as `sesesese`), goal 0;
- spans kept: spans found unchanged in their line's output, of all spans, goal all of them;
- guard: how often the search's repetition guard (decode.max_repeat) removed a candidate;
- with --bleu: Multi30k test_2016_flickr BLEU and chrF with each setting (placeholders should leave
  ordinary text alone: goal within ±0.3 BLEU), its loops, the guard's firings, and how many of its
  1000 translations differ from the run's own settings.

Not part of `make bench`: it needs trained runs.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mt.data.text import read_lines  # noqa: E402
from mt.decode.loading import load_for_decoding  # noqa: E402
from mt.metrics import score  # noqa: E402

#: (line, spans that must reach the output unchanged)
LINES: list[tuple[str, list[str]]] = [
    ("A man in Tōkyō drinks coffee at the café near 東京 station.", ["東京"]),
    ("A man from Москва is standing in front of a shop.", ["Москва"]),
    ("Two women walk through the streets of 大阪 at night.", ["大阪"]),
    ("Three friends drink tea in a café in القاهرة.", ["القاهرة"]),
    ("Children in Αθήνα are dancing on the square.", ["Αθήνα"]),
    ("A boy from ירושלים is reading a book on a bench.", ["ירושלים"]),
    ("A woman in a red sari walks past a temple in दिल्ली.", ["दिल्ली"]),
    ("Two girls from 서울 are taking a selfie on a bridge.", ["서울"]),
    ("A man holds a sign that says ようこそ at the airport.", ["ようこそ"]),
    ("The chef from 北京 prepares noodles for 12 guests.", ["北京", "12"]),
    ("A child smiles 😀 while holding a red balloon.", ["😀"]),
    ("A dog runs on the beach ☀ while people swim.", ["☀"]),
    ("A woman sells flowers 🌷 at the market in Łódź.", ["🌷"]),
    ("A poster on the wall shows the address www.example.org in large letters.", ["www.example.org"]),
    ("A man points at a screen showing https://example.com/tickets?id=42 to a woman.", ["https://example.com/tickets?id=42"]),
    ("A sign in the window reads info@cafe-berlin.de and a phone number.", ["info@cafe-berlin.de"]),
    ("The bus leaves at 14:30 from the main station.", ["14:30"]),
    ("A man stands in front of house number 221 on a quiet street.", ["221"]),
    ("Two workers load 350 boxes into a truck.", ["350"]),
    ("A runner with the number 1089 on his shirt crosses the finish line.", ["1089"]),
    ("A woman pays 3.50 for a cup of coffee.", ["3.50"]),
    ("A boy in a shirt with 23 on the back throws a ball.", ["23"]),
    ("A man repairs a car with the plate B-MT 2026 in a garage.", ["2026"]),
    ("A crowd waits outside 東京ドーム before the concert.", ["東京ドーム"]),
    ("A family from Санкт-Петербург eats lunch in a park.", ["Санкт-Петербург"]),
    ("A girl writes 你好 on a blackboard in a classroom.", ["你好"]),
    ("A man reads a newspaper called Ελευθερία on a train.", ["Ελευθερία"]),
    ("The musician from Ísafjörður plays a guitar on a stage at 20:00.", ["20:00"]),
    ("A woman with a shirt that says ❤ NYC walks a dog.", ["❤"]),
    ("Two men carry a sign with the e-mail help@example.net at a protest.", ["help@example.net"]),
]

_WORD_LOOP = re.compile(r"(?<!\S)(\S+)(?: \1(?!\S)){3,}")
_CHAR_LOOP = re.compile(r"(\S{2,}?)\1{3,}")


def degenerate(text: str) -> bool:
    """A loop: a word 4 times in a row, or 2+ characters repeated 4 times in a row."""
    return bool(_WORD_LOOP.search(text) or _CHAR_LOOP.search(text))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--bleu", action="store_true", help="also translate Multi30k test_2016_flickr")
    p.set_defaults(threads=2)
    return p.parse_args(argv)


def settings(decode) -> dict:
    """The decoding settings compared: the run's own; without the loop guard; without placeholders;
    as mt decoded before placeholders and the guard (the copy of unseen words alone); the model alone."""
    return {
        "run": decode,
        "no_guard": replace(decode, max_repeat=0),
        "no_placeholders": replace(decode, placeholders=False),
        "before": replace(decode, placeholders=False, max_repeat=0),
        "model_alone": replace(decode, placeholders=False, copy_unseen=False, max_repeat=0),
    }


def measure(run_dir: Path, args: argparse.Namespace) -> dict:
    loaded = load_for_decoding([run_dir], device=args.device, threads=args.threads)
    base = replace(loaded.run.config.decode, search="beam", beam=args.beam, n_best=1)
    lines = [line for line, _ in LINES]
    report: dict = {"run": str(run_dir), "lines": len(lines), "spans": sum(len(s) for _, s in LINES),
                    "placeholder_pieces": loaded.run.src_vocab.placeholders}
    test, reference = None, None
    if args.bleu:
        test = (read_lines(common.data_file(args, "test_2016_flickr.en.gz")),
                read_lines(common.data_file(args, "test_2016_flickr.de.gz")))
    for name, decode in settings(base).items():
        translator = loaded.translator(decode)
        started = time.perf_counter()
        outputs = [t.text for t in translator.translate(lines)]
        entry = {
            "seconds": round(time.perf_counter() - started, 2),
            "degenerate": sum(degenerate(o) for o in outputs),
            "spans_kept": sum(span in out for (_, spans), out in zip(LINES, outputs) for span in spans),
            "guard_fired": translator.search.guard_fired,
            "placeholders": dict(translator.placeholder_counts),
            "outputs": outputs,
        }
        if test is not None:
            fired = translator.search.guard_fired
            hyps = [t.text for t in translator.translate(test[0])]
            scores = score(hyps, test[1], ["bleu", "chrf"])
            entry["test2016"] = {"bleu": round(scores["bleu"].score, 2), "chrf": round(scores["chrf"].score, 2),
                                 "degenerate": sum(degenerate(h) for h in hyps),
                                 "guard_fired": translator.search.guard_fired - fired}
            reference = reference if name != "run" else hyps
            entry["test2016"]["lines_changed_from_run"] = sum(a != b for a, b in zip(hyps, reference))
        report[name] = entry
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = common.setup(args)
    environment = common.environment(device)
    reports = [measure(run, args) for run in args.runs]
    common.emit({"benchmark": "real_text", "environment": environment, "beam": args.beam, "runs": reports}, args)


if __name__ == "__main__":
    main()
