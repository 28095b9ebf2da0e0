"""CUDA == CPU for every search and architecture (skipped where no GPU is present)."""

import pytest
import torch

from mt.config import RNNConfig, TransformerConfig
from mt.models import build_model
from mt.decode.search import BeamSearch, GreedySearch, LengthPenalty

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = {
    "transformer": TransformerConfig(d_model=32, heads=4, enc_layers=2, dec_layers=2, ff_dim=64, max_positions=64),
    "bahdanau-gru": RNNConfig(cell="gru", attention="bahdanau", emb_dim=16, hidden=32, enc_layers=2, dec_layers=2),
    "luong-lstm": RNNConfig(cell="lstm", attention="luong_general", emb_dim=16, hidden=32, enc_layers=1, dec_layers=2),
}


def _model_and_batch(name):
    """A seeded random model and five padded source sentences of 9, 7, 5, 3 and 1 tokens."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[name], 40, 30).eval()
    src = torch.randint(4, 40, (5, 9))
    lengths = torch.tensor([9, 7, 5, 3, 1])
    for i, n in enumerate(lengths.tolist()):
        src[i, n:] = 0
    return model, src, lengths


@pytest.fixture
def full_float32():
    """CUDA in full float32 for the equality tests: cuDNN's GRU/LSTM and matmuls otherwise multiply in TF32,
    about 1e-3 off on a sum of 40 log-probabilities, enough to flip the order of two close hypotheses."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_cuda_equals_cpu(name, search, full_float32):
    model, src, lengths = _model_and_batch(name)
    make = (lambda: GreedySearch(max_len_a=1.0, max_len_b=4, return_attention=True)) if search == "greedy" else (
        lambda: BeamSearch(beam=4, n_best=2, len_penalty=LengthPenalty("gnmt", 0.6), max_len_a=1.0, max_len_b=4,
                           return_attention=True))
    cpu = make()(model, src, lengths)
    gpu = make()(model.cuda(), src.cuda(), lengths.cuda())
    for a, b in zip(cpu, gpu):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        for x, y in zip(a, b):
            # float32 on both, summed in another order: relative 1e-4 of a sum of ~40 log-probabilities
            assert x.score == pytest.approx(y.score, rel=1e-4, abs=1e-4)
            if x.attention is not None:
                assert torch.allclose(x.attention, y.attention, atol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_reduced_precision_decodes_like_float32(name, dtype):
    """`mt translate --dtype float16/bfloat16` on a GPU: float32 scores, float32's output but for near ties."""
    import copy

    from mt.device import set_decoding_dtype

    model, src, lengths = _model_and_batch(name)
    search = BeamSearch(beam=4, max_len_a=1.0, max_len_b=4)
    ref = search(model, src, lengths)
    low = set_decoding_dtype(copy.deepcopy(model).cuda(), dtype, torch.device("cuda"))
    got = search(low, src.cuda(), lengths.cuda())
    same = [(a[0], b[0]) for a, b in zip(ref, got) if a[0].tokens == b[0].tokens]
    assert len(same) >= 3
    for a, b in same:
        assert b.score == pytest.approx(a.score, rel=0.05, abs=0.05)


def test_cuda_ensemble_prefixes_and_scores_equal_cpu(full_float32):
    """Issue 13's decoding extras on the GPU: a mixed-architecture ensemble's beam search with forced
    prefixes and attention, and the teacher-forced scores and attention of its output, as on the CPU."""
    import copy

    from mt.decode.ensemble import EnsembleModel
    from mt.decode.scorer import Scorer

    from mt.data.batching import source_tensor

    transformer, src, lengths = _model_and_batch("transformer")
    gru = _model_and_batch("bahdanau-gru")[0]
    src_ids = [src[i, : int(n)].tolist() for i, n in enumerate(lengths)]
    src, lengths = source_tensor(src_ids)  # with eos, as the scorer (and the translator) builds it
    ensemble = EnsembleModel([transformer, gru]).eval()
    prefixes = [[5, 6], [], [7], [], [8, 9, 10]]
    search = BeamSearch(beam=4, n_best=2, len_penalty=LengthPenalty("gnmt", 0.6), max_len_a=1.0, max_len_b=4,
                        return_attention=True)
    cpu = search(ensemble, src, lengths, prefixes)
    gpu_model = copy.deepcopy(ensemble).cuda()
    gpu = search(gpu_model, src.cuda(), lengths.cuda(), prefixes)
    for a, b, prefix in zip(cpu, gpu, prefixes):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert all(h.tokens[: len(prefix)] == prefix for h in b)
        for x, y in zip(a, b):
            assert x.score == pytest.approx(y.score, abs=1e-4)
            assert torch.allclose(x.attention, y.attention.cpu(), atol=1e-4)

    tgt_ids = [h[0].tokens for h in cpu]
    on_cpu = Scorer(ensemble, None, None, return_attention=True).score_ids(src_ids, tgt_ids)
    on_gpu = Scorer(gpu_model, None, None, device="cuda", return_attention=True).score_ids(src_ids, tgt_ids)
    for x, y, h in zip(on_cpu, on_gpu, cpu):
        assert y.log_prob == pytest.approx(x.log_prob, abs=1e-4)
        assert y.log_prob == pytest.approx(h[0].log_prob, abs=1e-3)  # forced scoring = the beam's own score
        assert torch.allclose(x.attention, y.attention, atol=1e-4)
