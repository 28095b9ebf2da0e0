"""mt.models.dropout: the CPU mask drops the asked share, keeps the expectation, masks the
gradient as the output, follows torch's seed, and is F.dropout wherever it does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mt.config import TransformerConfig
from mt.models import build_model
from mt.models.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_the_mask_drops_p_of_the_elements(p: float) -> None:
    torch.manual_seed(0)
    keep, used = keep_mask(torch.Size([1000, 1000]), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    assert abs(used - p) <= 2**-16  # p rounded to a multiple of 1/32768
    dropped = 1.0 - keep.float().mean().item()
    # 10^6 draws: the standard deviation of the share is at most 0.0005; 0.003 is six of them
    assert abs(dropped - used) < 0.003
    # every part of the tensor is random: the four 16-bit lanes of a word, rows and columns alike
    lanes = keep.reshape(-1, 4).float().mean(0)
    assert torch.all((1 - lanes - used).abs() < 0.006), lanes
    assert abs((1 - keep[:, :500].float().mean()) - (1 - keep[:, 500:].float().mean())) < 0.006


def test_output_is_the_input_kept_and_scaled_and_the_expectation_holds() -> None:
    torch.manual_seed(1)
    x = torch.rand(400, 500) + 0.5  # no zeros: a zero in the output is a dropped element
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    _, used = keep_mask(torch.Size([1]), 0.2)
    torch.testing.assert_close(y[kept], x[kept] / (1 - used), rtol=1e-6, atol=0.0)
    # mean of 200,000 elements, each kept with 0.8 and scaled by 1/0.8: within 1% of the input's
    assert abs(y.mean().item() / x.mean().item() - 1.0) < 0.01


def test_the_gradient_is_masked_and_scaled_as_the_output() -> None:
    torch.manual_seed(2)
    x = (torch.rand(64, 48) + 0.5).requires_grad_()
    y = dropout(x, 0.3, training=True)
    g = torch.randn_like(y)
    y.backward(g)
    scale = y.detach() / x.detach()  # 0 where dropped, 1 / (1 - p) where kept
    torch.testing.assert_close(x.grad, g * scale, rtol=1e-6, atol=1e-7)


def test_the_same_seed_gives_the_same_mask_and_the_rng_state_restores_it() -> None:
    torch.manual_seed(3)
    a = dropout(torch.ones(100, 100), 0.1)
    state = torch.get_rng_state()
    b = dropout(torch.ones(100, 100), 0.1)
    torch.set_rng_state(state)
    c = dropout(torch.ones(100, 100), 0.1)
    torch.manual_seed(3)
    again = dropout(torch.ones(100, 100), 0.1)
    assert torch.equal(a, again) and torch.equal(b, c)
    assert not torch.equal(a, b)


def test_where_it_does_not_apply_it_is_plain_dropout() -> None:
    x = torch.randn(10, 20)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    module = Dropout(0.25)
    assert "p=0.25" in repr(module)
    module.eval()
    assert module(x) is x
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_bfloat16_input_stays_bfloat16() -> None:
    torch.manual_seed(4)
    x = torch.rand(32, 32, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.1)
    assert y.dtype == torch.bfloat16
    y.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_models_train_with_it_and_evaluate_without_it() -> None:
    cfg = TransformerConfig(d_model=16, heads=2, enc_layers=1, dec_layers=1, ff_dim=32, dropout=0.3, max_positions=16)
    torch.manual_seed(5)
    model = build_model(cfg, 11, 11)
    assert any(isinstance(m, Dropout) for m in model.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    src = torch.randint(4, 11, (3, 7))
    lengths = torch.tensor([7, 5, 3])
    tgt = torch.randint(4, 11, (3, 6))
    model.train()
    assert not torch.equal(model(src, lengths, tgt), model(src, lengths, tgt))  # fresh masks every pass
    model.eval()
    assert torch.equal(model(src, lengths, tgt), model(src, lengths, tgt))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_it_is_torchs_dropout() -> None:
    x = torch.ones(1000, 100, device="cuda")
    torch.cuda.manual_seed(6)
    ours = dropout(x, 0.1)
    torch.cuda.manual_seed(6)
    theirs = F.dropout(x, 0.1, True)
    assert torch.equal(ours, theirs)
