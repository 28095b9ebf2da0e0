"""GRU/LSTM encoder-decoders: d2l Seq2Seq, Bahdanau (additive) and Luong (dot/general) attention.

One model class, `RNNSeq2Seq`, with a bidirectional multi-layer encoder, a bridge from the
encoder's final states to the decoder's first hidden state, and one of three small decoder
modules chosen once in the constructor from `cfg.attention`.

Every decoder advances one target position in `step` and the teacher-forced `forward` is built
from the same step (or, where the recurrence does not depend on the attention, from one call of
the RNN over the whole sequence followed by the same attention), so step-by-step decoding and
teacher forcing give the same numbers.

Hidden states live in DecoderState with the batch on dim 0: [B, layers, H] (LSTM: a tuple (h, c)),
and are transposed to torch's [layers, B, H] only around the RNN call.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mt import MTError
from mt.config import RNNConfig
from mt.models.base import DecoderState, EncoderOut, Seq2Seq, padding_mask
from mt.models.dropout import Dropout
from mt.data.vocab import PAD_ID

#: an RNN state with the batch on dim 0: GRU [B, L, H]; LSTM (h, c), each [B, L, H]
Hidden = Union[Tensor, tuple[Tensor, Tensor]]


def make_rnn(
    cell: str, input_size: int, hidden: int, layers: int, dropout: float, bidirectional: bool = False
) -> nn.RNNBase:
    rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
    return rnn_cls(
        input_size,
        hidden,
        num_layers=layers,
        batch_first=True,
        dropout=dropout if layers > 1 else 0.0,  # dropout between layers only
        bidirectional=bidirectional,
    )


def to_torch_hidden(hidden: Hidden) -> Hidden:
    """batch-first [B, L, H] -> torch's [L, B, H] (tuples elementwise)."""
    if isinstance(hidden, tuple):
        return tuple(h.transpose(0, 1).contiguous() for h in hidden)
    return hidden.transpose(0, 1).contiguous()


def from_torch_hidden(hidden: Hidden) -> Hidden:
    """torch's [L, B, H] -> batch-first [B, L, H]."""
    if isinstance(hidden, tuple):
        return tuple(h.transpose(0, 1) for h in hidden)
    return hidden.transpose(0, 1)


def top_layer(hidden: Hidden) -> Tensor:
    """[B, L, H] (or (h, c)) -> h of the top layer [B, H]."""
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    return h[:, -1]


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """softmax over the last dim with -inf where mask is False: exact zeros on padding."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


# ----------------------------------------------------------------------------------------------
# encoder and bridge


class Encoder(nn.Module):
    """Embedding + dropout + (bi)GRU/LSTM over packed sequences: padding never changes a result."""

    def __init__(self, cfg: RNNConfig, embed: nn.Embedding) -> None:
        super().__init__()
        self.embed = embed
        self.dropout = Dropout(cfg.dropout)
        self.rnn = make_rnn(cfg.cell, cfg.emb_dim, cfg.hidden, cfg.enc_layers, cfg.dropout, cfg.bidirectional)
        self.layers = cfg.enc_layers
        self.dirs = 2 if cfg.bidirectional else 1
        self.out_dim = cfg.hidden * self.dirs

    def _batch_first_final(self, h: Tensor) -> Tensor:
        # torch: [L*dirs, B, H] -> [B, L, dirs*H] (per layer: forward state then backward state)
        B, H = h.size(1), h.size(2)
        h = h.view(self.layers, self.dirs, B, H).permute(2, 0, 1, 3)  # [B, L, dirs, H]
        return h.reshape(B, self.layers, self.dirs * H)

    def forward(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Hidden]:
        S = src.size(1)
        x = self.dropout(self.embed(src))  # [B, S, E]
        packed = pack_padded_sequence(x, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # [B, S, dirs*H]
        if isinstance(final, tuple):
            final = tuple(self._batch_first_final(f) for f in final)
        else:
            final = self._batch_first_final(final)
        return memory, final


class Bridge(nn.Module):
    """Encoder final states [B, enc_layers, dirs*H] -> decoder initial state [B, dec_layers, H].

    Choice: layers are aligned from the top. Decoder layer i (0 = bottom) starts from encoder
    layer max(0, enc_layers - dec_layers + i): with fewer decoder layers the top encoder layers
    are used; with more, the extra bottom decoder layers all start from encoder layer 0.
    Unidirectional: the state is passed through unchanged (d2l; sizes already match).
    Bidirectional: the concatenated [fwd; bwd] state of each layer goes through one shared
    Linear(2H -> H) + tanh. LSTM cell states get their own Linear(2H -> H) without tanh, since a
    cell state is not bounded to (-1, 1).
    """

    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        self.layer_index = [max(0, cfg.enc_layers - cfg.dec_layers + i) for i in range(cfg.dec_layers)]
        self.project = cfg.bidirectional
        if self.project:
            self.h_proj = nn.Linear(2 * cfg.hidden, cfg.hidden)
            self.c_proj = nn.Linear(2 * cfg.hidden, cfg.hidden) if cfg.cell == "lstm" else None

    def _pick(self, x: Tensor) -> Tensor:
        return x[:, self.layer_index]  # [B, dec_layers, dirs*H]

    def forward(self, final: Hidden) -> Hidden:
        if isinstance(final, tuple):
            h, c = (self._pick(f) for f in final)
            if self.project:
                h, c = torch.tanh(self.h_proj(h)), self.c_proj(c)
            return h, c
        h = self._pick(final)
        return torch.tanh(self.h_proj(h)) if self.project else h


# ----------------------------------------------------------------------------------------------
# attention


class AdditiveAttention(nn.Module):
    """Bahdanau: score(q, k) = v^T tanh(W_q q + W_k k); W_k k is computed once per sentence."""

    def __init__(self, enc_dim: int, hidden: int) -> None:
        super().__init__()
        self.W_k = nn.Linear(enc_dim, hidden, bias=False)
        self.W_q = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)

    def project_keys(self, memory: Tensor) -> Tensor:
        return self.W_k(memory)  # [B, S, D] -> [B, S, H]

    def forward(
        self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor, group: int = 1
    ) -> tuple[Tensor, Tensor]:
        # query [B, H], keys [B/g, S, H], memory [B/g, S, D], mask [B/g, S] -> context [B, D], attn [B, S]
        # (the g adjacent query rows of a sentence, e.g. its beams, share its keys and memory)
        b = query.size(0)
        q = self.W_q(query).view(b // group, group, 1, -1)  # [B/g, g, 1, H]
        scores = self.v(torch.tanh(q + keys[:, None])).squeeze(-1)  # [B/g, g, S]
        attn = masked_softmax(scores, mask[:, None, :])
        context = torch.bmm(attn, memory)  # [B/g, g, D]
        return context.view(b, -1), attn.view(b, -1)


class LuongAttention(nn.Module):
    """Luong: score(h, k) = h . k (dot) or h . W k (general); h~ = tanh(W_c [c; h]).

    dot with enc_dim != hidden projects the memory to hidden (the only difference from general
    is then that general always has W). Projected keys are computed once per sentence.
    """

    def __init__(self, enc_dim: int, hidden: int, general: bool) -> None:
        super().__init__()
        needs_proj = general or enc_dim != hidden
        self.key_proj = nn.Linear(enc_dim, hidden, bias=False) if needs_proj else nn.Identity()
        self.combine = nn.Linear(enc_dim + hidden, hidden, bias=False)  # W_c

    def project_keys(self, memory: Tensor) -> Tensor:
        return self.key_proj(memory)  # [B, S, D] -> [B, S, H]

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # query [B, T, H], keys [B, S, H], memory [B, S, D], mask [B, S] -> h~ [B, T, H], attn [B, T, S]
        scores = torch.bmm(query, keys.transpose(1, 2))  # [B, T, S]
        attn = masked_softmax(scores, mask[:, None, :])
        context = torch.bmm(attn, memory)  # [B, T, D]
        return torch.tanh(self.combine(torch.cat([context, query], dim=-1))), attn


# ----------------------------------------------------------------------------------------------
# decoders: prepare() fills state entries once per sentence, step() advances one position,
# run() is the teacher-forced pass (by default a loop over step)


class DecoderBase(nn.Module):
    out_dim: int

    def prepare(self, enc: EncoderOut, hidden: Hidden) -> tuple[dict, dict]:
        """-> (static entries besides src_mask, dynamic entries), all batch on dim 0."""
        raise NotImplementedError  # pragma: no cover - abstract

    def step(self, emb: Tensor, static: dict, dynamic: dict, group: int = 1) -> tuple[Tensor, Tensor | None]:
        """emb [B, E] -> (output [B, out_dim], attention [B, S] or None); updates dynamic.
        group g: static entries hold one row per g adjacent rows (DecoderState.group)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def run(self, emb: Tensor, static: dict, dynamic: dict) -> Tensor:
        """emb [B, T, E] -> outputs [B, T, out_dim]."""
        outs = [self.step(emb[:, t], static, dynamic)[0] for t in range(emb.size(1))]
        return torch.stack(outs, dim=1)

    def _rnn_step(self, x: Tensor, dynamic: dict) -> Tensor:
        # x [B, in] -> top-layer output [B, H]; dynamic["hidden"] updated
        out, hidden = self.rnn(x[:, None, :], to_torch_hidden(dynamic["hidden"]))
        dynamic["hidden"] = from_torch_hidden(hidden)
        return out[:, 0]


class PlainDecoder(DecoderBase):
    """d2l Seq2Seq: the final top-layer encoder state is the context concatenated to every input."""

    def __init__(self, cfg: RNNConfig, enc_dim: int) -> None:
        super().__init__()
        self.rnn = make_rnn(cfg.cell, cfg.emb_dim + enc_dim, cfg.hidden, cfg.dec_layers, cfg.dropout)
        self.out_dim = cfg.hidden

    def prepare(self, enc: EncoderOut, hidden: Hidden) -> tuple[dict, dict]:
        return {"context": top_layer(enc.final)}, {"hidden": hidden}  # context [B, D]

    def step(self, emb: Tensor, static: dict, dynamic: dict, group: int = 1) -> tuple[Tensor, None]:
        context = static["context"]
        if group > 1:
            context = context.repeat_interleave(group, dim=0)
        return self._rnn_step(torch.cat([emb, context], dim=-1), dynamic), None

    def run(self, emb: Tensor, static: dict, dynamic: dict) -> Tensor:
        # the recurrence does not depend on outputs: one RNN call over the whole sequence
        context = static["context"][:, None, :].expand(-1, emb.size(1), -1)  # [B, T, D]
        out, hidden = self.rnn(torch.cat([emb, context], dim=-1), to_torch_hidden(dynamic["hidden"]))
        dynamic["hidden"] = from_torch_hidden(hidden)
        return out  # [B, T, H]


class BahdanauDecoder(DecoderBase):
    """d2l Seq2SeqAttentionDecoder: attend with the previous top hidden state, then the RNN."""

    def __init__(self, cfg: RNNConfig, enc_dim: int) -> None:
        super().__init__()
        self.attention = AdditiveAttention(enc_dim, cfg.hidden)
        self.rnn = make_rnn(cfg.cell, cfg.emb_dim + enc_dim, cfg.hidden, cfg.dec_layers, cfg.dropout)
        self.out_dim = cfg.hidden

    def prepare(self, enc: EncoderOut, hidden: Hidden) -> tuple[dict, dict]:
        static = {"memory": enc.memory, "keys": self.attention.project_keys(enc.memory)}
        return static, {"hidden": hidden}

    def step(self, emb: Tensor, static: dict, dynamic: dict, group: int = 1) -> tuple[Tensor, Tensor]:
        query = top_layer(dynamic["hidden"])  # [B, H]
        context, attn = self.attention(query, static["keys"], static["memory"], static["src_mask"], group)
        return self._rnn_step(torch.cat([emb, context], dim=-1), dynamic), attn


class LuongDecoder(DecoderBase):
    """Luong 2015: RNN first, then attention with h_t; output h~_t, fed into the next input."""

    def __init__(self, cfg: RNNConfig, enc_dim: int, general: bool) -> None:
        super().__init__()
        self.input_feeding = cfg.input_feeding
        in_dim = cfg.emb_dim + (cfg.hidden if cfg.input_feeding else 0)
        self.rnn = make_rnn(cfg.cell, in_dim, cfg.hidden, cfg.dec_layers, cfg.dropout)
        self.attention = LuongAttention(enc_dim, cfg.hidden, general)
        self.out_dim = cfg.hidden

    def prepare(self, enc: EncoderOut, hidden: Hidden) -> tuple[dict, dict]:
        static = {"memory": enc.memory, "keys": self.attention.project_keys(enc.memory)}
        dynamic = {"hidden": hidden}
        if self.input_feeding:
            h = top_layer(hidden)
            dynamic["feed"] = h.new_zeros(h.shape)  # h~_{t-1} [B, H]; zeros before the first step
        return static, dynamic

    def step(self, emb: Tensor, static: dict, dynamic: dict, group: int = 1) -> tuple[Tensor, Tensor]:
        x = torch.cat([emb, dynamic["feed"]], dim=-1) if self.input_feeding else emb
        h = self._rnn_step(x, dynamic)  # [B, H]
        b = h.size(0)
        # a sentence's g rows (beams) attend together as g query positions: [B/g, g, H]
        out, attn = self.attention(h.view(b // group, group, -1), static["keys"], static["memory"], static["src_mask"])
        out, attn = out.reshape(b, -1), attn.reshape(b, -1)  # [B, H], [B, S]
        if self.input_feeding:
            dynamic["feed"] = out
        return out, attn

    def run(self, emb: Tensor, static: dict, dynamic: dict) -> Tensor:
        if self.input_feeding:  # h~_{t-1} is part of the input: step by step
            return super().run(emb, static, dynamic)
        h, hidden = self.rnn(emb, to_torch_hidden(dynamic["hidden"]))  # [B, T, H]
        dynamic["hidden"] = from_torch_hidden(hidden)
        return self.attention(h, static["keys"], static["memory"], static["src_mask"])[0]


def build_decoder(cfg: RNNConfig, enc_dim: int) -> DecoderBase:
    if cfg.attention == "none":
        return PlainDecoder(cfg, enc_dim)
    elif cfg.attention == "bahdanau":
        return BahdanauDecoder(cfg, enc_dim)
    elif cfg.attention == "luong_dot":
        return LuongDecoder(cfg, enc_dim, general=False)
    elif cfg.attention == "luong_general":
        return LuongDecoder(cfg, enc_dim, general=True)
    raise MTError(f"model.attention: unknown attention {cfg.attention!r}")


# ----------------------------------------------------------------------------------------------
# the model


class RNNSeq2Seq(Seq2Seq):
    @property
    def has_attention(self) -> bool:
        return self.cfg.attention != "none"

    def __init__(self, cfg: RNNConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_src_positions = None
        self.max_tgt_positions = None
        self.tgt_embed = nn.Embedding(tgt_vocab_size, cfg.emb_dim, padding_idx=PAD_ID)
        if cfg.share_embeddings:
            if src_vocab_size != tgt_vocab_size:
                raise MTError(
                    f"model.share_embeddings needs equal source and target vocabulary sizes "
                    f"(got {src_vocab_size} and {tgt_vocab_size}); use vocab.joint: true"
                )
            src_embed = self.tgt_embed
        else:
            src_embed = nn.Embedding(src_vocab_size, cfg.emb_dim, padding_idx=PAD_ID)
        self.encoder = Encoder(cfg, src_embed)
        self.bridge = Bridge(cfg)
        self.decoder = build_decoder(cfg, self.encoder.out_dim)
        self.dropout = Dropout(cfg.dropout)
        # tie_output with hidden != emb_dim: a projection hidden -> emb_dim before the tied layer
        needs_proj = cfg.tie_output and self.decoder.out_dim != cfg.emb_dim
        self.out_proj = nn.Linear(self.decoder.out_dim, cfg.emb_dim, bias=False) if needs_proj else nn.Identity()
        self.out = nn.Linear(cfg.emb_dim if cfg.tie_output else self.decoder.out_dim, tgt_vocab_size)
        if cfg.tie_output:
            self.out.weight = self.tgt_embed.weight

    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOut:
        memory, final = self.encoder(src, src_lengths)  # [B, S, D], [B, L, D] (LSTM: (h, c))
        return EncoderOut(memory=memory, src_mask=padding_mask(src_lengths.to(src.device), src.size(1)), final=final)

    def init_state(self, enc: EncoderOut, max_len: int, need_attention: bool = False) -> DecoderState:
        static, dynamic = self.decoder.prepare(enc, self.bridge(enc.final))
        static["src_mask"] = enc.src_mask
        # beams share their sentence's memory and keys (DecoderState.group)
        return DecoderState(static, dynamic, step=0, need_attention=need_attention, grouped_static=True)

    def _logits(self, out: Tensor) -> Tensor:
        return self.out(self.out_proj(self.dropout(out)))  # [..., out_dim] -> [..., V]

    def decode_step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, Tensor | None]:
        emb = self.dropout(self.tgt_embed(prev_tokens))  # [B, E]
        out, attn = self.decoder.step(emb, state.static, state.dynamic, state.group)  # [B, out_dim], [B, S] | None
        state.step += 1
        return F.log_softmax(self._logits(out).float(), dim=-1), attn

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        state = self.init_state(self.encode(src, src_lengths), tgt_in.size(1))
        emb = self.dropout(self.tgt_embed(tgt_in))  # [B, T, E]
        out = self.decoder.run(emb, state.static, state.dynamic)  # [B, T, out_dim]
        return self._logits(out)  # [B, T, V]
