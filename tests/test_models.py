"""Every architecture through build_model: step-by-step decoding == teacher forcing, padding
invariance, DecoderState.select, Transformer position limits and shared embeddings."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from mt import MTError
from mt.config import RNNConfig, TransformerConfig
from mt.models import build_model
from mt.models.base import DecoderState, Seq2Seq
from mt.data.vocab import BOS_ID, PAD_ID

SRC_V, TGT_V, JOINT_V = 17, 13, 15

TRANSFORMERS = {
    f"{norm}-{pos}-{emb}": TransformerConfig(
        d_model=16,
        heads=2,
        enc_layers=2,
        dec_layers=2,
        ff_dim=24,
        dropout=0.1,
        attn_dropout=0.1,
        norm=norm,
        positions=pos,
        max_positions=32,
        share_embeddings=emb == "shared",
        tie_output=emb in ("shared", "tied"),
    )
    for norm, pos, emb in itertools.product(["pre", "post"], ["sinusoidal", "learned"], ["shared", "tied", "untied"])
}
# a decoder with its own heads and feed-forward width (model.dec_heads, model.dec_ff_dim)
TRANSFORMERS["pre-sinusoidal-tied-own-decoder"] = TransformerConfig(
    d_model=16, heads=2, enc_layers=2, dec_layers=1, ff_dim=24, dec_heads=4, dec_ff_dim=40, dropout=0.1,
    attn_dropout=0.1, max_positions=32, tie_output=True)
RNNS = {
    f"{cell}-{attention}": RNNConfig(
        cell=cell, attention=attention, emb_dim=8, hidden=12, enc_layers=2, dec_layers=2, dropout=0.1
    )
    for cell, attention in itertools.product(["gru", "lstm"], ["none", "bahdanau", "luong_dot", "luong_general"])
}
CONFIGS = {**TRANSFORMERS, **RNNS}


def make(name: str) -> tuple[Seq2Seq, int, int]:
    cfg = CONFIGS[name]
    shared = getattr(cfg, "share_embeddings", False)
    src_v, tgt_v = (JOINT_V, JOINT_V) if shared else (SRC_V, TGT_V)
    torch.manual_seed(0)
    return build_model(cfg, src_v, tgt_v).eval(), src_v, tgt_v


def padded(lengths: list[int], vocab: int, seed: int, first: int | None = None) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.full((len(lengths), max(lengths)), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randint(4, vocab, (n,), generator=g)
        if first is not None:
            x[i, 0] = first
    return x, torch.tensor(lengths)


SRC_LENGTHS = [5, 2, 7, 3]
TGT_LENGTHS = [6, 3, 4, 2]


def data(src_v: int, tgt_v: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    src, src_len = padded(SRC_LENGTHS, src_v, seed=1)
    tgt, tgt_len = padded(TGT_LENGTHS, tgt_v, seed=2, first=BOS_ID)  # bos-prefixed inputs, padded
    return src, src_len, tgt, tgt_len


def incremental(model: Seq2Seq, src: Tensor, src_len: Tensor, tgt: Tensor, need_attention: bool = False) -> Tensor:
    state = model.init_state(model.encode(src, src_len), tgt.size(1), need_attention=need_attention)
    out = []
    for t in range(tgt.size(1)):
        lp, attn = model.decode_step(tgt[:, t], state)
        assert lp.dtype == torch.float32 and lp.shape == (src.size(0), model_vocab(model))
        if need_attention and attn is not None:
            assert attn.shape == src.shape
        out.append(lp)
    assert state.step == tgt.size(1)
    return torch.stack(out, dim=1)


def model_vocab(model: Seq2Seq) -> int:
    return (model.output if hasattr(model, "output") else model.out).out_features


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_incremental_equals_teacher_forced(name: str) -> None:
    model, src_v, tgt_v = make(name)
    src, src_len, tgt, _ = data(src_v, tgt_v)
    forced = model(src, src_len, tgt).log_softmax(-1)
    assert forced.shape == (4, tgt.size(1), tgt_v)
    for need_attention in (False, True):  # the Transformer's explicit-softmax path as well as SDPA
        torch.testing.assert_close(incremental(model, src, src_len, tgt, need_attention), forced, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_alone_equals_in_padded_batch(name: str) -> None:
    model, src_v, tgt_v = make(name)
    src, src_len, tgt, tgt_len = data(src_v, tgt_v)
    forced = model(src, src_len, tgt).log_softmax(-1)
    steps = incremental(model, src, src_len, tgt)
    for i, (n, m) in enumerate(zip(SRC_LENGTHS, TGT_LENGTHS)):
        one_src, one_tgt = src[i : i + 1, :n], tgt[i : i + 1, :m]
        alone = model(one_src, src_len[i : i + 1], one_tgt).log_softmax(-1)[0]
        torch.testing.assert_close(forced[i, :m], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(steps[i, :m], alone, atol=1e-5, rtol=0)
        alone_steps = incremental(model, one_src, src_len[i : i + 1], one_tgt)[0]
        torch.testing.assert_close(alone_steps, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_select_same_sources(name: str) -> None:
    """Expand to batch x beam, run two steps, reorder beams within each sentence: same_sources=True
    (static tensors kept) gives what a full copy does, and each row follows the row it came from."""
    model, src_v, tgt_v = make(name)
    src, src_len, tgt, _ = data(src_v, tgt_v)
    b, k = src.size(0), 3
    state = model.init_state(model.encode(src, src_len), 6, need_attention=True)
    state = state.select(torch.arange(b).repeat_interleave(k))
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(4, tgt_v, (b * k, 4), generator=g)
    for t in range(2):
        model.decode_step(tokens[:, t], state)
    # a beam-style reorder: row i*k+j takes beam perm[i, j] of sentence i (with repeats)
    perm = torch.tensor([[2, 0, 0], [1, 1, 2], [0, 1, 2], [2, 2, 1]])
    index = (torch.arange(b)[:, None] * k + perm).view(-1)
    kept, copied = state.select(index, same_sources=True), state.select(index)
    assert kept.static is state.static and kept.step == copied.step == 2
    history = tokens[index]  # what each row has consumed, after the reorder
    for t in range(2, 4):
        lp_kept, attn_kept = model.decode_step(history[:, t], kept)
        lp_copied, attn_copied = model.decode_step(history[:, t], copied)
        torch.testing.assert_close(lp_kept, lp_copied, atol=0, rtol=0)
        if attn_kept is not None:
            torch.testing.assert_close(attn_kept, attn_copied, atol=0, rtol=0)
    # each row equals decoding its full history from scratch
    fresh = model.init_state(model.encode(src, src_len), 6).select(torch.arange(b).repeat_interleave(k))
    for t in range(4):
        lp_fresh, _ = model.decode_step(history[:, t], fresh)
    torch.testing.assert_close(lp_kept, lp_fresh, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_dropping_rows(name: str) -> None:
    """select with fewer rows (finished sentences leave the batch) keeps the others' results."""
    model, src_v, tgt_v = make(name)
    src, src_len, tgt, _ = data(src_v, tgt_v)
    full = incremental(model, src, src_len, tgt)
    state = model.init_state(model.encode(src, src_len), tgt.size(1))
    model.decode_step(tgt[:, 0], state)
    keep = torch.tensor([3, 0])
    state = state.select(keep)
    for t in range(1, tgt.size(1)):
        lp, _ = model.decode_step(tgt[keep, t], state)
    torch.testing.assert_close(lp, full[keep, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("need_attention", [False, True])  # SDPA and the explicit-softmax path
@pytest.mark.parametrize("name", ["pre-sinusoidal-shared", "post-learned-untied", *RNNS])
@torch.no_grad()
def test_expand_and_in_place_selects_equal_copies(name: str, need_attention: bool) -> None:
    """What the searches call (expand, select_, keep_sentences_) gives what the copying select
    gives: beams sharing their sentence's static tensors (DecoderState.group) change no number."""
    model, src_v, tgt_v = make(name)
    src, src_len, _, _ = data(src_v, tgt_v)
    b, k = src.size(0), 3
    enc = model.encode(src, src_len)
    fast = model.init_state(enc, 8, need_attention=need_attention).expand(k)
    slow = model.init_state(enc, 8, need_attention=need_attention).select(torch.arange(b).repeat_interleave(k))
    assert fast.group == k and slow.group == 1
    assert fast.batch_size == slow.batch_size == b * k
    assert all(v.size(0) == b for v in fast.static.values())  # not copied per beam
    g = torch.Generator().manual_seed(5)
    sents = b
    for t in range(6):
        rows = sents * k
        tokens = torch.randint(4, tgt_v, (rows,), generator=g)
        lp_fast, attn_fast = model.decode_step(tokens, fast)
        lp_slow, attn_slow = model.decode_step(tokens, slow)
        torch.testing.assert_close(lp_fast, lp_slow, atol=1e-5, rtol=0)
        if attn_slow is not None:
            torch.testing.assert_close(attn_fast, attn_slow, atol=1e-6, rtol=0)
        if t == 2:  # sentences 0 and 2 finish and leave the batch
            keep = torch.tensor([1, 3])
            fast.keep_sentences_(keep, k)
            slow = slow.select((keep[:, None] * k + torch.arange(k)).view(-1))
            sents = 2
        else:  # a beam reorder within each sentence, with repeats
            perm = torch.randint(0, k, (sents, k), generator=g)
            index = (torch.arange(sents)[:, None] * k + perm).view(-1)
            fast.select_(index, same_sources=True)
            slow = slow.select(index, same_sources=True)


@torch.no_grad()
def test_kv_cache_appends_and_selects() -> None:
    """The cache grows by one position per append; a row selection (composed with the ones before
    it) shows in the next append's result and leaves the original cache as it was."""
    from mt.models.transformer import KVCache

    cache = KVCache()
    assert cache.length == 0 and cache.index_select(0, torch.tensor([0])).length == 0
    ks = torch.randn(3, 4, 2, 1, 3)
    for t in range(3):
        k, v = cache.append(ks[t], ks[t] * 2)
        assert k.shape == (4, 2, t + 1, 3) and cache.length == t + 1
    torch.testing.assert_close(cache.k, torch.cat(list(ks), dim=2), atol=0, rtol=0)
    before = cache.k.clone()
    new = torch.randn(3, 2, 1, 3)
    copy = cache.index_select(0, torch.tensor([3, 3, 0]))
    assert copy.length == 3
    k, v = copy.append(new, 2 * new)
    torch.testing.assert_close(k, torch.cat([before[[3, 3, 0]], new], dim=2), atol=0, rtol=0)
    torch.testing.assert_close(v, 2 * torch.cat([before[[3, 3, 0]], new], dim=2), atol=0, rtol=0)
    # two selections before an append compose: [2, 0] of [1, 3, 0, 2] is [0, 1]
    twice = cache.index_select(0, torch.tensor([1, 3, 0, 2])).index_select(0, torch.tensor([2, 0]))
    k, _ = twice.append(new[:2], new[:2])
    torch.testing.assert_close(k, torch.cat([before[[0, 1]], new[:2]], dim=2), atol=0, rtol=0)
    torch.testing.assert_close(cache.k, before, atol=0, rtol=0)  # unchanged
    k, _ = cache.append(new[:1].expand(4, -1, -1, -1), new[:1].expand(4, -1, -1, -1))
    torch.testing.assert_close(k[:, :, :3], before, atol=0, rtol=0)


def test_decoding_with_autograd_reorders_and_backpropagates() -> None:
    """Outside inference mode (e.g. a training objective over decoded steps) decoding, beam
    reorders included, keeps the autograd graph: the gradient of a step after a reorder flows
    through the reordered cache exactly as if the rows had been chosen before decoding."""
    model, src_v, tgt_v = make("pre-sinusoidal-untied")
    src, src_len, tgt, _ = data(src_v, tgt_v)
    index = torch.tensor([1, 1, 2, 3, 4, 4, 7, 6])  # rows stay within their sentence (2 per sentence)
    first, second = tgt[:, 0].repeat_interleave(2), tgt[:, 1].repeat_interleave(2)

    def step_two(reorder_cached: bool) -> tuple[Tensor, dict[str, Tensor]]:
        model.zero_grad(set_to_none=True)
        state = model.init_state(model.encode(src, src_len), 4).expand(2)
        if reorder_cached:  # step 1 on all rows, then the cache is reordered
            model.decode_step(first, state)
            state.select_(index, same_sources=True)
        else:  # the rows chosen first: step 1 computes the reordered cache directly
            state.select_(index, same_sources=True)
            model.decode_step(first[index], state)
        lp2, _ = model.decode_step(second, state)
        lp2.sum().backward()  # step 1 reaches this loss only through the cached keys/values
        return lp2.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    lp_fast, grads_fast = step_two(True)
    lp_ref, grads_ref = step_two(False)
    torch.testing.assert_close(lp_fast, lp_ref)
    assert grads_fast.keys() == grads_ref.keys() and "decoder.0.self_attn.qkv.weight" in grads_ref
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_fast[name], grad, msg=name)


def test_transformer_init_state_checks_max_positions() -> None:
    model, src_v, tgt_v = make("pre-sinusoidal-untied")
    src, src_len, _, _ = data(src_v, tgt_v)
    enc = model.encode(src, src_len)
    assert model.max_tgt_positions == 32
    model.init_state(enc, 32)  # exactly max_positions is fine
    with pytest.raises(MTError, match="32"):
        model.init_state(enc, 33)


def test_transformer_share_embeddings_and_tie_output() -> None:
    model, _, _ = make("pre-sinusoidal-shared")
    weight = model.src_embed.tokens.weight
    assert isinstance(weight, torch.nn.Parameter)
    assert model.tgt_embed.tokens.weight is weight
    assert model.output.weight is weight
    names = [n for n, p in model.named_parameters() if p is weight]
    assert len(names) == 1  # one Parameter, counted once by the optimizer
    assert bool((weight[PAD_ID] == 0).all())
    tied, _, _ = make("post-learned-tied")
    assert tied.output.weight is tied.tgt_embed.tokens.weight
    assert tied.src_embed.tokens.weight is not tied.tgt_embed.tokens.weight
    untied, _, _ = make("post-learned-untied")
    assert untied.output.weight is not untied.tgt_embed.tokens.weight
    with pytest.raises(MTError):
        build_model(TRANSFORMERS["pre-sinusoidal-shared"], SRC_V, TGT_V)  # different vocabularies


def test_build_model_rejects_unknown_config() -> None:
    with pytest.raises(TypeError):
        build_model(object(), SRC_V, TGT_V)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["pre-learned-untied", "gru-bahdanau"])
def test_decoder_state_is_batch_first(name: str) -> None:
    model, src_v, tgt_v = make(name)
    src, src_len, _, _ = data(src_v, tgt_v)
    state: DecoderState = model.init_state(model.encode(src, src_len), 5)
    assert state.batch_size == 4
    for value in list(state.static.values()) + list(state.dynamic.values()):
        for tensor in value if isinstance(value, tuple) else [value]:
            if hasattr(tensor, "k"):  # a KV cache: empty before the first step
                assert tensor.length == 0
                continue
            assert tensor.size(0) == 4
