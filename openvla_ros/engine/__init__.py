"""The OpenVLA inference engine (ROS-free).

``load_policy(checkpoint_dir, PolicyOptions(...))`` loads a local OpenVLA Hugging Face checkpoint
directory (no ``trust_remote_code``, no hub access) and returns an :class:`OpenVLAPolicy`, which
implements the :class:`Policy` protocol of :mod:`.api`.

Defaults (``PolicyOptions``): float32 on CPU, no quantization; ``8bit`` = LLM.int8 (threshold 6.0),
``4bit`` = ``nf4`` with ``bfloat16`` compute and no double quantization (upstream's eval used
``fp4`` + float32 compute: ``bnb_4bit_quant_type='fp4', bnb_4bit_compute_dtype='float32'``);
every linear layer except ``lm_head`` is quantized, as upstream did. Images go through the
checkpoint's ``preprocessor_config.json`` (``image_pipeline='processor'``) unless
``'bridge_eval'`` (JPEG + Lanczos, the eval scripts' path) or ``center_crop`` is chosen. The
prompt template is ``'openvla'`` unless ``'v01'`` is chosen.

Module map: :mod:`.config` (config.json, presets), :mod:`.checkpoint` (files, safetensors),
:mod:`.modeling` (network), :mod:`.preprocessing`, :mod:`.prompt`, :mod:`.actions`,
:mod:`.quantization`, :mod:`.policy` (the API), :mod:`.tiny` and :mod:`.synthetic` (random weights).
"""
from .api import (CheckpointError, InvalidImageError, InvalidInstructionError,
                  InvalidModelOutputError, OpenVLAError, Policy, PolicyOptions, PredictionResult,
                  UnknownUnnormKeyError)


def __getattr__(name):
    # torch/timm/transformers load only when the model is needed: launch files, option lists and
    # --help stay fast.
    if name in ('OpenVLAPolicy', 'load_policy'):
        from . import policy

        return getattr(policy, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

__all__ = ['load_policy', 'OpenVLAPolicy', 'Policy', 'PolicyOptions', 'PredictionResult',
           'OpenVLAError', 'CheckpointError', 'InvalidImageError', 'InvalidInstructionError',
           'UnknownUnnormKeyError', 'InvalidModelOutputError']
