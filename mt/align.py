"""Word alignments from attention: pieces -> whitespace-separated words, Pharaoh format, AER.

    links = word_alignment(attention, src_pieces, tgt_pieces)   # [(source word, target word), ...]
    pharaoh(links)                                              # "0-0 1-2 2-1"

The attention is one row per target piece (then eos) over the source pieces (then eos), as the
searches and the scorer return it: a Transformer's cross-attention of one decoder layer averaged
over its heads, or an RNN's attention. A piece belongs to the word that its last '▁'-initial piece
started (SentencePiece marks word starts with '▁'), so words are the whitespace-separated words of
the text. Each target word is linked to the one source word that receives the most attention from
its pieces (summed over the source word's pieces, averaged over the target word's pieces); the eos
rows and columns take no part (attention that goes to the source's eos is ignored).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

WORD_START = "\u2581"  # SentencePiece's word boundary marker


def word_ids(pieces: Sequence[str]) -> list[int]:
    """Word index of each piece: a piece starting with '▁' starts a new word (the first piece always
    does). A lone '▁' followed by byte pieces (an unseen character) starts the word they make."""
    ids, word = [], -1
    for i, piece in enumerate(pieces):
        if i == 0 or piece.startswith(WORD_START):
            word += 1
        ids.append(max(word, 0))
    return ids


def word_alignment(attention: Tensor, src_pieces: Sequence[str], tgt_pieces: Sequence[str]) -> list[tuple[int, int]]:
    """(source word, target word) links, sorted; `attention` is [>= len(tgt_pieces), >= len(src_pieces)]
    (extra rows and columns, the eos ones, are left out). An empty side gives no links."""
    if not src_pieces or not tgt_pieces:
        return []
    attn = attention[: len(tgt_pieces), : len(src_pieces)].float()
    src_words, tgt_words = word_ids(src_pieces), word_ids(tgt_pieces)
    n_src, n_tgt = src_words[-1] + 1, tgt_words[-1] + 1
    # [target pieces, source words]: attention summed over each source word's pieces
    by_src = torch.zeros(len(tgt_pieces), n_src).index_add_(1, torch.tensor(src_words), attn)
    # [target words, source words]: averaged over each target word's pieces
    counts = torch.zeros(n_tgt).index_add_(0, torch.tensor(tgt_words), torch.ones(len(tgt_pieces)))
    by_word = torch.zeros(n_tgt, n_src).index_add_(0, torch.tensor(tgt_words), by_src) / counts[:, None]
    best = by_word.argmax(dim=1).tolist()
    return sorted((s, t) for t, s in enumerate(best))


def pharaoh(links: Iterable[tuple[int, int]]) -> str:
    """'0-0 1-2 ...' (source-target), the format of fast_align, Moses and fairseq."""
    return " ".join(f"{s}-{t}" for s, t in links)


def alignment_error_rate(hyp: Iterable[tuple[int, int]], sure: Iterable[tuple[int, int]],
                         possible: Iterable[tuple[int, int]] | None = None) -> float:
    """AER (Och and Ney 2003) over a corpus: 1 - (|A & S| + |A & P|) / (|A| + |S|), P including S.
    Arguments are link sets; for a corpus, tag each link with its sentence number."""
    a, s = set(hyp), set(sure)
    p = set(possible) | s if possible is not None else s
    if not a and not s:
        return 0.0
    return 1.0 - (len(a & s) + len(a & p)) / (len(a) + len(s))
