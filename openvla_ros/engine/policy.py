"""``OpenVLAPolicy``: a loaded checkpoint behind the :class:`~openvla_ros.engine.api.Policy` API.

Inference path (batch size B, prompts of different lengths left-padded):
preprocess -> vision (both ViTs) -> projector -> prefill ([BOS, 256 patches, prompt, 29871], one
pass that fills a static KV cache) -> greedy decode of exactly ``len(q01)`` tokens, one token per
step straight through the decoder layers -> bins -> un-normalisation. Each stage is timed.

A policy serialises calls with a lock, so it may be shared by threads, but it is meant to be
driven by one worker thread.
"""
from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import actions as act
from .api import (BNB_4BIT_QUANT_TYPES, DTYPES, IMAGE_PIPELINES, PROMPT_TEMPLATES, QUANTIZATIONS,
                  CheckpointError, InvalidImageError, InvalidInstructionError,
                  InvalidModelOutputError, OpenVLAError, PolicyOptions, PredictionResult)
from .checkpoint import (CONFIG_FILE, PREPROCESSOR_FILE, TOKENIZER_FILE, check_directory, check_keys,
                         iter_tensors, load_norm_stats, read_json, weight_files)
from .config import OpenVLAConfig
from .modeling import OpenVLAModel, checkpoint_key_to_module_key, splice_image
from .preprocessing import ImageProcessor, to_pixel_values, validate_image
from .prompt import PromptTokenizer, build_prompt, validate_instruction
from .quantization import quantized_parameter, replace_linears

TORCH_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
TIMING_KEYS = ('preprocess', 'vision', 'projector', 'prefill', 'decode', 'postprocess', 'total')
# The image must move the prefill logits by more than this (relative to their magnitude); a model
# whose vision path is disconnected gives bit-identical logits.
SELF_TEST_MIN_RELATIVE_CHANGE = 1e-6
SELF_TEST_INSTRUCTION = 'pick up the object'


def validate_options(options: PolicyOptions) -> None:
    def check(value, allowed, name):
        if value not in allowed:
            raise OpenVLAError(f'{name} must be one of {", ".join(allowed)}; got {value!r}')

    check(options.dtype, DTYPES, 'dtype')
    check(options.quantization, QUANTIZATIONS, 'quantization')
    check(options.bnb_4bit_quant_type, BNB_4BIT_QUANT_TYPES, 'bnb_4bit_quant_type')
    check(options.bnb_4bit_compute_dtype, DTYPES, 'bnb_4bit_compute_dtype')
    check(options.prompt_template, PROMPT_TEMPLATES, 'prompt_template')
    check(options.image_pipeline, IMAGE_PIPELINES, 'image_pipeline')
    if not (options.device == 'cpu' or options.device == 'cuda' or options.device.startswith('cuda:')):
        raise OpenVLAError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {options.device!r}")
    if options.device.startswith('cuda') and not torch.cuda.is_available():
        raise OpenVLAError(f'device {options.device!r} requested but CUDA is not available')
    if options.max_instruction_chars < 1:
        raise OpenVLAError('max_instruction_chars must be positive')
    if options.extra_latency_s < 0:
        raise OpenVLAError('extra_latency_s must not be negative')
    if options.cpu_threads < 0:
        raise OpenVLAError('cpu_threads must be 0 (keep torch default) or positive')


def build_model(cfg: OpenVLAConfig) -> OpenVLAModel:
    """The architecture on the meta device (no memory for weights)."""
    with torch.device('meta'):
        return OpenVLAModel(cfg)


def materialize(model: OpenVLAModel, tensors: Iterable[tuple[str, torch.Tensor]],
                expected: dict[str, tuple[int, ...]], dtype: torch.dtype, device: torch.device,
                quantization: str = 'none', quant_type: str = 'nf4',
                compute_dtype: torch.dtype = torch.bfloat16) -> None:
    """Move a meta model onto ``device`` one tensor at a time, in ``dtype`` (or quantized).

    ``tensors`` yields (checkpoint key, tensor); ``expected`` maps checkpoint key -> shape.
    """
    quantized = set()
    if quantization != 'none':
        quantized = set(replace_linears(model, quantization, compute_dtype, quant_type))
    modules = dict(model.named_modules())
    for ckpt_key, tensor in tensors:
        if tuple(tensor.shape) != expected[ckpt_key]:
            raise CheckpointError(f'tensor {ckpt_key} has shape {tuple(tensor.shape)}, the '
                                  f'architecture in config.json expects {expected[ckpt_key]}')
        module_name, attr = checkpoint_key_to_module_key(ckpt_key).rsplit('.', 1)
        module = modules[module_name]
        if module_name in quantized and attr == 'weight':
            module._parameters[attr] = quantized_parameter(tensor.to(dtype), quantization,
                                                           quant_type, device)
        elif attr in module._parameters:
            module._parameters[attr] = torch.nn.Parameter(tensor.to(device=device, dtype=dtype),
                                                          requires_grad=False)
        else:
            module._buffers[attr] = tensor.to(device=device, dtype=dtype)
        del tensor
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                if t.is_meta]
    if leftover:
        raise CheckpointError(f'tensors not initialised: {", ".join(leftover[:20])}')
    model.eval()
    model.language_model.init_rope(device)


class OpenVLAPolicy:
    """A loaded OpenVLA checkpoint. Create it with :func:`load_policy`."""

    def __init__(self, checkpoint_dir: str | Path, options: PolicyOptions | None = None, *,
                 _tensor_source: Callable | None = None):
        options = options or PolicyOptions()
        validate_options(options)
        if options.cpu_threads:
            torch.set_num_threads(options.cpu_threads)
        self.options = options
        directory = Path(checkpoint_dir).expanduser().resolve()
        self.checkpoint_dir = directory
        self.model_id = directory.name
        self._lock = threading.Lock()
        self._cache = None

        if _tensor_source is None:
            check_directory(directory)
        raw = read_json(directory, CONFIG_FILE)
        self.config = OpenVLAConfig.from_dict(raw)
        self.norm_stats = load_norm_stats(directory, raw)
        self.processor = ImageProcessor(read_json(directory, PREPROCESSOR_FILE))
        n_backbones = 2 if self.config.use_fused_vision_backbone else 1
        if len(self.processor.transforms) != n_backbones:
            raise CheckpointError(f'{PREPROCESSOR_FILE} describes {len(self.processor.transforms)} '
                                  f'image transforms, the model has {n_backbones} backbones')
        tokenizer_file = directory / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise CheckpointError(f'checkpoint file {TOKENIZER_FILE} not found in {directory}')
        self.tokenizer = PromptTokenizer(tokenizer_file)
        self.centers = act.bin_centers(self.config.n_action_bins)

        self.dtype = TORCH_DTYPES[options.dtype]
        self.device = torch.device(options.device)
        model = build_model(self.config)
        expected = model.checkpoint_shapes()
        if _tensor_source is None:
            files = weight_files(directory)
            check_keys(expected, set(files))
            tensors = iter_tensors(files)
        else:
            tensors = _tensor_source(expected, self.dtype, self.device)
        materialize(model, tensors, expected, self.dtype, self.device, options.quantization,
                    options.bnb_4bit_quant_type, TORCH_DTYPES[options.bnb_4bit_compute_dtype])
        self.model = model
        # compile=True: static-shape decode steps run through torch.compile ('reduce-overhead',
        # i.e. CUDA graphs, on CUDA); the first predictions are slow while it compiles (about 20 s
        # for the tiny model on a 2-core CPU). Meant for CUDA; it also works on CPU.
        self._static_decode = options.compile
        self._decode_step = model.language_model.forward_embeds
        if options.compile:
            mode = 'reduce-overhead' if self.device.type == 'cuda' else 'default'
            self._decode_step = torch.compile(model.language_model.forward_embeds, mode=mode,
                                              dynamic=False)
        self.parameter_count = sum(int(np.prod(shape)) for shape in expected.values())
        if options.self_test:
            self.self_test()

    # ------------------------------------------------------------------ public API
    def unnorm_keys(self) -> dict[str, int]:
        return {k: act.action_dim(self.norm_stats, k) for k in sorted(self.norm_stats)}

    def describe(self) -> dict:
        o = self.options
        info = {
            'model_id': self.model_id,
            'checkpoint': str(self.checkpoint_dir),
            'dtype': o.dtype,
            'device': str(self.device),
            'quantization': o.quantization,
            'image_pipeline': o.image_pipeline,
            'center_crop': o.center_crop,
            'prompt_template': o.prompt_template,
            'parameter_count': self.parameter_count,
            'unnorm_keys': self.unnorm_keys(),
        }
        if o.quantization == '4bit':
            info['bnb_4bit_quant_type'] = o.bnb_4bit_quant_type
            info['bnb_4bit_compute_dtype'] = o.bnb_4bit_compute_dtype
        elif o.quantization == '8bit':
            info['bnb_8bit'] = 'LLM.int8, outlier threshold 6.0'
        return info

    def predict(self, image: np.ndarray, instruction: str,
                unnorm_key: str | None = None) -> PredictionResult:
        return self.predict_batch([image], [instruction], [unnorm_key])[0]

    def predict_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                      unnorm_keys: Sequence[str | None] | None = None) -> list[PredictionResult]:
        if unnorm_keys is None:
            unnorm_keys = [None] * len(images)
        if not (len(images) == len(instructions) == len(unnorm_keys)) or not len(images):
            raise OpenVLAError(f'predict_batch needs equally many images, instructions and '
                               f'unnorm_keys (got {len(images)}, {len(instructions)}, '
                               f'{len(unnorm_keys)}), at least one')
        with self._lock:
            self._check_open()
            return self._predict_locked(list(images), list(instructions), list(unnorm_keys))

    def self_test(self) -> None:
        """Raise OpenVLAError unless the image changes the prefill logits (upstream on new
        transformers silently ignores the image and returns one action for every scene)."""
        with self._lock:
            self._check_open()
            rng = np.random.default_rng(0)
            dark = np.zeros((224, 224, 3), np.uint8)
            noise = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
            ids = self.prompt_token_ids(SELF_TEST_INSTRUCTION)
            pixels = torch.stack([self.pixel_values(dark), self.pixel_values(noise)])
            _, logits, _ = self.generate(pixels, [ids, ids], steps=1, return_logits=True)
            first = logits[0]
            change = (first[0] - first[1]).abs().max().item()
            scale = max(1.0, first.abs().max().item())
            if not change > SELF_TEST_MIN_RELATIVE_CHANGE * scale:
                raise OpenVLAError(
                    f'self-test failed for {self.model_id}: two very different images gave the same '
                    f'prefill logits (max change {change:.3g}), so the image has no effect on the '
                    'action; the vision path or projector of this checkpoint is broken')

    def close(self) -> None:
        with self._lock:
            self.model = None
            self._cache = None
            self._decode_step = None   # a bound method of the model would keep it alive
            gc.collect()
            if self.device.type == 'cuda':
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ building blocks
    def pixel_values(self, image: np.ndarray) -> torch.Tensor:
        """float32 [C, H, W] for the configured pipeline (before the cast to the model dtype)."""
        return to_pixel_values(image, self.processor, self.options.image_pipeline,
                               self.options.center_crop)

    def check_instruction(self, instruction: str) -> None:
        """What ``predict`` checks of an instruction, without a forward pass: the characters, and
        that prompt + image patches + the longest action fit the model's positions."""
        self._check_open()
        ids = self.prompt_token_ids(instruction)
        patches = self.model.vision_backbone.featurizer.patch_embed.num_patches
        steps = max(act.action_dim(self.norm_stats, k) for k in self.norm_stats)
        self._check_positions(len(ids) + patches, steps)

    def _check_positions(self, prefill: int, steps: int) -> None:
        limit = self.model.language_model.config.max_position_embeddings
        if prefill + steps > limit:
            raise InvalidInstructionError(
                f'prompt too long: {prefill} prefill positions + {steps} actions exceed the '
                f"model's {limit} positions")

    def prompt_token_ids(self, instruction: str) -> list[int]:
        validate_instruction(instruction, self.options.max_instruction_chars)
        return self.tokenizer.encode(build_prompt(instruction, self.options.prompt_template))

    @torch.inference_mode()
    def generate(self, pixel_values: torch.Tensor, token_ids: list[list[int]], steps: int,
                 return_logits: bool = False, step_times: list[float] | None = None):
        """Greedy decoding of ``steps`` tokens for a batch; rows are left-padded to align.

        Returns (token ids [B, steps] int64 tensor on CPU, per-step float32 logits [B, V] or None,
        stage timings in seconds). ``step_times``, if given, receives the duration of each decode
        step after the prefill (benchmarks; it synchronises the device every step).
        """
        model = self.model
        lm = model.language_model
        timer = _StageTimer(self.device)
        batch = len(token_ids)
        pixels = pixel_values.to(device=self.device, dtype=self.dtype)
        features = model.vision_backbone(pixels)
        timer.lap('vision')
        patches = model.projector(features)
        timer.lap('projector')

        n_patches = patches.shape[1]
        lengths = [len(ids) + n_patches for ids in token_ids]
        seq = max(lengths)
        total = seq + steps
        self._check_positions(seq, steps)
        if self._cache is None or not self._cache.fits(batch, total, self.dtype, self.device):
            self._cache = lm.new_cache(batch, max(total, 64 * ((total + 63) // 64)), self.dtype,
                                       self.device)
        cache = self._cache
        embed = lm.model.embed_tokens
        if batch == 1:
            ids = torch.tensor([token_ids[0]], dtype=torch.long, device=self.device)
            embeds = splice_image(embed(ids), patches)
            positions = torch.arange(seq, device=self.device)[None]
            valid = None
        else:
            embeds = torch.zeros((batch, seq, patches.shape[2]), dtype=patches.dtype,
                                 device=self.device)
            valid = torch.zeros((batch, total), dtype=torch.bool, device=self.device)
            for row, ids in enumerate(token_ids):
                row_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
                row_embeds = splice_image(embed(row_ids), patches[row:row + 1])
                embeds[row, seq - lengths[row]:] = row_embeds[0]
                valid[row, seq - lengths[row]:] = True
            valid[:, seq:] = True
            positions = (valid[:, :seq].long().cumsum(-1) - 1).clamp(min=0)
        logits = lm.forward_embeds(embeds, positions, cache, 0, _prefill_mask(valid, seq))
        all_logits = [logits] if return_logits else None
        tokens = [logits.argmax(-1)]
        # argmax of NaN logits still yields a token; track finiteness on the device and check
        # once at the end (no extra sync per step).
        finite = torch.isfinite(logits).all(-1)
        timer.lap('prefill')

        next_pos = positions[:, -1:] + 1
        if self._static_decode:
            # Same shapes every step: the whole cache is attended under a key mask.
            key_valid = torch.zeros((batch, cache.capacity), dtype=torch.bool, device=self.device)
            key_valid[:, :seq] = True if valid is None else valid[:, :seq]
        for step in range(1, steps):
            slot = seq + step - 1
            token_embeds = embed(tokens[-1])[:, None]
            if self._static_decode:
                key_valid[:, slot] = True
                slot_index = torch.full((1,), slot, dtype=torch.long, device=self.device)
                logits = self._decode_step(token_embeds, next_pos, cache, slot_index,
                                           key_valid[:, None, None, :])
            else:
                step_mask = None if valid is None else valid[:, None, None, :slot + 1]
                logits = lm.forward_embeds(token_embeds, next_pos, cache, slot, step_mask)
            tokens.append(logits.argmax(-1))
            finite &= torch.isfinite(logits).all(-1)
            if return_logits:
                all_logits.append(logits)
            next_pos = next_pos + 1
            if step_times is not None:
                step_times.append(timer.lap(f'step{step}'))
        out = torch.stack(tokens, dim=1).cpu()
        timer.lap('decode')
        if not bool(finite.all()):
            rows = [i for i, ok in enumerate(finite.cpu().tolist()) if not ok]
            raise InvalidModelOutputError(f'the model produced non-finite logits (batch rows {rows}); '
                                          f'no action is returned')
        times = timer.times
        if step_times is not None:
            times['decode'] += sum(times.pop(f'step{step}') for step in range(1, steps))
        return out, ([x.cpu() for x in all_logits] if return_logits else None), times

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self.model is None:
            raise OpenVLAError(f'policy {self.model_id} is closed')

    def _predict_locked(self, images, instructions, unnorm_keys) -> list[PredictionResult]:
        start = time.perf_counter()
        keys = [act.resolve_unnorm_key(self.norm_stats, k) for k in unnorm_keys]
        dims = [act.action_dim(self.norm_stats, k) for k in keys]
        token_ids = [self.prompt_token_ids(text) for text in instructions]
        for i, image in enumerate(images):
            try:
                validate_image(image)
            except InvalidImageError as exc:
                raise InvalidImageError(f'image {i}: {exc}' if len(images) > 1 else str(exc)) from None
        pixels = torch.stack([self.pixel_values(image) for image in images])
        t_pre = time.perf_counter() - start

        tokens, _, stage = self.generate(pixels, token_ids, steps=max(dims))
        if self.options.extra_latency_s:
            time.sleep(self.options.extra_latency_s)

        post_start = time.perf_counter()
        results = []
        for row, (key, dim) in enumerate(zip(keys, dims)):
            ids = tokens[row, :dim].numpy().astype(np.int64)
            normalized = act.tokens_to_normalized(ids, self.config.action_vocab_size, self.centers)
            action = act.unnormalize(normalized, self.norm_stats[key]['action'])
            act.check_action(action, dim)
            act.check_action(normalized, dim)
            results.append(PredictionResult(action=action.astype(np.float64),
                                            normalized_action=normalized.astype(np.float64),
                                            action_token_ids=ids, unnorm_key=key))
        t_post = time.perf_counter() - post_start
        total = time.perf_counter() - start
        timings = {'preprocess': t_pre, **stage, 'postprocess': t_post, 'total': total}
        for r in results:
            r.timings = dict(timings)
        return results


def _prefill_mask(valid: torch.Tensor | None, seq: int) -> torch.Tensor | None:
    """Boolean [B, 1, seq, seq] mask: causal over real tokens; padded query rows see only
    themselves so they stay finite (their outputs are never used)."""
    if valid is None:
        return None
    causal = torch.ones((seq, seq), dtype=torch.bool, device=valid.device).tril()
    keys = valid[:, None, None, :seq]
    eye = torch.eye(seq, dtype=torch.bool, device=valid.device)
    return (causal & keys) | eye


class _StageTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times[name] = now - self._last
        self._last = now
        return self.times[name]


def load_policy(checkpoint_dir: str | Path, options: PolicyOptions | None = None) -> OpenVLAPolicy:
    """Load a local OpenVLA checkpoint directory (see :mod:`openvla_ros.engine.checkpoint`)."""
    return OpenVLAPolicy(checkpoint_dir, options)
