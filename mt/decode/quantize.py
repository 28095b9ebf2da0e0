"""int8 inference on CPU: dynamic quantization of a trained model's Linear, GRU and LSTM layers.

Weights are stored as int8 (Linear: one scale per output row; GRU/LSTM: one per matrix) and the
activations are quantized on the fly per call, so no calibration data is needed (the scheme
CTranslate2 and Marian use for CPU decoding). Embeddings, layer norms and attention (softmax over
scores) stay in float32. torch runs the int8 matrix products with fbgemm (x86) or qnnpack (ARM);
there are no CUDA kernels, so a quantized model runs on the CPU only.

Decoding on a CPU spends most of its time in these matrix products, and int8 ones move a quarter
of the weight bytes and run on the CPU's integer dot-product instructions (AVX2, AVX-512 VNNI), so
the gain grows with the model and depends on the CPU. benchmarks/translate_speed.py --int8 measures
the speed and benchmarks/precision_quality.py the BLEU against float32 (figures: docs/performance.md).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mt import MTError
from mt.models.base import Seq2Seq


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """Quantize `model` in place (it must be on the CPU, in eval mode) and return it.

    The result is for decoding only: it has no gradients and cannot be trained or saved as an
    mt checkpoint.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise MTError("int8 decoding runs on the CPU only (torch has no CUDA kernels for it); use --device cpu")
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        raise MTError("this torch build has no int8 CPU kernels (neither fbgemm nor qnnpack)")
    if torch.backends.quantized.engine == "none":
        torch.backends.quantized.engine = engines[0]
    try:
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:  # pragma: no cover - depends on the torch version
        raise MTError(f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic for int8 decoding") from None
    spec = {
        nn.Linear: per_channel_dynamic_qconfig,  # a scale per output row: the large output layer keeps rare words apart
        nn.GRU: default_dynamic_qconfig,
        nn.LSTM: default_dynamic_qconfig,
    }
    model.eval()
    with warnings.catch_warnings():
        # torch marks its quantized tensor types deprecated (in favour of torchao) but still ships
        # and supports them; the message would be noise on every `mt translate --int8`
        warnings.simplefilter("ignore")
        quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    return model


def is_quantized(model: nn.Module) -> bool:
    """True if any layer of `model` runs dynamically quantized int8 matrix products."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())
