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
QUANTIZATIONS = ('none', '8bit', '4bit')
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


@dataclass
class PolicyOptions:
    dtype: str = 'float32'
    device: str = 'cpu'
    quantization: str = 'none'
    bnb_4bit_quant_type: str = 'nf4'
    bnb_4bit_compute_dtype: str = 'bfloat16'
    prompt_template: str = 'openvla'
    image_pipeline: str = 'processor'
    center_crop: bool = False           # 90%-area centre crop (checkpoints trained with image_aug)
    max_instruction_chars: int = MAX_INSTRUCTION_CHARS
    self_test: bool = False             # check at load that the image changes the logits
    extra_latency_s: float = 0.0        # test hook: sleep this long inside every predict()
    cpu_threads: int = 0                # >0: torch.set_num_threads(n) at load (process-wide)
    compile: bool = False               # torch.compile the static-shape decode step (for CUDA)


@dataclass
class PredictionResult:
    action: np.ndarray                  # float64 (D,), un-normalized
    normalized_action: np.ndarray       # float64 (D,), bin centres in [-1, 1]
    action_token_ids: np.ndarray        # int64 (D,)
    unnorm_key: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, incl. 'total'

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

    def unnorm_keys(self) -> dict[str, int]:
        """Available ``unnorm_key``s and their action dimension."""
        ...

    def describe(self) -> dict:
        """model_id, dtype, device, quantization, image pipeline, prompt template, ..."""
        ...

    def close(self) -> None: ...
