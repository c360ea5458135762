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
import math
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
from .quantization import (quantized_parameter, replace_linears, torchao_check_supported,
                           torchao_eligible, torchao_quantize)

TORCH_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
# Batches are padded to one of these sizes for the compiled decode step (one graph each).
BATCH_BUCKETS = (1, 2, 4, 8)
# Cache slots of the compiled path: BOS + 256 patches + a prompt of up to ~240 tokens + the action.
# A longer prompt still works, through the eager path and its own cache.
STATIC_CACHE_SLOTS = 512
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
    if options.quantization.startswith('torchao'):
        why = torchao_check_supported(options.quantization, torch.device(options.device),
                                      TORCH_DTYPES[options.dtype])
        if why:
            raise OpenVLAError(why)


def build_model(cfg: OpenVLAConfig) -> OpenVLAModel:
    """The architecture on the meta device (no memory for weights; the config's dimensions are
    bounded, so this is quick)."""
    try:
        with torch.device('meta'):
            return OpenVLAModel(cfg)
    except (RuntimeError, ValueError, TypeError, AssertionError, KeyError) as exc:
        # timm refuses unknown model ids or inconsistent kwargs in its own words
        raise CheckpointError(f'config.json describes a model that cannot be built: '
                              f'{type(exc).__name__}: {exc}') from None


# bytes per weight of a quantized linear layer (scales and zero points on top are small)
QUANTIZED_WEIGHT_BYTES = {'8bit': 1.0, '4bit': 0.5, 'torchao-int8': 1.0, 'torchao-int4': 0.5}
# activations, allocator slack and framework buffers on top of weights and KV cache
MEMORY_HEADROOM = 1.15
MEMORY_HEADROOM_BYTES = 256 * 2**20


def estimate_memory(expected: dict[str, tuple[int, ...]], cfg: OpenVLAConfig, dtype: torch.dtype,
                    quantization: str, cache_tokens: int) -> int:
    """Bytes the loaded model needs on its device: weights (quantized linears at their packed
    size), a KV cache of ``cache_tokens`` token slots, and headroom."""
    size = torch.empty((), dtype=dtype, device='meta').element_size()
    weights = 0.0
    for key, shape in expected.items():
        n = math.prod(shape)
        linear = (len(shape) == 2 and key.endswith('.weight') and 'embed' not in key
                  and not key.startswith('language_model.lm_head'))
        weights += n * (QUANTIZED_WEIGHT_BYTES[quantization] if quantization != 'none' and linear
                        else size)
    text = cfg.text
    cache = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * cache_tokens * size
    return int((weights + cache) * MEMORY_HEADROOM) + MEMORY_HEADROOM_BYTES


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes free on ``device`` or None when unknown, what was measured)."""
    if device.type == 'cuda':
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free), f'free memory on {device}'
        except RuntimeError:
            return None, ''
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024, 'available RAM'
    except (OSError, ValueError, IndexError):
        pass
    return None, ''


def check_fits(needed: int, device: torch.device, model_id: str, parameters: int) -> None:
    free, what = available_memory(device)
    if free is not None and needed > free:
        raise CheckpointError(f'{model_id} has {parameters:,} parameters and needs about '
                              f'{needed / 2**30:.1f} GiB on {device}, but {what} is '
                              f'{free / 2**30:.1f} GiB; refusing to load it')


def materialize(model: OpenVLAModel, tensors: Iterable[tuple[str, torch.Tensor]],
                expected: dict[str, tuple[int, ...]], dtype: torch.dtype, device: torch.device,
                quantization: str = 'none', quant_type: str = 'nf4',
                compute_dtype: torch.dtype = torch.bfloat16) -> None:
    """Move a meta model onto ``device`` one tensor at a time, in ``dtype`` (or quantized).

    ``tensors`` yields (checkpoint key, tensor); ``expected`` maps checkpoint key -> shape.
    """
    quantized = set()
    torchao = quantization.startswith('torchao')
    if quantization != 'none' and not torchao:
        quantized = set(replace_linears(model, quantization, compute_dtype, quant_type))
    modules = dict(model.named_modules())
    if torchao:
        # each weight is quantized as soon as it is loaded: the full-precision model never exists
        quantized = {n for n, m in modules.items() if torchao_eligible(quantization, n, m)}
    for ckpt_key, tensor in tensors:
        if tuple(tensor.shape) != expected[ckpt_key]:
            raise CheckpointError(f'tensor {ckpt_key} has shape {tuple(tensor.shape)}, the '
                                  f'architecture in config.json expects {expected[ckpt_key]}')
        module_name, attr = checkpoint_key_to_module_key(ckpt_key).rsplit('.', 1)
        module = modules[module_name]
        if module_name in quantized and attr == 'weight' and torchao:
            module._parameters[attr] = torch.nn.Parameter(tensor.to(device=device, dtype=dtype),
                                                          requires_grad=False)
            torchao_quantize(module, quantization)
        elif module_name in quantized and attr == 'weight':
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
        self.parameter_count = sum(math.prod(shape) for shape in expected.values())
        cache_tokens = (BATCH_BUCKETS[-1] * STATIC_CACHE_SLOTS if options.compile
                        else STATIC_CACHE_SLOTS)
        check_fits(estimate_memory(expected, self.config, self.dtype, options.quantization,
                                   cache_tokens), self.device, self.model_id, self.parameter_count)
        if _tensor_source is None:
            files = weight_files(directory)
            check_keys(expected, set(files))
            tensors = iter_tensors(files)
        else:
            tensors = _tensor_source(expected, self.dtype, self.device)
        materialize(model, tensors, expected, self.dtype, self.device, options.quantization,
                    options.bnb_4bit_quant_type, TORCH_DTYPES[options.bnb_4bit_compute_dtype])
        self.model = model
        self._static_cache = None
        self._static_inputs: dict = {}
        self._decode_step = None
        self.last_forward_passes = 0
        if options.compile:
            self._setup_static_decode(compiled=True)
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
        elif o.quantization.startswith('torchao'):
            info['torchao'] = ('int8 weights, per-channel scales' if o.quantization == 'torchao-int8'
                               else 'int4 weights, groups of 128, tinygemm layout')
        return info

    def predict(self, image: np.ndarray, instruction: str, unnorm_key: str | None = None,
                draft_token_ids: Sequence[int] | None = None) -> PredictionResult:
        """``draft_token_ids``: a guess of the action tokens, typically the previous action's for
        the same instruction; with ``speculative`` on it is verified in the prefill pass, and the
        result is the same as without it (only faster when it is right)."""
        return self.predict_batch([image], [instruction], [unnorm_key],
                                  None if draft_token_ids is None else [draft_token_ids])[0]

    def predict_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                      unnorm_keys: Sequence[str | None] | None = None,
                      draft_token_ids: Sequence[Sequence[int] | None] | None = None
                      ) -> list[PredictionResult]:
        if unnorm_keys is None:
            unnorm_keys = [None] * len(images)
        if not (len(images) == len(instructions) == len(unnorm_keys)) or not len(images):
            raise OpenVLAError(f'predict_batch needs equally many images, instructions and '
                               f'unnorm_keys (got {len(images)}, {len(instructions)}, '
                               f'{len(unnorm_keys)}), at least one')
        with self._lock:
            self._check_open()
            return self._predict_locked(list(images), list(instructions), list(unnorm_keys),
                                        draft_token_ids)

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
            self._static_cache = None
            self._static_inputs = {}
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
                 return_logits: bool = False, step_times: list[float] | None = None,
                 drafts: Sequence[Sequence[int] | None] | None = None):
        """Greedy decoding of ``steps`` tokens for a batch; rows are left-padded to align.

        ``drafts`` (one per row, or None): guessed tokens, verified in the prefill pass
        (speculative decoding); the result is the same as without them, only fewer decode steps
        run when they are right. Returns (token ids [B, steps] int64 tensor on CPU, per-step
        float32 logits [B, V] or None, stage timings in seconds). ``step_times``, if given,
        receives the duration of each decode step after the prefill (benchmarks).
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
        draft = self._draft_tensor(drafts, batch, steps)
        n_draft = 0 if draft is None else draft.shape[1]
        static = self._static_cache is not None and self._static_cache.fits(
            batch, total, self.dtype, self.device)
        if static:
            cache = self._static_cache
        else:
            if self._cache is None or not self._cache.fits(batch, total, self.dtype, self.device):
                self._cache = None   # free the old buffers before allocating the new ones
                self._cache = lm.new_cache(batch, max(total, 64 * ((total + 63) // 64)),
                                           self.dtype, self.device)
            cache = self._cache
        embed = lm.model.embed_tokens
        if batch == 1:
            ids = torch.tensor([token_ids[0]], dtype=torch.long, device=self.device)
            embeds = splice_image(embed(ids), patches)
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
        if n_draft:
            # Rows are left-padded, so every row's draft sits at the same slots seq..seq+k-1.
            embeds = torch.cat([embeds, embed(draft)], dim=1)
        width = seq + n_draft
        if valid is None:
            positions = torch.arange(width, device=self.device)[None]
        else:
            positions = (valid[:, :width].long().cumsum(-1) - 1).clamp(min=0)
        logits = lm.forward_embeds(embeds, positions, cache, 0, _prefill_mask(valid, width),
                                   last=n_draft + 1)
        if n_draft:
            # Token j is greedy's choice given the draft's first j tokens; while the draft agrees
            # with greedy, those inputs are exactly what plain decoding would have fed, so the
            # choices up to the first disagreement (plus the one there) are greedy's own.
            greedy = logits.argmax(-1)
            agree = (greedy[:, :n_draft] == draft).long().cumprod(-1).sum(-1)
            accepted = int(agree.min())     # the one host sync of the speculative path
            step_logits = [logits[:, j] for j in range(accepted + 1)]
        else:
            accepted = 0
            step_logits = [logits]
        all_logits = list(step_logits) if return_logits else None
        tokens = [l.argmax(-1) for l in step_logits]
        # argmax of NaN logits still yields a token; track finiteness on the device and check
        # once at the end (no extra sync per step).
        finite = torch.stack([torch.isfinite(l).all(-1) for l in step_logits]).all(0)
        timer.lap('prefill')

        done = len(tokens)
        next_pos = positions[:, seq - 1:seq] + done
        if static and done < steps:
            rows = self._bucket(batch)
            inputs = self._static_inputs[rows]
            key_mask = inputs['mask']
            key_mask.zero_()
            filled = seq + done - 1
            key_mask[:batch, 0, 0, :filled] = True if valid is None else valid[:, :filled]
            key_mask[batch:, 0, 0, 0] = True   # padding rows attend somewhere, stay finite
            inputs['positions'].zero_()
            inputs['positions'][:batch] = next_pos
        for step in range(done, steps):
            slot = seq + step - 1
            if static:
                inputs['tokens'][:batch] = tokens[-1]
                inputs['slot'].fill_(slot)
                key_mask[:batch, 0, 0, slot] = True
                if self.device.type == 'cuda' and self.options.compile:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = self._decode_step(inputs['tokens'], inputs['positions'], cache,
                                           inputs['slot'], key_mask)[:batch]
                if return_logits:
                    logits = logits.clone()   # a CUDA graph's output is overwritten next replay
                inputs['positions'].add_(1)
            else:
                token_embeds = embed(tokens[-1])[:, None]
                step_mask = None if valid is None else valid[:, None, None, :slot + 1]
                logits = lm.forward_embeds(token_embeds, next_pos, cache, slot, step_mask)
                next_pos = next_pos + 1
            tokens.append(logits.argmax(-1))
            finite &= torch.isfinite(logits).all(-1)
            if return_logits:
                all_logits.append(logits)
            if step_times is not None:
                timer.lap(f'step{step}')
        out = torch.stack(tokens, dim=1).cpu()
        timer.lap('decode')
        if not bool(finite.all()):
            rows_bad = [i for i, ok in enumerate(finite.cpu().tolist()) if not ok]
            raise InvalidModelOutputError(f'the model produced non-finite logits (batch rows '
                                          f'{rows_bad}); no action is returned')
        times = timer.finish()
        if step_times is not None:
            for step in range(done, steps):
                step_times.append(times[f'step{step}'])
            times['decode'] += sum(times.pop(f'step{step}') for step in range(done, steps))
        self.last_forward_passes = 1 + steps - done
        return out, ([x.cpu() for x in all_logits] if return_logits else None), times

    def _draft_tensor(self, drafts, batch: int, steps: int) -> torch.Tensor | None:
        """[B, steps - 1] draft tokens on the device, or None when there is nothing to verify.

        The last action token is never fed back, so its draft is never needed. A row without a
        draft borrows another row's (verification is exact whatever the draft says)."""
        if not self.options.speculative or drafts is None or steps < 2:
            return None
        if len(drafts) != batch:
            raise OpenVLAError(f'draft_token_ids: {len(drafts)} drafts for {batch} rows')
        vocab = self.config.text.vocab_size
        rows = []
        for i, d in enumerate(drafts):
            if d is None:
                rows.append(None)
                continue
            try:
                ids = [int(t) for t in d]
                if any(isinstance(t, bool) or int(t) != t for t in d):
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                raise OpenVLAError(f'draft_token_ids[{i}] must be a sequence of integers') from None
            if not ids or any(not 0 <= t < vocab for t in ids):
                raise OpenVLAError(f'draft_token_ids[{i}] must be non-empty token ids in '
                                   f'0..{vocab - 1}')
            rows.append((ids + ids[-1:] * steps)[:steps - 1])
        known = [r for r in rows if r is not None]
        if not known:
            return None
        return torch.tensor([r if r is not None else known[0] for r in rows], dtype=torch.long,
                            device=self.device)

    def _bucket(self, batch: int) -> int:
        return next(b for b in BATCH_BUCKETS if b >= batch)

    def _setup_static_decode(self, compiled: bool) -> None:
        """compile=True: one cache for the largest bucket, persistent step inputs per bucket,
        the compiled one-token step, and a warm-up so the first action is not the slow one."""
        lm = self.model.language_model
        slots = min(STATIC_CACHE_SLOTS, lm.config.max_position_embeddings)
        self._static_cache = lm.new_cache(BATCH_BUCKETS[-1], slots, self.dtype, self.device)
        self._static_inputs = {}
        slot = torch.zeros(1, dtype=torch.long, device=self.device)
        for rows in BATCH_BUCKETS:
            self._static_inputs[rows] = {
                'tokens': torch.zeros(rows, dtype=torch.long, device=self.device),
                'positions': torch.zeros((rows, 1), dtype=torch.long, device=self.device),
                'mask': torch.zeros((rows, 1, 1, slots), dtype=torch.bool, device=self.device),
                'slot': slot,
            }
        static = list(self._static_cache.buffers()) + [
            t for inputs in self._static_inputs.values() for t in inputs.values()]
        for tensor in static:
            # fixed addresses: CUDA graphs replay on them instead of copying them in
            torch._dynamo.mark_static_address(tensor)
        if not compiled:   # the same static-shape path, eagerly (tests compare it on CPU)
            self._decode_step = lm.decode_step
            return
        mode = 'reduce-overhead' if self.device.type == 'cuda' else 'default'
        self._decode_step = torch.compile(lm.decode_step, fullgraph=True, mode=mode,
                                          dynamic=False)
        self.warm_up()

    def warm_up(self, batches: Sequence[int] = (1,)) -> None:
        """Compile (and, on CUDA, capture) the decode step for these batch sizes now."""
        pixels = torch.zeros((1, *self._pixel_shape()), dtype=torch.float32)
        ids = self.prompt_token_ids(SELF_TEST_INSTRUCTION)
        for rows in batches:
            for _ in range(2 if self.device.type == 'cuda' else 1):   # 2nd call records the graph
                self.generate(pixels.expand(rows, -1, -1, -1), [ids] * rows, steps=3)

    def _pixel_shape(self) -> tuple[int, int, int]:
        size = self.config.image_sizes[0]
        return (6 if self.config.use_fused_vision_backbone else 3, size, size)

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self.model is None:
            raise OpenVLAError(f'policy {self.model_id} is closed')

    def _predict_locked(self, images, instructions, unnorm_keys,
                        drafts=None) -> list[PredictionResult]:
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

        tokens, _, stage = self.generate(pixels, token_ids, steps=max(dims), drafts=drafts)
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
            result = PredictionResult(action=action.astype(np.float64),
                                      normalized_action=normalized.astype(np.float64),
                                      action_token_ids=ids, unnorm_key=key)
            if self.options.speculative and drafts is not None and drafts[row] is not None:
                result.draft_tokens_accepted = _common_prefix(drafts[row], ids)
            results.append(result)
        t_post = time.perf_counter() - post_start
        total = time.perf_counter() - start
        timings = {'preprocess': t_pre, **stage, 'postprocess': t_post, 'total': total}
        for r in results:
            r.timings = dict(timings)
        return results


def _common_prefix(draft: Sequence[int], ids: np.ndarray) -> int:
    n = 0
    for a, b in zip(draft, ids.tolist()):
        if int(a) != b:
            break
        n += 1
    return n


def _prefill_mask(valid: torch.Tensor | None, seq: int) -> torch.Tensor | None:
    """Boolean [B, 1, seq, seq] mask (``valid`` [B, >= seq]): causal over real tokens; padded query rows see only
    themselves so they stay finite (their outputs are never used)."""
    if valid is None:
        return None
    causal = torch.ones((seq, seq), dtype=torch.bool, device=valid.device).tril()
    keys = valid[:, None, None, :seq]
    eye = torch.eye(seq, dtype=torch.bool, device=valid.device)
    return (causal & keys) | eye


class _StageTimer:
    """Stage durations: CUDA events on CUDA (no device synchronisation between stages; read once
    at the end), ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'
        self.names: list[str] = []
        if self.cuda:
            self.marks = [torch.cuda.Event(enable_timing=True)]
            self.marks[0].record()
        else:
            self.marks = [time.perf_counter()]

    def lap(self, name: str) -> None:
        self.names.append(name)
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def finish(self) -> dict[str, float]:
        if self.cuda:
            self.marks[-1].synchronize()
            durations = [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        else:
            durations = [b - a for a, b in zip(self.marks, self.marks[1:])]
        return dict(zip(self.names, durations))


def load_policy(checkpoint_dir: str | Path, options: PolicyOptions | None = None) -> OpenVLAPolicy:
    """Load a local OpenVLA checkpoint directory (see :mod:`openvla_ros.engine.checkpoint`)."""
    return OpenVLAPolicy(checkpoint_dir, options)
