"""Word alignments from attention: pieces -> whitespace-separated words, Pharaoh format, AER.

    links = word_alignment(attention, source_word_ids(vocab, line, ids) or word_ids(src_pieces), word_ids(tgt_pieces))
    pharaoh(links)      # "0-0 1-2 2-1": (source word, target word) pairs

The attention is one row per target piece (then eos) over the source pieces (then eos), as the
searches and the scorer return it: a Transformer's cross-attention of one decoder layer averaged
over its heads, or an RNN's attention. Words are the whitespace-separated words of the text: a
source piece belongs to the word of the line it was cut from, a target piece to the word that its
last '▁'-initial piece started (SentencePiece marks word starts with '▁'). Each target word is
linked to the one source word that receives the most attention from its pieces (summed over the
source word's pieces, averaged over the target word's pieces); the eos rows and columns take no
part (attention that goes to the source's eos is ignored).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from mt.data.vocab import UNK_ID

WORD_START = "\u2581"  # SentencePiece's word boundary marker
UNKNOWN_PIECE = "<unk>"  # the unknown piece of mt's vocabularies (id 1), detokenised as " ⁇ "


def word_ids(pieces: Sequence[str]) -> list[int]:
    """Word index of each piece, the words of the detokenised text: a piece starting with '▁' starts
    a new word (the first piece always does). A lone '▁' followed by byte pieces (an unseen
    character) starts the word they make. The unknown piece is a word of its own, as SentencePiece
    detokenises it (" ⁇ "), with a lone '▁' before it."""
    ids, word, after_unknown = [], -1, False
    for i, piece in enumerate(pieces):
        unknown = piece == UNKNOWN_PIECE
        if i == 0 or after_unknown or piece.startswith(WORD_START) or (unknown and pieces[i - 1] != WORD_START):
            word += 1
        after_unknown = unknown
        ids.append(word)
    return ids


def source_word_ids(vocab, line: str, ids: Sequence[int]) -> list[int] | None:
    """Word index of each of a source line's pieces (`ids`, the line's segmentation) among the line's
    own whitespace-separated words, found by segmenting each word alone (SentencePiece's pieces
    never cross whitespace), which places an unknown piece in the word it replaced. Unknown pieces
    of adjacent words that SentencePiece joined into one (a word vocabulary does) belong to the
    first of them. None where the words' pieces are not the line's (the normalisation changed its
    spacing): use word_ids(pieces) then."""
    words = line.split()
    if not words:
        return [] if not ids else None
    out: list[int] = []
    for w, pieces in enumerate(vocab.encode_batch(words)):
        for i in pieces:
            k = len(out)
            if k < len(ids) and ids[k] == i:
                out.append(w)
            elif not (i == UNK_ID and k and ids[k - 1] == UNK_ID):  # else: joined into the unknown piece before
                return None
    return out if len(out) == len(ids) else None


def word_attention(attention: Tensor, src_words: Sequence[int], tgt_words: Sequence[int],
                   shape: tuple[int, int] | None = None) -> Tensor:
    """[target words, source words]: the attention of target pieces over source pieces (`attention`,
    [>= len(tgt_words), >= len(src_words)]; extra rows and columns, the eos ones, are left out)
    summed over each source word's pieces and averaged over each target word's. src_words and
    tgt_words give each piece's word (word_ids, source_word_ids), the matrix's row and column:
    a part of a longer line fills its own block of a `shape` matrix (default: just large enough)."""
    n_tgt, n_src = shape if shape is not None else (max(tgt_words, default=-1) + 1, max(src_words, default=-1) + 1)
    out = torch.zeros(n_tgt, n_src)
    if not src_words or not tgt_words:
        return out
    attn = attention[: len(tgt_words), : len(src_words)].float().cpu()
    src_idx, tgt_idx = torch.tensor(list(src_words)), torch.tensor(list(tgt_words))
    by_src = torch.zeros(len(tgt_words), n_src).index_add_(1, src_idx, attn)  # [target pieces, source words]
    counts = torch.zeros(n_tgt).index_add_(0, tgt_idx, torch.ones(len(tgt_words)))
    return out.index_add_(0, tgt_idx, by_src) / counts.clamp(min=1)[:, None]


def links_from(matrix: Tensor) -> list[tuple[int, int]]:
    """(source word, target word) links, sorted: each target word (row) with any attention is linked
    to the source word (column) it attends to most."""
    if matrix.numel() == 0:
        return []
    best = matrix.argmax(dim=1).tolist()
    present = (matrix > 0).any(dim=1).tolist()
    return sorted((s, t) for t, s in enumerate(best) if present[t])


def word_alignment(attention: Tensor, src_words: Sequence[int], tgt_words: Sequence[int]) -> list[tuple[int, int]]:
    """(source word, target word) links, sorted (word_attention, then links_from). An empty side
    gives no links."""
    return links_from(word_attention(attention, src_words, tgt_words))


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
