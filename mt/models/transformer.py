"""Transformer encoder-decoder (Vaswani et al. 2017) with pre- or post-norm layers.

Attention runs through torch's scaled_dot_product_attention. Incremental decoding keeps a
self-attention KV cache per layer and the cross-attention keys/values of the source, computed
once per sentence and shared by its beams.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mt import MTError
from mt.config import TransformerConfig
from mt.models.base import DecoderState, EncoderOut, Seq2Seq, padding_mask
from mt.models.dropout import Dropout


class KVCache:
    """Self-attention keys/values of one layer: [B, H, t, Dh] after t steps, grown by concatenation.

    A reorder of the rows (beam search, finished sentences leaving) is not copied at once: the
    cache keeps the row order and the next `append` gathers the old positions straight into the
    new, one position longer buffer (`torch.index_select(..., out=)`), so a step copies the cache
    once instead of twice (reorder, then concatenate). benchmarks/decode_ablations.py, variant
    kv_reorder_fused, measures it against the plain index_select + cat. A preallocated
    [B, H, max_len, Dh] buffer saves the concatenation's copy only while no rows are reordered or
    dropped (beam search reorders at every step) and holds max_len positions from the first step
    on; variant kv_cache_by_concatenation measures the speed and peak memory of both.
    """

    def __init__(self, k: Tensor | None = None, v: Tensor | None = None, order: Tensor | None = None) -> None:
        self.k, self.v = k, v
        self.order = order  # rows of k/v that make up this cache, in order (None: all, as they are)

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add positions (k, v: [B, H, T, Dh]); return everything cached [B, H, length, Dh]."""
        if self.k is None:
            self.k, self.v = k, v
        elif self.order is None:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        else:
            self.k, self.v = self._gather_cat(self.k, k), self._gather_cat(self.v, v)
            self.order = None
        return self.k, self.v

    def _gather_cat(self, old: Tensor, new: Tensor) -> Tensor:
        """cat([old[order], new], dim=2) with one copy of `old`."""
        if torch.is_grad_enabled() and (old.requires_grad or new.requires_grad):  # out= does not record autograd
            return torch.cat([old.index_select(0, self.order), new], dim=2)
        b, h, t, d = new.size(0), old.size(1), old.size(2), old.size(3)
        out = old.new_empty((b, h, t + new.size(2), d))
        torch.index_select(old, 0, self.order, out=out[:, :, :t])
        out[:, :, t:] = new
        return out

    def index_select(self, dim: int, index: Tensor) -> "KVCache":
        """The cache of rows `index` (no copy until the next append)."""
        assert dim == 0
        if self.k is None:
            return KVCache()
        return KVCache(self.k, self.v, index if self.order is None else self.order.index_select(0, index))


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float, self_attention: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.self_attention = self_attention
        if self_attention:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        else:
            self.q = nn.Linear(d_model, d_model)
            self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _split(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, H, T, Dh]
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:  # [B, H, T, Dh] -> [B, T, D]
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)

    def _weights(self, q: Tensor, k: Tensor, mask: Tensor | None, causal: bool, mean: bool = True) -> Tensor:
        """softmax(QK^T / sqrt(Dh)) under the mask, averaged over heads: [B, T, S] (rows sum to 1);
        mean=False: per head, [B, H, T, S]."""
        scores = (q.float() @ k.float().transpose(-1, -2)) * (self.head_dim**-0.5)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if causal:
            t, s = scores.shape[-2:]
            scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool, device=q.device).triu(s - t + 1), float("-inf"))
        weights = scores.softmax(-1)
        return (weights.mean(dim=1) if mean else weights).to(q.dtype)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the source: 2 x [B, H, S, Dh]."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self,
        x: Tensor,  # [B, T, D] queries
        key_mask: Tensor | None = None,  # [B / group, S] True at real keys
        causal: bool = False,
        memory_kv: tuple[Tensor, Tensor] | None = None,  # cross-attention K/V [B / group, H, S, Dh]
        cache: KVCache | None = None,  # self-attention cache (incremental decoding)
        need_weights: bool = False,
        group: int = 1,  # cross-attention, T == 1: `group` adjacent query rows share one K/V row
    ) -> tuple[Tensor, Tensor | None]:
        b, t, _ = x.shape
        if self.self_attention:
            q, k, v = (self._split(y) for y in self.qkv(x).chunk(3, dim=-1))
            if cache is not None:
                k, v = cache.append(k, v)
                causal = False  # one query attends to every cached position
        else:
            q = self._split(self.q(x))
            k, v = memory_kv
            if group > 1:  # [B, H, 1, Dh] -> [B / g, H, g, Dh]: a sentence's beams query its source together
                q = q.transpose(1, 2).reshape(b // group, group, self.heads, self.head_dim).transpose(1, 2)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        dropout = self.dropout if self.training else 0.0
        # the layer's output always comes from SDPA, so that asking for the weights (--json, alignments,
        # plots) never changes the translation; the weights are computed beside it, only to be returned
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        weights = self._weights(q, k, mask, causal) if need_weights else None
        if group > 1:  # back to one row per query: [B / g, H, g, Dh] -> [B, 1, D]
            out = self.out(ctx.transpose(1, 2).reshape(b, 1, self.heads * self.head_dim))
            return out, (weights.reshape(b, 1, -1) if weights is not None else None)
        return self.out(self._merge(ctx)), weights


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, ff_dim), nn.Linear(ff_dim, d_model)
        self.act = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}[activation]()
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class Sublayer(nn.Module):
    """Residual around `fn` with pre-norm (x + f(norm(x))) or post-norm (norm(x + f(x)))."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, fn) -> tuple[Tensor, Tensor | None]:
        y, weights = fn(self.norm(x) if self.pre_norm else x)
        x = x + self.dropout(y)
        return (x if self.pre_norm else self.norm(x)), weights


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        pre = cfg.norm == "pre"
        self.attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attn_dropout, self_attention=True)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout, cfg.activation)
        self.sub_attn = Sublayer(cfg.d_model, cfg.dropout, pre)
        self.sub_ff = Sublayer(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        x, _ = self.sub_attn(x, lambda h: self.attn(h, key_mask=src_mask))
        x, _ = self.sub_ff(x, lambda h: (self.ff(h), None))
        return x


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        pre = cfg.norm == "pre"
        heads = cfg.decoder_heads
        self.self_attn = MultiHeadAttention(cfg.d_model, heads, cfg.attn_dropout, self_attention=True)
        self.cross_attn = MultiHeadAttention(cfg.d_model, heads, cfg.attn_dropout, self_attention=False)
        self.ff = FeedForward(cfg.d_model, cfg.decoder_ff_dim, cfg.dropout, cfg.activation)
        self.sub_self = Sublayer(cfg.d_model, cfg.dropout, pre)
        self.sub_cross = Sublayer(cfg.d_model, cfg.dropout, pre)
        self.sub_ff = Sublayer(cfg.d_model, cfg.dropout, pre)

    def forward(
        self,
        x: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        cache: KVCache | None = None,
        need_weights: bool = False,
        group: int = 1,
    ) -> tuple[Tensor, Tensor | None]:
        x, _ = self.sub_self(x, lambda h: self.self_attn(h, causal=cache is None, cache=cache))
        x, weights = self.sub_cross(
            x,
            lambda h: self.cross_attn(
                h, key_mask=src_mask, memory_kv=memory_kv, need_weights=need_weights, group=group
            ),
        )
        x, _ = self.sub_ff(x, lambda h: (self.ff(h), None))
        return x, weights


def sinusoidal_concat_table(positions: int, dim: int) -> Tensor:
    """Sines in the first half of the features, cosines in the second, the same frequencies as
    `sinusoidal_table`: the layout of Marian and of Hugging Face's Marian port, computed in float64
    as that port does, then rounded to float32."""
    pos = torch.arange(positions, dtype=torch.float64)[:, None]
    angles = pos / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [P, ceil(dim / 2)]
    return torch.cat([torch.sin(angles), torch.cos(angles[:, : dim // 2])], dim=1).float()


def sinusoidal_table(positions: int, dim: int) -> Tensor:
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


class Embedder(nn.Module):
    """Token embedding x sqrt(d) (x 1 without model.embed_scale) + position, then dropout."""

    def __init__(self, tokens: nn.Embedding, cfg: TransformerConfig) -> None:
        super().__init__()
        self.tokens = tokens
        self.scale = math.sqrt(cfg.d_model) if cfg.embed_scale else 1.0
        if cfg.positions == "learned":
            self.positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        else:
            self.positions = None
            make = sinusoidal_concat_table if cfg.positions == "sinusoidal_concat" else sinusoidal_table
            self.register_buffer("table", make(cfg.max_positions, cfg.d_model), persistent=False)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:  # [B, T] -> [B, T, D]
        t = ids.size(1)
        pos = self.positions.weight[start : start + t] if self.positions is not None else self.table[start : start + t]
        return self.dropout(self.tokens(ids) * self.scale + pos)


class Transformer(Seq2Seq):
    def __init__(self, cfg: TransformerConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        src_tokens = nn.Embedding(src_vocab_size, d, padding_idx=self.pad_id)
        if cfg.share_embeddings:
            if src_vocab_size != tgt_vocab_size:
                raise MTError("model.share_embeddings needs one vocabulary for source and target (vocab.joint)")
            tgt_tokens = src_tokens
        else:
            tgt_tokens = nn.Embedding(tgt_vocab_size, d, padding_idx=self.pad_id)
        for emb in {id(src_tokens): src_tokens, id(tgt_tokens): tgt_tokens}.values():
            nn.init.normal_(emb.weight, 0.0, d**-0.5)
            with torch.no_grad():
                emb.weight[self.pad_id].zero_()
        self.src_embed = Embedder(src_tokens, cfg)
        self.tgt_embed = Embedder(tgt_tokens, cfg)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        pre = cfg.norm == "pre"
        self.enc_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.dec_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.output = nn.Linear(d, tgt_vocab_size, bias=cfg.output_bias)
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name and name != "output.weight":
                nn.init.xavier_uniform_(p)
        if cfg.output_bias:
            nn.init.zeros_(self.output.bias)
        if cfg.tie_output:
            self.output.weight = tgt_tokens.weight
        else:
            nn.init.normal_(self.output.weight, 0.0, d**-0.5)
        self.max_src_positions = cfg.max_positions
        self.max_tgt_positions = cfg.max_positions
        #: decoder layer whose cross-attention (mean over heads) decode_step returns (negative: from the top)
        self.attention_layer = cfg.dec_layers - 1

    def set_attention_layer(self, layer: int) -> None:
        n = len(self.decoder)
        if not -n <= layer < n:
            raise MTError(f"alignment layer {layer} does not exist: the decoder has {n} layers (0..{n - 1}, or -1..-{n})")
        self.attention_layer = layer % n

    # -- encoder ------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor) -> EncoderOut:
        mask = padding_mask(src_lengths, src.size(1))  # [B, S]
        x = self.src_embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return EncoderOut(memory=self.enc_norm(x), src_mask=mask)

    # -- teacher forcing ----------------------------------------------------------------------
    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        enc = self.encode(src, src_lengths)
        x = self.tgt_embed(tgt_in)
        for layer in self.decoder:
            x, _ = layer(x, layer.cross_attn.project_kv(enc.memory), enc.src_mask)
        return self.output(self.dec_norm(x))

    def cross_attention_heads(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced cross-attention of every decoder layer and head: [B, layers, heads, T, S]
        (mt.decode.trace; decode_step returns one layer's mean over heads)."""
        enc = self.encode(src, src_lengths)
        queries: list[Tensor] = []  # each layer's cross-attention input, taken as the layer runs
        hooks = [layer.cross_attn.register_forward_pre_hook(lambda _, args: queries.append(args[0]))
                 for layer in self.decoder]
        try:
            x = self.tgt_embed(tgt_in)
            for layer in self.decoder:
                x, _ = layer(x, layer.cross_attn.project_kv(enc.memory), enc.src_mask)
        finally:
            for hook in hooks:
                hook.remove()
        mask = enc.src_mask[:, None, None, :]
        heads = [layer.cross_attn._weights(layer.cross_attn._split(layer.cross_attn.q(h)),
                                           layer.cross_attn.project_kv(enc.memory)[0], mask, False, mean=False)
                 for layer, h in zip(self.decoder, queries)]
        return torch.stack(heads, dim=1)

    # -- incremental decoding -----------------------------------------------------------------
    def init_state(self, enc: EncoderOut, max_len: int, need_attention: bool = False) -> DecoderState:
        if max_len > self.cfg.max_positions:
            raise MTError(f"cannot decode {max_len} positions: the model has {self.cfg.max_positions}")
        static = {"src_mask": enc.src_mask}
        dynamic = {}
        for i, layer in enumerate(self.decoder):
            static[f"k{i}"], static[f"v{i}"] = layer.cross_attn.project_kv(enc.memory)
            dynamic[f"cache{i}"] = KVCache()
        # beams share their sentence's cross-attention K/V (DecoderState.group)
        return DecoderState(static, dynamic, need_attention=need_attention, grouped_static=True)

    def decode_step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, Tensor | None]:
        x = self.tgt_embed(prev_tokens[:, None], start=state.step)  # [B, 1, D]
        chosen = self.attention_layer
        weights = None
        for i, layer in enumerate(self.decoder):
            x, w = layer(
                x,
                (state.static[f"k{i}"], state.static[f"v{i}"]),
                state.static["src_mask"],
                cache=state.dynamic[f"cache{i}"],
                need_weights=state.need_attention and i == chosen,
                group=state.group,
            )
            if w is not None:
                weights = w[:, 0]
        state.step += 1
        logits = self.output(self.dec_norm(x[:, 0]))
        return logits.float().log_softmax(-1), weights
