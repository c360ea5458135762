"""Shared pieces of the engine command-line tools (argument groups, error reporting)."""
from __future__ import annotations

import argparse
import sys

from openvla_ros.engine.api import (BNB_4BIT_QUANT_TYPES, DTYPES, IMAGE_PIPELINES, PROMPT_TEMPLATES,
                                    QUANTIZATIONS, PolicyOptions)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PolicyOptions()
    g = parser.add_argument_group('model options')
    g.add_argument('--dtype', choices=DTYPES, default=defaults.dtype, help='weights/activations dtype')
    g.add_argument('--device', default=defaults.device, help="'cpu', 'cuda' or 'cuda:N'")
    g.add_argument('--quantization', choices=QUANTIZATIONS, default=defaults.quantization,
                   help='bitsandbytes weight quantization (lm_head stays unquantized)')
    g.add_argument('--bnb-4bit-quant-type', choices=BNB_4BIT_QUANT_TYPES,
                   default=defaults.bnb_4bit_quant_type,
                   help="4-bit data type ('fp4' is what upstream's eval scripts used)")
    g.add_argument('--bnb-4bit-compute-dtype', choices=DTYPES, default=defaults.bnb_4bit_compute_dtype)
    g.add_argument('--prompt-template', choices=PROMPT_TEMPLATES, default=defaults.prompt_template)
    g.add_argument('--image-pipeline', choices=IMAGE_PIPELINES, default=defaults.image_pipeline,
                   help="'processor': preprocessor_config.json only; 'bridge_eval': JPEG round trip "
                        '+ Lanczos to 224 first (upstream eval scripts)')
    g.add_argument('--center-crop', action='store_true',
                   help='90%%-area centre crop (checkpoints trained with image augmentation)')
    g.add_argument('--cpu-threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    g.add_argument('--compile', action='store_true',
                   help='torch.compile the decode step (CUDA graphs on CUDA; slow first calls)')


def policy_options(args: argparse.Namespace, **extra) -> PolicyOptions:
    return PolicyOptions(dtype=args.dtype, device=args.device, quantization=args.quantization,
                         bnb_4bit_quant_type=args.bnb_4bit_quant_type,
                         bnb_4bit_compute_dtype=args.bnb_4bit_compute_dtype,
                         prompt_template=args.prompt_template, image_pipeline=args.image_pipeline,
                         center_crop=args.center_crop, cpu_threads=args.cpu_threads,
                         compile=args.compile, **extra)


def fail(message: str, code: int = 1) -> int:
    """One line on stderr, no traceback."""
    print(f'error: {message}', file=sys.stderr)
    return code
