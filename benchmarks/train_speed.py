"""Training speed: target tokens/s of mt's training step for a Transformer base and an attention
GRU on Multi30k train en->de with token batches, after warm-up steps; peak memory; optional
bf16 autocast and torch.compile variants.

    python benchmarks/train_speed.py [--quick] [--device auto|cpu|cuda] [--amp none,bf16] [--compile off,on]

Prints one JSON document on stdout (progress on stderr). See benchmarks/README.md.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mt.data.batching import TokenBatcher, token_batches  # noqa: E402
from mt.device import keep_freed_host_memory  # noqa: E402


def parse_args():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch and side (default 4096)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default 2; quick 1)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 10; quick 2)")
    p.add_argument("--amp", default="none", help="comma list of none | bf16 | fp16 | auto (fp16: CUDA only; auto: "
                                                 "train.amp=auto's probe chooses, as the trainer does)")
    p.add_argument("--compile", default="off", help="comma list of off | on (torch.compile of the model)")
    p.add_argument("--ablations", action="store_true",
                   help="also measure length bucketing (vs batches of randomly ordered sentences) and the Adam "
                        "implementations (fused / foreach / per-tensor loop)")
    p.add_argument("--force-bf16", action="store_true",
                   help="run bf16 on a CPU without native bf16 matmul (skipped otherwise: it can be 100x slower)")
    args = p.parse_args()
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.quick else 2)
    args.steps = args.steps or (2 if args.quick else 10)
    args.amp = [a.strip() for a in args.amp.split(",") if a.strip()]
    args.compile = [c.strip() for c in args.compile.split(",") if c.strip()]
    for a in args.amp:
        if a not in ("none", "bf16", "fp16", "auto"):
            raise SystemExit(f"--amp: unknown {a!r} (none, bf16, fp16, auto)")
    for c in args.compile:
        if c not in ("off", "on"):
            raise SystemExit(f"--compile: unknown {c!r} (off, on)")
    return args


def pick_batches(batcher: TokenBatcher, n: int) -> list[list[int]]:
    """The first n batches of epoch 0 (shuffled, as the trainer visits them): a fixed, representative
    mix of lengths, the same for every model and variant."""
    return batcher.epoch_batches(0)[:n]


def bf16_matmul_check() -> dict:
    """fp32 vs bf16 time of one 1024x512 @ 512x2048 matmul on this CPU (bf16 is emulated, and
    very slow, on CPUs without AVX512-BF16 / AMX)."""
    a, b = torch.randn(1024, 512), torch.randn(512, 2048)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        x, y = a.to(dt), b.to(dt)
        x @ y
        t = time.perf_counter()
        x @ y
        out[str(dt).replace("torch.", "")] = time.perf_counter() - t
    return {"fp32_ms": round(1000 * out["float32"], 2), "bf16_ms": round(1000 * out["bfloat16"], 2),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def run_variant(name, vocab, batcher, batches, args, device, amp: str, compiled: bool, label_extra: str = "") -> dict:
    label = f"amp={amp} compile={'on' if compiled else 'off'}{label_extra}"
    if amp == "fp16" and device.type != "cuda":
        return {"variant": label, "skipped": "fp16 autocast needs CUDA"}
    if amp == "bf16" and device.type == "cpu" and not args.force_bf16:
        check = bf16_matmul_check()
        if check["bf16_ms"] > 5 * check["fp32_ms"]:
            return {"variant": label, "skipped": "no native bf16 matmul on this CPU (--force-bf16 runs it anyway)",
                    "matmul_check": check}
    rss0 = common.rss_mib()
    model = common.make_model(name, len(vocab), args.seed, device)
    stepper = common.Stepper(name, model, device, batch_tokens=args.batch_tokens, amp=amp, compile=compiled,
                             seed=args.seed)
    chosen = None
    if amp == "auto":  # the trainer's probe on the first batches, then that precision
        from mt.train.precision import PROBE_BATCHES, choose_amp

        chosen = choose_amp(model, [batcher.collate(b) for b in batches[:PROBE_BATCHES]], device)
        stepper.update.use(chosen.amp)
        common.log(f"{name} {label}: {chosen.describe()}")
    warm, timed = batches[: args.warmup_steps], batches[args.warmup_steps :]
    with common.Measure(device) as mw:
        for b in warm:
            stepper.step(batcher.collate(b))
    common.log(f"{name} {label}: {len(warm)} warm-up steps {mw.seconds:.1f}s")
    tgt_tokens = src_tokens = padded = 0
    losses = []
    step_seconds = []
    with common.Measure(device) as m:
        for b in timed:
            t = time.perf_counter()
            batch = batcher.collate(b)
            loss, ntok = stepper.step(batch)
            common.sync(device)
            step_seconds.append(time.perf_counter() - t)
            tgt_tokens += ntok
            src_tokens += int(batch.src_lengths.sum())
            padded += batch.src.numel() + batch.tgt_in.numel()
            losses.append(loss / ntok)
            common.log(f"{name} {label}: step {len(step_seconds)}/{len(timed)} {step_seconds[-1]:.2f}s "
                       f"{ntok} target tokens  load {common.load_average()}")
    rec = {
        "variant": label,
        "amp": amp,
        **({"auto": chosen.record("auto")} if chosen is not None else {}),
        "compile": compiled,
        "warmup_steps": len(warm),
        "warmup_seconds": round(mw.seconds, 2),  # includes compilation with compile=on
        "steps": len(timed),
        "target_tokens": tgt_tokens,
        "source_tokens": src_tokens,
        "padded_tokens_both_sides": padded,
        "padding_share": round(1 - (tgt_tokens + src_tokens) / padded, 3),
        "target_tokens_per_s": round(tgt_tokens / m.seconds, 1),
        "source_plus_target_tokens_per_s": round((tgt_tokens + src_tokens) / m.seconds, 1),
        # per second of process CPU time (all threads): steadier than wall time on a shared machine
        "target_tokens_per_cpu_s": round(tgt_tokens / max(m.cpu_seconds, 1e-9), 1),
        "seconds_per_step": round(m.seconds / len(timed), 3),
        "step_seconds_min_max": [round(min(step_seconds), 3), round(max(step_seconds), 3)],
        "mean_loss_per_token": round(sum(losses) / len(losses), 4),
        "rss_before_model_mib": rss0,
        "peak_mib_warmup": round(mw.peak_mib, 1),
        "peak_delta_mib_warmup": round(mw.peak_delta_mib, 1),
        **{k: v for k, v in m.record().items()},
    }
    common.log(f"{name} {label}: {rec['target_tokens_per_s']} target tok/s, {rec['seconds_per_step']} s/step, "
               f"peak {max(rec['peak_mib'], rec['peak_mib_warmup'])} MiB")
    del stepper, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


def unbucketed_batches(src, tgt, args, n: int) -> list[list[int]]:
    """Token batches with the same budget over sentences in random order (no length bucketing)."""
    import random

    order = list(range(len(src)))
    random.Random(args.seed).shuffle(order)
    lengths = [max(len(s), len(t)) + 1 for s, t in zip(src, tgt)]
    return token_batches(lengths, args.batch_tokens, order)[:n]


def optimizer_steps(name, vocab, device, repeats: int) -> dict:
    """Seconds per Adam step over the model's parameters (random gradients) for each implementation."""
    model = common.make_model(name, len(vocab), 1, device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    res = {}
    for impl, kw in (("fused", {"fused": True}), ("foreach", {"foreach": True}), ("for_loop", {"foreach": False})):
        try:
            opt = torch.optim.Adam(model.parameters(), lr=1e-4, **kw)
            opt.step()  # state allocation, not timed
        except (RuntimeError, TypeError) as e:
            res[impl] = {"skipped": str(e).splitlines()[0]}
            continue
        with common.Measure(device) as m:
            for _ in range(repeats):
                opt.step()
        res[impl] = {"ms_per_step": round(1000 * m.seconds / repeats, 2), **m.record()}
        common.log(f"{name}: Adam {impl} {res[impl]['ms_per_step']} ms/step")
    return res


def ablations(name, vocab, batcher, src, tgt, args, device) -> dict:
    n = args.warmup_steps + args.steps
    bucketed = run_variant(name, vocab, batcher, pick_batches(batcher, n), args, device, "none", False,
                           " batches=length-bucketed")
    plain = run_variant(name, vocab, batcher, unbucketed_batches(src, tgt, args, n), args, device, "none", False,
                        " batches=random order")
    return {
        "bucketing": {
            "what": "mt.data.batching.TokenBatcher (sentences sorted by length, then cut into token batches) vs the same "
                    "token budget over randomly ordered sentences",
            "length_bucketed": bucketed, "random_order": plain,
            "target_tokens_per_s_ratio": round(bucketed["target_tokens_per_s"] / plain["target_tokens_per_s"], 2),
        },
        "adam": optimizer_steps(name, vocab, device, repeats=3 if args.quick else 10),
        "dropout": dropout_ablation(args, device, repeats=3 if args.quick else 20),
    }


def dropout_ablation(args, device, repeats: int) -> dict:
    """Milliseconds of dropout (p 0.1) forward and backward on activations of one batch, the widths
    of a Transformer base ([batch tokens, 512] and [batch tokens, 2048]): torch's F.dropout against
    mt.models.dropout (its cheaper mask on the CPU; the same F.dropout elsewhere)."""
    import torch.nn.functional as F

    from mt.models.dropout import dropout

    out: dict = {"what": "F.dropout vs mt.models.dropout.dropout, p 0.1, forward + backward, fastest of "
                         f"{repeats}", "p": 0.1}
    for width in (512, 2048):
        x = torch.randn(args.batch_tokens, width, device=device, requires_grad=True)
        grad = torch.randn_like(x)
        times = {}
        for label, fn in (("torch_ms", lambda: F.dropout(x, 0.1, True)), ("mt_ms", lambda: dropout(x, 0.1, True))):
            best = float("inf")
            for _ in range(repeats + 1):
                common.sync(device)
                start = time.perf_counter()
                fn().backward(grad)
                common.sync(device)
                best = min(best, time.perf_counter() - start)
                x.grad = None
            times[label] = round(best * 1000, 3)
        out[f"{args.batch_tokens}x{width}"] = {**times, "speedup": round(times["torch_ms"] / max(times["mt_ms"], 1e-9), 2)}
    return out


def main() -> None:
    args = parse_args()
    device = common.setup(args)
    keep_freed_host_memory()  # as mt train does (mt.device): host pages reused from step to step
    doc: dict = {"benchmark": "train_speed", "environment": common.environment(device)}
    common.log(f"device {device}, {torch.get_num_threads()} threads, load {common.load_average()}")
    common.warn_if_loaded(device)
    vocab = common.joint_vocab(args)
    src, tgt = common.train_pairs(args, vocab)
    batcher = TokenBatcher.from_lists(src, tgt, args.batch_tokens, args.seed)
    batches = pick_batches(batcher, args.warmup_steps + args.steps)
    doc["setup"] = {
        "data": {"train": str(common.data_file(args, "train.en.gz")), "pairs": len(src),
                 "batches_per_epoch": len(batcher)},
        "vocab": {"kind": "SentencePiece unigram, joint en+de, trained on Multi30k train", "size": len(vocab)},
        "batch_tokens": args.batch_tokens,
        "batches": f"the first {len(batches)} batches of epoch 0 (mt.data.batching.TokenBatcher, seed {args.seed}), "
                   f"the same for every model and variant",
        "step": "mt.train.optim.TrainStep on one batch (autocast, label-smoothed loss 0.1, backward, clip 1.0, "
                "Adam step) + inverse_sqrt scheduler step, accum 1; the timed loop includes collate",
        "tokens": "target tokens = real target tokens + eos per sentence (the trainer's ntokens)",
        "memory": "CPU: peak RSS (VmHWM after /proc/self/clear_refs) per phase, delta over the RSS at its start; "
                  "CUDA: torch.cuda.max_memory_allocated",
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "quick": args.quick,
    }
    doc["models"] = {}
    for name in common.models_arg(args):
        common.log(f"== {name}")
        model = common.make_model(name, len(vocab), args.seed, torch.device("cpu"))
        info = common.model_info(name, model)
        del model
        runs = [run_variant(name, vocab, batcher, batches, args, device, amp, c == "on")
                for amp, c in itertools.product(args.amp, args.compile)]
        doc["models"][name] = {**info, "runs": runs}
        if args.ablations:
            doc["models"][name]["ablations"] = ablations(name, vocab, batcher, src, tgt, args, device)
    common.emit(doc, args)


if __name__ == "__main__":
    main()
