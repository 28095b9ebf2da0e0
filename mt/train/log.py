"""What a training run tells the person watching: a progress bar or plain lines on stderr, and
TensorBoard scalars when train.tensorboard is on."""

from __future__ import annotations

from pathlib import Path

from mt import MTError


class Logger:
    """Rich progress bar on a terminal; plain lines otherwise. Only the enabled one (rank 0) speaks."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.enabled = enabled
        self.console = Console(stderr=True)
        self.bar = None
        self.task = None
        self.writer = None

    def info(self, msg: str) -> None:
        if self.enabled:
            self.console.print(f"[bold]mt[/bold] {msg}", highlight=False)

    def start(self, total: int, step: int, run_dir: Path) -> None:
        if not self.enabled:
            return
        self.info(f"run directory: {run_dir}   (resume with: mt train --resume {run_dir})")
        if self.console.is_terminal:
            import rich.progress as bar

            self.bar = bar.Progress(
                bar.TextColumn("step"),
                bar.MofNCompleteColumn(),
                bar.BarColumn(),
                bar.TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
                bar.TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=step, loss="-", lr="-", tps="-")
            self.bar.start()

    def tick(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def step(self, r: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=r["step"], loss=f"{r['loss']:.3f}", lr=f"{r['lr']:.2e}",
                            tps=f"{r['tokens_per_s']:.0f}")
        else:
            self.info(f"step {r['step']}  epoch {r['epoch']}  loss {r['loss']:.3f}  lr {r['lr']:.2e}  "
                      f"{r['tokens_per_s']:.0f} tok/s")

    def validation(self, step: int, r: dict, improved: bool) -> None:
        self.info(
            f"valid step {step}: loss {r['loss']:.3f} ppl {r['ppl']:.2f} BLEU {r['bleu']:.2f} chrF {r['chrf']:.2f}"
            + ("  (best)" if improved else "")
        )

    def scalars(self, record: dict) -> None:
        if self.writer is not None:
            step = record.get("step", 0)
            flat = {**{k: v for k, v in record.items() if k != "valid"},
                    **{f"valid/{k}": v for k, v in (record.get("valid") or {}).items()}}
            for k, v in flat.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(k, v, step)

    def open_tensorboard(self, run_dir: Path) -> None:
        if not self.enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MTError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
