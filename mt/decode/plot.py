"""Attention heatmaps as the d2l book draws them: target pieces down, source pieces across."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mt.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch


def save_attention_plot(path: Path, attention: torch.Tensor, src_pieces: list[str], tgt_pieces: list[str]) -> None:
    """attention [len(tgt_pieces), len(src_pieces)] -> PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = attention.shape
    fig, ax = plt.subplots(figsize=(max(3.0, 0.35 * cols + 1.5), max(2.5, 0.35 * rows + 1.0)))
    image = ax.imshow(attention.numpy(), cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), src_pieces[:cols], rotation=90, fontsize=8)
    ax.set_yticks(range(rows), tgt_pieces[:rows], fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    fig.colorbar(image, ax=ax, shrink=0.6)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
