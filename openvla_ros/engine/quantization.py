"""Weight-only quantization with bitsandbytes (``8bit`` LLM.int8, ``4bit`` nf4/fp4) or torchao
(``torchao-int8``, ``torchao-int4``: int8 / int4 weights with per-channel / per-group scales,
computed in the model dtype, fast under torch.compile on CUDA).

Like upstream's ``load_in_8bit`` / ``load_in_4bit`` path, every ``nn.Linear`` is replaced (the ViT,
projector and Llama linears) except the output embedding ``language_model.lm_head``, which stays
in the model dtype. Defaults here: 4-bit ``nf4`` with ``bfloat16`` compute and double quantization
off; upstream's eval scripts used ``fp4`` with float32 compute (``bnb_4bit_quant_type='fp4'``,
``bnb_4bit_compute_dtype='float32'`` reproduce that). 8-bit uses LLM.int8 with outlier threshold
6.0 (the transformers default); LLM.int8 computes its matmuls in float16 whatever the model
dtype. Quantization happens while each weight is loaded; a quantized
model is never moved with ``.to()`` afterwards (bitsandbytes does not support it).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

KEEP_UNQUANTIZED = ('language_model.lm_head',)
INT8_OUTLIER_THRESHOLD = 6.0
CPU_PACKED_BLOCK_N = 32
QUANT_BLOCKSIZE = 64     # bitsandbytes' default 4-bit block size
_INT8_CAST_NOTICE = 'MatMul8bitLt: inputs will be cast'


class _DropInt8CastNotice(logging.Filter):
    """LLM.int8 always computes in float16 and logs that on every matmul; once is in the docs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_INT8_CAST_NOTICE)


def _silence_int8_cast_notice() -> None:
    logger = logging.getLogger('bitsandbytes.autograd._functions')
    if not any(isinstance(f, _DropInt8CastNotice) for f in logger.filters):
        logger.addFilter(_DropInt8CastNotice())


def replace_linears(model: nn.Module, quantization: str, compute_dtype: torch.dtype,
                    quant_type: str) -> list[str]:
    """Swap nn.Linear for bitsandbytes modules in place (on the meta device); return their names."""
    import bitsandbytes as bnb

    if quantization == '8bit':
        _silence_int8_cast_notice()
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f'{name}.{child_name}' if name else child_name
            if not isinstance(child, nn.Linear) or full in KEEP_UNQUANTIZED:
                continue
            bias = child.bias is not None
            with torch.device('meta'):
                if quantization == '8bit':
                    new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias,
                                              has_fp16_weights=False,
                                              threshold=INT8_OUTLIER_THRESHOLD)
                else:
                    new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias,
                                            compute_dtype=compute_dtype, quant_type=quant_type,
                                            compress_statistics=False)
                if quantization == '4bit' and (child.out_features % CPU_PACKED_BLOCK_N
                                               or child.in_features % QUANT_BLOCKSIZE):
                    # bitsandbytes' AVX512-BF16 CPU kernel repacks weights in blocks of 32 output
                    # rows x 64 inputs and fails on other sizes (SigLIP's 4304-wide MLP, tiny test
                    # models); those layers use the generic 4-bit path instead.
                    new.support_avx512bf16_for_cpu = False
            setattr(module, child_name, new)
            replaced.append(full)
    return replaced


def quantized_parameter(tensor: torch.Tensor, quantization: str, quant_type: str,
                        device: torch.device) -> nn.Parameter:
    """A bitsandbytes parameter holding ``tensor`` quantized on ``device``."""
    import bitsandbytes as bnb

    if quantization == '8bit':
        return bnb.nn.Int8Params(tensor, requires_grad=False, has_fp16_weights=False).to(device)
    return bnb.nn.Params4bit(tensor, requires_grad=False, quant_type=quant_type,
                             compress_statistics=False).to(device)


TORCHAO_INT4_GROUP = 128


def torchao_eligible(quantization: str, name: str, module: nn.Module) -> bool:
    """Which linears torchao quantizes: all but ``lm_head``; int4's tinygemm layout also needs the
    input width in whole groups and the output width in tiles (other layers stay unquantized)."""
    if not isinstance(module, nn.Linear) or name in KEEP_UNQUANTIZED:
        return False
    if quantization == 'torchao-int4':
        return module.in_features % TORCHAO_INT4_GROUP == 0 and module.out_features % 64 == 0
    return True


def torchao_check_supported(quantization: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why this torchao mode cannot run here, or None."""
    if quantization == 'torchao-int4':
        if device.type != 'cuda':
            return ('quantization torchao-int4 needs CUDA: torchao 0.18 has no CPU kernel for '
                    'int4 weight-only layers; use torchao-int8, or 4bit (bitsandbytes), on CPU')
        if dtype != torch.bfloat16:
            return 'quantization torchao-int4 computes in bfloat16: use --dtype bfloat16'
    try:
        import torchao  # noqa: F401
    except ImportError:
        return f'quantization {quantization} needs the torchao package, which is not installed'
    return None


def torchao_quantize(linear: nn.Linear, quantization: str) -> None:
    """Quantize one loaded linear in place (its weight becomes a torchao tensor subclass)."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    if quantization == 'torchao-int8':
        config = Int8WeightOnlyConfig()
    else:
        config = Int4WeightOnlyConfig(group_size=TORCHAO_INT4_GROUP,
                                      int4_packing_format='tile_packed_to_4d')
    quantize_(linear, config)
