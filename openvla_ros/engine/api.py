"""The engine's public types: options, results, errors and the policy interface.

Everything outside ``engine/`` (nodes, server, bag tools, CLIs) talks to a policy through
:class:`Policy` only, so the local engine and the remote HTTP backend are interchangeable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from openvla_ros.defaults import MAX_INSTRUCTION_CHARS

DTYPES = ('float32', 'bfloat16', 'float16')
DEVICES = ('cpu', 'cuda')           # 'cuda:N' is accepted as well
QUANTIZATIONS = ('none', '8bit', '4bit', 'torchao-int4', 'torchao-int8')
PROMPT_TEMPLATES = ('openvla', 'v01')
# 'processor': exactly preprocessor_config.json (what deploy.py and the README do).
# 'bridge_eval': JPEG round trip + Lanczos to 224 first, as the Bridge/LIBERO eval scripts do.
IMAGE_PIPELINES = ('processor', 'bridge_eval')
BNB_4BIT_QUANT_TYPES = ('nf4', 'fp4')


class OpenVLAError(Exception):
    """Base class of every error the engine raises on purpose."""


class CheckpointError(OpenVLAError):
    """The checkpoint directory is missing files, has unexpected/missing tensors or a bad config."""


class InvalidImageError(OpenVLAError, ValueError):
    """The image is not an H x W x 3 uint8 RGB array (or is empty, too large, ...)."""


class InvalidInstructionError(OpenVLAError, ValueError):
    """The instruction is empty, not a string, or longer than the limit."""


class UnknownUnnormKeyError(OpenVLAError, KeyError):
    """The ``unnorm_key`` is not in the checkpoint's statistics (the message lists the keys)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ''


class InvalidModelOutputError(OpenVLAError):
    """The model produced something that must not reach a robot (NaN, wrong dimension)."""


def option(default, help: str, *, choices: tuple[str, ...] | None = None,
           range: tuple[float, float] | None = None, cli: bool = True, ros: str | None = '',
           pattern: str | None = None):
    """A :class:`PolicyOptions` field with everything a command-line flag or a ROS parameter needs.

    ``cli``: offered as ``--<name-with-dashes>``; ``ros``: the vla_node parameter name ('' means the
    field name, None means not a parameter). The CLI flags and the node's parameter specs are
    derived from these (``openvla_ros.policy.options``), so a default, range or choice list is
    written here only.
    """
    return field(default=default, metadata={'help': help, 'choices': choices, 'range': range,
                                            'cli': cli, 'ros': ros, 'pattern': pattern})


@dataclass
class PolicyOptions:
    """How a checkpoint is loaded and run; every field is fixed once the model is loaded."""

    dtype: str = option('float32', 'weights/compute dtype', choices=DTYPES)
    device: str = option('cpu', "torch device: 'cpu', 'cuda' or 'cuda:N'",
                         pattern=r'^(cpu|cuda(:\d+)?)$')
    quantization: str = option('none', 'weight quantization of the language model (lm_head stays '
                               'unquantized): bitsandbytes 8bit/4bit or torchao int4/int8 '
                               'weight-only', choices=QUANTIZATIONS)
    bnb_4bit_quant_type: str = option('nf4', "4-bit data type (quantization=4bit; 'fp4' is what "
                                      "upstream's eval scripts used)", choices=BNB_4BIT_QUANT_TYPES)
    bnb_4bit_compute_dtype: str = option('bfloat16', 'compute dtype of 4-bit layers', choices=DTYPES)
    prompt_template: str = option('openvla', 'prompt format: openvla (openvla-7b) or v01',
                                  choices=PROMPT_TEMPLATES)
    image_pipeline: str = option('processor', 'image preprocessing: processor '
                                 '(preprocessor_config.json only) or bridge_eval (JPEG round trip '
                                 '+ Lanczos to 224 first, as the Bridge eval scripts)',
                                 choices=IMAGE_PIPELINES)
    center_crop: bool = option(False, '90%-area centre crop (checkpoints trained with image '
                               'augmentation)')
    max_instruction_chars: int = option(MAX_INSTRUCTION_CHARS, 'longest accepted instruction, '
                                        'characters', range=(1, 100_000), cli=False, ros=None)
    self_test: bool = option(False, 'at load, check that the image changes the logits (catches a '
                             'model that silently ignores the image)', cli=False)
    extra_latency_s: float = option(0.0, 'test hook: extra sleep inside every prediction, seconds',
                                    range=(0.0, 10.0), cli=False, ros='test.extra_latency_s')
    cpu_threads: int = option(0, 'torch CPU threads set at load, process-wide (0: torch default)',
                              range=(0, 1024))
    compile: bool = option(False, 'torch.compile the static-shape decode step (CUDA graphs on '
                           'CUDA; slow first calls)')
    speculative: bool = option(True, 'speculative decoding with the previous action as the draft '
                               '(same tokens as plain greedy decoding, fewer forward passes when '
                               'consecutive actions repeat)')


@dataclass
class PredictionResult:
    action: np.ndarray                  # float64 (D,), un-normalized
    normalized_action: np.ndarray       # float64 (D,), bin centres in [-1, 1]
    action_token_ids: np.ndarray        # int64 (D,)
    unnorm_key: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, incl. 'total'
    # speculative decoding: how many leading tokens of the given draft were the action's own
    # (None: no draft was used)
    draft_tokens_accepted: int | None = None

    def to_dict(self) -> dict:
        return {
            'action': self.action.tolist(),
            'normalized_action': self.normalized_action.tolist(),
            'action_token_ids': [int(t) for t in self.action_token_ids],
            'unnorm_key': self.unnorm_key,
            'timings': dict(self.timings),
        }


class Policy(Protocol):
    """What every backend (local engine, remote server client) provides."""

    model_id: str

    def predict(self, image: np.ndarray, instruction: str,
                unnorm_key: str | None = None) -> PredictionResult: ...

    def predict_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                      unnorm_keys: Sequence[str | None]) -> list[PredictionResult]: ...

    def check_instruction(self, instruction: str) -> None:
        """Raise :class:`InvalidInstructionError` when ``predict`` would refuse ``instruction``.

        Lets a caller (vla_node's instruction topic and parameter) refuse a bad instruction when it
        arrives rather than on every frame afterwards. Cheap: no forward pass."""
        ...

    def unnorm_keys(self) -> dict[str, int]:
        """Available ``unnorm_key``s and their action dimension."""
        ...

    def describe(self) -> dict:
        """model_id, dtype, device, quantization, image pipeline, prompt template, ..."""
        ...

    def close(self) -> None: ...
