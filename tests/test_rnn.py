"""RNN encoder-decoders: incremental == teacher forced, padding invariance, attention, select, tying, learning."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch

from mt import MTError
from mt.config import RNNConfig
from mt.models.base import DecoderState
from mt.models.rnn import RNNSeq2Seq
from mt.data.vocab import BOS_ID, EOS_ID, PAD_ID

SRC_V, TGT_V = 23, 19

VARIANTS = [
    pytest.param(cell, attn, bidir, dec_layers, id=f"{cell}-{attn}-{'bi' if bidir else 'uni'}-dec{dec_layers}")
    for cell, attn, bidir, dec_layers in itertools.product(
        ["gru", "lstm"], ["none", "bahdanau", "luong_dot", "luong_general"], [True, False], [1, 2]
    )
]


def make_model(cell: str, attention: str, bidirectional: bool, dec_layers: int, **kw) -> RNNSeq2Seq:
    torch.manual_seed(0)
    cfg = RNNConfig(
        cell=cell,
        attention=attention,
        emb_dim=8,
        hidden=12,
        enc_layers=2,
        dec_layers=dec_layers,
        bidirectional=bidirectional,
        dropout=0.1,
        **kw,
    )
    return RNNSeq2Seq(cfg, SRC_V, TGT_V).eval()


def padded_batch(lengths: list[int], vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.full((len(lengths), max(lengths)), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randint(4, vocab, (n,), generator=g)
    return x, torch.tensor(lengths)


def source_and_target() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src, src_len = padded_batch([5, 2, 7, 3], SRC_V, seed=1)
    tgt, _ = padded_batch([6, 3, 4, 2], TGT_V, seed=2)  # padded target inputs are fine too
    tgt[:, 0] = BOS_ID
    return src, src_len, tgt


def run_steps(model: RNNSeq2Seq, state: DecoderState, tokens: torch.Tensor) -> tuple[torch.Tensor, list]:
    """tokens [B, T] -> log-probs [B, T, V] and the attention of every step."""
    out, attns = [], []
    for t in range(tokens.size(1)):
        lp, attn = model.decode_step(tokens[:, t], state)
        out.append(lp)
        attns.append(attn)
    return torch.stack(out, 1), attns


@pytest.mark.parametrize("cell,attention,bidir,dec_layers", VARIANTS)
@torch.no_grad()
def test_incremental_equals_teacher_forced(cell: str, attention: str, bidir: bool, dec_layers: int) -> None:
    model = make_model(cell, attention, bidir, dec_layers)
    src, src_len, tgt = source_and_target()
    logits = model(src, src_len, tgt)
    assert logits.shape == (4, tgt.size(1), TGT_V)
    state = model.init_state(model.encode(src, src_len), tgt.size(1))
    steps, attns = run_steps(model, state, tgt)
    assert state.step == tgt.size(1)
    assert steps.dtype == torch.float32
    torch.testing.assert_close(steps, torch.log_softmax(logits, -1), atol=1e-5, rtol=0)
    assert all((a is None) == (attention == "none") for a in attns)


@pytest.mark.parametrize("attention", ["luong_dot", "luong_general"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@torch.no_grad()
def test_luong_without_input_feeding_parallel_path(cell: str, attention: str) -> None:
    model = make_model(cell, attention, True, 2, input_feeding=False)
    src, src_len, tgt = source_and_target()
    logits = model(src, src_len, tgt)
    steps, _ = run_steps(model, model.init_state(model.encode(src, src_len), tgt.size(1)), tgt)
    torch.testing.assert_close(steps, torch.log_softmax(logits, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["none", "bahdanau", "luong_general"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@torch.no_grad()
def test_more_decoder_than_encoder_layers(cell: str, attention: str) -> None:
    torch.manual_seed(0)
    cfg = RNNConfig(cell=cell, attention=attention, emb_dim=8, hidden=12, enc_layers=1, dec_layers=3)
    model = RNNSeq2Seq(cfg, SRC_V, TGT_V).eval()
    src, src_len, tgt = source_and_target()
    state = model.init_state(model.encode(src, src_len), tgt.size(1))
    hidden = state.dynamic["hidden"] if cell == "lstm" else (state.dynamic["hidden"],)
    assert all(h.shape == (4, 3, 12) for h in hidden)
    steps, _ = run_steps(model, state, tgt)
    torch.testing.assert_close(steps, torch.log_softmax(model(src, src_len, tgt), -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell,attention,bidir,dec_layers", VARIANTS)
@torch.no_grad()
def test_alone_equals_in_padded_batch(cell: str, attention: str, bidir: bool, dec_layers: int) -> None:
    model = make_model(cell, attention, bidir, dec_layers)
    src, src_len = padded_batch([7, 3, 5], SRC_V, seed=3)
    tgt, _ = padded_batch([5, 5, 5], TGT_V, seed=4)
    tgt[:, 0] = BOS_ID
    row, n = 1, 3  # the short sentence
    enc_b = model.encode(src, src_len)
    enc_1 = model.encode(src[row : row + 1, :n], src_len[row : row + 1])
    torch.testing.assert_close(enc_1.memory[0], enc_b.memory[row, :n], atol=1e-5, rtol=0)
    assert torch.all(enc_b.memory[row, n:] == 0)
    lp_b, at_b = run_steps(model, model.init_state(enc_b, 5), tgt)
    lp_1, at_1 = run_steps(model, model.init_state(enc_1, 5), tgt[row : row + 1])
    torch.testing.assert_close(lp_1[0], lp_b[row], atol=1e-5, rtol=0)
    for a1, ab in zip(at_1, at_b):
        if attention == "none":
            assert a1 is None and ab is None
        else:
            torch.testing.assert_close(a1[0], ab[row, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell,attention,bidir,dec_layers", [v for v in VARIANTS if "none" not in v.id])
@torch.no_grad()
def test_attention_rows_and_padding(cell: str, attention: str, bidir: bool, dec_layers: int) -> None:
    model = make_model(cell, attention, bidir, dec_layers)
    src, src_len, tgt = source_and_target()
    attn = model.teacher_forced_attention(src, src_len, tgt)  # [B, T, S]
    assert attn.shape == (4, tgt.size(1), src.size(1))
    mask = (src != PAD_ID)[:, None, :].expand_as(attn)
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]), atol=1e-6, rtol=0)
    assert torch.all(attn[~mask] == 0)
    assert torch.all(attn[mask] > 0)


@pytest.mark.parametrize("cell,attention,bidir,dec_layers", VARIANTS)
@torch.no_grad()
def test_state_select_permutes(cell: str, attention: str, bidir: bool, dec_layers: int) -> None:
    model = make_model(cell, attention, bidir, dec_layers)
    src, src_len, tgt = source_and_target()
    state = model.init_state(model.encode(src, src_len), 4)
    assert "src_mask" in state.static
    model.decode_step(tgt[:, 0], state)
    model.decode_step(tgt[:, 1], state)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = state.select(perm)
    assert permuted.step == state.step == 2
    lp, at = model.decode_step(tgt[:, 2], state)
    lp_p, at_p = model.decode_step(tgt[perm, 2], permuted)
    torch.testing.assert_close(lp_p, lp[perm], atol=1e-6, rtol=0)
    if attention != "none":
        torch.testing.assert_close(at_p, at[perm], atol=1e-6, rtol=0)
    # expanding to batch x beam (beam 2) repeats each sentence's result
    expand = torch.arange(4).repeat_interleave(2)
    lp_e, _ = model.decode_step(tgt[expand, 3], state.select(expand))
    lp_s, _ = model.decode_step(tgt[:, 3], state)
    # 8 rows against 4: a BLAS may sum in another order for another batch size (bitwise equal on some
    # CPUs, not promised); 1e-5 is a few dozen ulps of these log-probabilities (about -3), a wrong row is
    # off by far more
    torch.testing.assert_close(lp_e, lp_s[expand], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_hidden_state_is_batch_first(cell: str) -> None:
    model = make_model(cell, "luong_general", True, 1)
    src, src_len, _ = source_and_target()
    enc = model.encode(src, src_len)
    final = enc.final if cell == "lstm" else (enc.final,)
    assert all(f.shape == (4, 2, 24) for f in final)  # [B, enc_layers, 2H]
    state = model.init_state(enc, 5)
    hidden = state.dynamic["hidden"] if cell == "lstm" else (state.dynamic["hidden"],)
    assert all(h.shape == (4, 1, 12) for h in hidden)  # [B, dec_layers, H]
    assert state.dynamic["feed"].shape == (4, 12)
    assert state.static["memory"].shape == (4, 7, 24) and state.static["keys"].shape == (4, 7, 12)


@pytest.mark.parametrize("cell,attention,bidir,dec_layers", VARIANTS)
def test_training_pass_reaches_every_parameter(cell: str, attention: str, bidir: bool, dec_layers: int) -> None:
    model = make_model(cell, attention, bidir, dec_layers).train()
    src, src_len, tgt = source_and_target()
    model(src, src_len, tgt).logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_share_embeddings_and_tie_output() -> None:
    cfg = RNNConfig(emb_dim=8, hidden=12, enc_layers=1, dec_layers=1, share_embeddings=True, tie_output=True)
    model = RNNSeq2Seq(cfg, 20, 20)
    assert model.encoder.embed.weight is model.tgt_embed.weight
    assert model.out.weight is model.tgt_embed.weight
    n_unique = len({id(p) for p in model.parameters()})
    assert n_unique == len(list(model.parameters()))
    # hidden != emb_dim: a projection in front of the tied layer; the logits still have the right size
    src, src_len, tgt = source_and_target()
    assert model(src.clamp(max=19), src_len, tgt).shape == (4, tgt.size(1), 20)
    # separate by default
    plain = RNNSeq2Seq(replace(cfg, share_embeddings=False, tie_output=False), 20, 20)
    assert plain.encoder.embed.weight is not plain.tgt_embed.weight
    assert plain.out.weight is not plain.tgt_embed.weight
    # tying works with different vocabularies; sharing does not
    tied = RNNSeq2Seq(replace(cfg, share_embeddings=False, emb_dim=12), 20, 25)
    assert tied.out.weight is tied.tgt_embed.weight and tied.out.weight.shape == (25, 12)
    with pytest.raises(MTError, match="share_embeddings"):
        RNNSeq2Seq(cfg, 20, 25)


def test_max_positions_unbounded() -> None:
    model = make_model("gru", "bahdanau", True, 1)
    assert model.max_src_positions is None and model.max_tgt_positions is None


@torch.no_grad()
def greedy(model: RNNSeq2Seq, src: torch.Tensor, src_len: torch.Tensor, max_len: int) -> list[list[int]]:
    state = model.init_state(model.encode(src, src_len), max_len)
    prev = torch.full((src.size(0),), BOS_ID, dtype=torch.long)
    out = []
    for _ in range(max_len):
        lp, _ = model.decode_step(prev, state)
        prev = lp.argmax(-1)
        out.append(prev)
    rows = torch.stack(out, 1).tolist()
    return [r[: r.index(EOS_ID) + 1] if EOS_ID in r else r for r in rows]


def test_tiny_bahdanau_learns_to_reverse() -> None:
    torch.manual_seed(0)
    sents = [[4, 5, 6, 7, 8], [9, 10, 11], [12, 4, 9, 13], [7, 6, 13, 12, 11, 10]]
    src, src_len = padded_batch([len(s) for s in sents], 14, seed=0)
    for i, s in enumerate(sents):
        src[i, : len(s)] = torch.tensor(s)
    targets = [list(reversed(s)) + [EOS_ID] for s in sents]
    T = max(len(t) for t in targets)
    tgt_out = torch.full((4, T), PAD_ID, dtype=torch.long)
    for i, t in enumerate(targets):
        tgt_out[i, : len(t)] = torch.tensor(t)
    tgt_in = torch.cat([torch.full((4, 1), BOS_ID), tgt_out[:, :-1]], dim=1)
    tgt_in[tgt_in == EOS_ID] = PAD_ID

    cfg = RNNConfig(cell="gru", attention="bahdanau", emb_dim=16, hidden=32, enc_layers=1, dec_layers=1, dropout=0.0)
    model = RNNSeq2Seq(cfg, 14, 14)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # exact after ~25 steps (seeds 0-3); the margin keeps it seed-proof
        logits = model(src, src_len, tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 14), tgt_out.reshape(-1), ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.05
    assert greedy(model, src, src_len, T + 2) == targets
