"""Weight-only quantization with bitsandbytes (``8bit`` LLM.int8, ``4bit`` nf4/fp4).

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
