"""Fine-tuning the native OpenVLA model with upstream's objective, and exporting the result.

Objective (upstream ``vla-scripts/finetune.py``): the training sequence is the prompt
``In: What action should the robot take to {instruction}?\\nOut: `` followed by the action tokens
and EOS; the loss is next-token cross-entropy on the action tokens and EOS only (every prompt
position is ignored). Actions are normalised with the dataset's q01/q99 (BOUNDS_Q99, masked
dimensions only), clipped to [-1, 1] and discretised into the same 256 uniform bins the engine
decodes (``openvla_ros.engine.actions``): bin ``i`` = ``digitize(x, linspace(-1, 1, 256))``,
token = ``action_vocab_size - i``.

The model is the engine's own :class:`~openvla_ros.engine.modeling.OpenVLAModel`, loaded through
:func:`~openvla_ros.engine.policy.load_policy` in float32, so training sees exactly the image
pipeline, tokenizer and prompt that inference uses.

Modes: ``full``; ``lora`` (peft adapters on every linear layer but ``lm_head``, merged into the
export); ``qlora`` (the same adapters over a bitsandbytes 4-bit base, CUDA only, merged into the
float32 base for the export). Under ``torchrun`` the run is shared by several processes (DDP, or
FSDP for a full fine-tune) and follows the one-process run with the same flags
(:mod:`openvla_ros.learning.distributed`). The trainer state of lora/qlora keeps the adapters only.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from openvla_ros.defaults import TRAINING_SEEDS_FILE
from openvla_ros.engine.modeling import module_key_to_checkpoint_key, splice_image
from openvla_ros.engine.policy import PolicyOptions, load_policy
from openvla_ros.engine.prompt import build_prompt

from . import distributed as dist
from .dataset import INFO_FILE, DatasetError, iter_episodes, load_statistics

IGNORE_INDEX = -100
EOS_TOKEN_ID = 2
STATE_FILE = 'trainer_state.pt'
MODES = ('full', 'lora', 'qlora')
LR_SCHEDULES = ('constant', 'cosine')
EXPORT_DTYPES = {'bfloat16': torch.bfloat16, 'float32': torch.float32}
# upstream finetune.py defaults: LoRA rank 32, dropout 0, alpha = min(rank, 16), gaussian init
DEFAULT_LORA_RANK = 32


class FinetuneError(ValueError):
    """A checkpoint/dataset mismatch or bad training options."""


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8
    grad_accumulation: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    holdout_fraction: float = 0.1
    seed: int = 0
    mode: str = 'full'
    lora_rank: int = DEFAULT_LORA_RANK
    eval_every: int = 50
    save_every: int = 100
    threads: int = 2
    dataset_key: str | None = None
    lr_schedule: str = 'constant'         # 'constant' or 'cosine' (to 10% of the rate at `steps`)
    warmup_steps: int = 0                 # linear warm-up from 0
    augment_shift_px: int = 0             # random image shift (replicate padding), in model pixels
    time_limit_s: float | None = None     # stop (and export) once training has run this long
    distributed: str = 'ddp'              # under torchrun: 'ddp', or 'fsdp' (full fine-tunes)
    export_dtype: str = 'bfloat16'        # weights of the exported checkpoint
    mix_dataset: str | None = None        # a second dataset (own statistics key) drawn into every batch
    mix_fraction: float = 0.0             # its share of each micro-batch
    extra: dict = field(default_factory=dict)


def normalize_actions(actions: np.ndarray, stats: dict) -> np.ndarray:
    a = np.asarray(actions, dtype=np.float64)
    q01 = np.asarray(stats['q01'], dtype=np.float64)
    q99 = np.asarray(stats['q99'], dtype=np.float64)
    mask = np.asarray(stats.get('mask', [True] * len(q01)), dtype=bool)
    scaled = 2.0 * (a - q01) / (q99 - q01 + 1e-8) - 1.0
    return np.clip(np.where(mask, scaled, a), -1.0, 1.0)


def action_token_ids(normalized: np.ndarray, action_vocab_size: int, n_bins: int = 256) -> np.ndarray:
    edges = np.linspace(-1.0, 1.0, n_bins)
    return action_vocab_size - np.digitize(np.clip(normalized, -1.0, 1.0), edges)


class Samples:
    """Every (frame, instruction, action) step of a dataset as model inputs."""

    def __init__(self, policy, dataset_dir: Path, dataset_key: str | None):
        stats_all = load_statistics(dataset_dir)
        key = dataset_key or next(iter(stats_all))
        if key not in stats_all:
            raise DatasetError(f'{dataset_dir}: no statistics key {key!r} ({sorted(stats_all)})')
        self.key, self.stats = key, stats_all[key]
        dim = len(self.stats['action']['q01'])
        cfg = policy.config
        # one pixel tensor per distinct frame: a grounding scene labelled for several nouns is
        # the same image in several episodes
        pixels, frame_of, prompts, targets, episode_of = [], [], [], [], []
        frame_index: dict[bytes, int] = {}
        prompt_cache: dict[str, list[int]] = {}
        for e_idx, episode in enumerate(iter_episodes(dataset_dir)):
            if episode.actions.shape[1] != dim:
                raise FinetuneError(f'episode {e_idx} ({episode.source}): actions have '
                                    f'{episode.actions.shape[1]} dimensions, the statistics {dim}')
            if episode.instruction not in prompt_cache:
                prompt_cache[episode.instruction] = policy.tokenizer.encode(
                    build_prompt(episode.instruction, policy.options.prompt_template))
            tokens = action_token_ids(normalize_actions(episode.actions, self.stats['action']),
                                      cfg.action_vocab_size, cfg.n_action_bins)
            for image, tok in zip(episode.images, tokens):
                digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
                if digest not in frame_index:
                    frame_index[digest] = len(pixels)
                    pixels.append(policy.pixel_values(image))
                frame_of.append(frame_index[digest])
                prompts.append(prompt_cache[episode.instruction])
                targets.append(tok.tolist() + [EOS_TOKEN_ID])
                episode_of.append(e_idx)
        if not pixels:
            raise DatasetError(f'{dataset_dir}: no steps')
        self.pixels = torch.stack(pixels)
        self.frame_of = np.asarray(frame_of)
        self.prompts, self.targets = prompts, targets
        self.episode_of = np.asarray(episode_of)
        self.action_dim = dim
        self.pad_id = policy.tokenizer.pad_token_id
        self.device = policy.device

    def __len__(self) -> int:
        return len(self.prompts)

    def frames(self, indices) -> torch.Tensor:
        """pixel_values of the samples ``indices``."""
        return self.pixels[torch.as_tensor(self.frame_of[list(indices)], dtype=torch.long)]

    def batch(self, indices, mix: tuple['Samples', list] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pixel_values, input_ids (right-padded: attention is causal, so padding after the
        targets never reaches them) and labels (IGNORE_INDEX except action tokens + EOS).
        ``mix``: (other samples, their indices) appended to the batch."""
        rows = [(self, i) for i in indices] + ([(mix[0], i) for i in mix[1]] if mix else [])
        seqs = [src.prompts[i] + src.targets[i] for src, i in rows]
        length = max(map(len, seqs))
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
        for row, ((src, i), seq) in enumerate(zip(rows, seqs)):
            ids[row, :len(seq)] = torch.tensor(seq)
            start = len(src.prompts[i])
            labels[row, start:len(seq)] = torch.tensor(src.targets[i])
        pixels = self.frames(indices)
        if mix:
            pixels = torch.cat([pixels, mix[0].frames(mix[1])])
        return pixels.to(self.device), ids.to(self.device), labels.to(self.device)


def sequence_hidden(model, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states [B, L, D] for every text position of ``input_ids`` (position j
    predicts token j+1), through the engine's modules: the image patches spliced after BOS,
    causal attention."""
    patches = model.projector(model.vision_backbone(pixel_values))
    lm = model.language_model
    embeds = splice_image(lm.model.embed_tokens(input_ids), patches)
    b, t, _ = embeds.shape
    positions = torch.arange(t, device=embeds.device).expand(b, t)
    cache = lm.new_cache(b, t, embeds.dtype, embeds.device)
    cos = lm._rope_cos[positions].to(embeds.dtype).unsqueeze(1)
    sin = lm._rope_sin[positions].to(embeds.dtype).unsqueeze(1)
    x = embeds
    for i, layer in enumerate(lm.model.layers):
        x = layer(x, cos, sin, cache.k[i], cache.v[i], 0, None)
    n_patches = patches.shape[1]
    # text token k >= 1 sits at spliced position k + n_patches; BOS at 0
    text = torch.cat([x[:, :1], x[:, 1 + n_patches:]], dim=1)
    return lm.model.norm(text)


def sequence_logits(model, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, L, V] for every text position of ``input_ids``."""
    return model.language_model.lm_head(sequence_hidden(model, pixel_values, input_ids)).float()


class SharedRows:
    """``lm_head`` rows that are all equal, projected once.

    A small model starts with every ``lm_head`` row outside the action tokens equal (zero, see
    :func:`openvla_ros.learning.small.training_init`), and those rows never appear as labels, so
    each gets the same gradient, the same AdamW update, and stays equal to the others. The
    cross-entropy over the whole vocabulary then equals the one over the label rows plus one
    shared row whose logit counts ``count`` times (``+ log count``): the same loss and, with
    :meth:`spread_grad` after the backward pass, the same gradients, without projecting onto and
    normalising over 31 807 equal columns at every labelled position (more than half of a small
    model's training step). :meth:`detect` returns None for any checkpoint whose rows differ (a
    pre-trained one), which then trains over the full projection."""

    def __init__(self, keep: torch.Tensor, shared: torch.Tensor):
        self.keep = keep                     # row ids that can be labels, projected one by one
        self.shared = shared                 # the other row ids, all equal
        self.first = int(shared[0])
        self.log_count = math.log(len(shared))
        self._to_compact = None

    @classmethod
    def detect(cls, weight: torch.Tensor, label_ids) -> 'SharedRows | None':
        vocab = weight.shape[0]
        keep = torch.tensor(sorted(set(int(i) for i in label_ids)), dtype=torch.long)
        mask = torch.ones(vocab, dtype=torch.bool)
        mask[keep] = False
        shared = torch.nonzero(mask).flatten()
        if len(shared) < 2:
            return None
        with torch.no_grad():
            w = weight.detach()
            idx = shared.to(w.device)
            if not bool((w[idx[:2]] == w[idx[:1]]).all()):      # a trained head: no full gather
                return None
            if not bool((w[idx] == w[idx[:1]]).all()):
                return None
        return cls(keep, shared)

    def logits(self, head_weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """[n, len(keep) + 1] logits: the label rows, then the shared row with its count."""
        keep = self.keep.to(hidden.device)
        rows = torch.cat([head_weight[keep], head_weight[self.first:self.first + 1]])
        out = (hidden @ rows.t().to(hidden.dtype)).float()
        return torch.cat([out[:, :-1], out[:, -1:] + self.log_count], dim=1)

    def compact_labels(self, wanted: torch.Tensor) -> torch.Tensor:
        if self._to_compact is None or self._to_compact.device != wanted.device:
            table = torch.full((int(self.keep.max()) + 1,), -1, dtype=torch.long)
            table[self.keep] = torch.arange(len(self.keep))
            self._to_compact = table.to(wanted.device)
        return self._to_compact[wanted]

    @torch.no_grad()
    def spread_grad(self, head_weight: torch.Tensor) -> None:
        """After backward: the shared row's gradient (for all of them together) split equally
        over every shared row, as the full projection gives it."""
        grad = head_weight.grad
        if grad is None:
            return
        share = grad[self.first] / len(self.shared)
        grad[self.shared.to(grad.device)] = share


def label_token_ids(config) -> list[int]:
    """Every token id a training label can hold: the action bins and EOS."""
    return [EOS_TOKEN_ID, *range(config.action_vocab_size - config.n_action_bins, config.action_vocab_size)]


def action_loss(model, pixel_values, input_ids, labels, action_dim: int,
                shared: SharedRows | None = None):
    """Upstream's loss: mean next-token cross-entropy over the labelled (action + EOS) positions.
    The vocabulary projection is applied at those positions only: the prompt positions carry no
    loss, so the result is the same as projecting every position, at a fraction of the cost.
    ``shared``: the equal rows of ``lm_head`` projected once (:class:`SharedRows`)."""
    hidden = sequence_hidden(model, pixel_values, input_ids)[:, :-1]
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    wanted = target[valid]
    head = model.language_model.lm_head
    if shared is None:
        logits = head(hidden[valid]).float()
        predicted = logits.argmax(-1)
        loss = F.cross_entropy(logits, wanted)
    else:
        logits = shared.logits(head.weight, hidden[valid])
        wanted_compact = shared.compact_labels(wanted)
        loss = F.cross_entropy(logits, wanted_compact)
        # the argmax of the full projection: a label row, or (any) shared row when the shared
        # logit, counted once, is the highest
        best = logits[:, :-1].max(-1)
        shared_wins = (logits[:, -1] - shared.log_count) > best.values
        predicted = torch.where(shared_wins, torch.full_like(best.indices, shared.first),
                                shared.keep.to(best.indices.device)[best.indices])
    # accuracy over the action tokens only (EOS, the last target of each row, excluded)
    is_action = wanted != EOS_TOKEN_ID
    correct = ((predicted == wanted) & is_action).sum()
    return loss, correct.float() / is_action.sum().clamp(min=1)


def _linear_module_names(model) -> list[str]:
    return sorted({name.rsplit('.', 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and not name.endswith('lm_head')})


def wrap_lora(model, rank: int):
    """peft LoRA on every linear layer except lm_head (upstream: all-linear, r=32, alpha=min(r,16),
    dropout 0, gaussian init)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=min(rank, 16), lora_dropout=0.0,
                        target_modules=_linear_module_names(model), init_lora_weights='gaussian')
    return get_peft_model(model, config)


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """The rate for optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    base = config.learning_rate
    if config.warmup_steps and step < config.warmup_steps:
        return base * (step + 1) / config.warmup_steps
    if config.lr_schedule == 'cosine':
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return base


def shift_images(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by a random whole number of pixels in [-max_shift, max_shift] per axis,
    edges replicated (the random-shift augmentation of image-based control)."""
    if max_shift <= 0:
        return pixels
    b, _, h, w = pixels.shape
    padded = F.pad(pixels, (max_shift,) * 4, mode='replicate')
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


def split_indices(samples: Samples, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out split by whole episodes, so no frame of a held-out episode is trained on."""
    episodes = np.unique(samples.episode_of)
    rng = np.random.default_rng(seed)
    n_hold = int(round(len(episodes) * fraction)) if len(episodes) > 1 else 0
    held = set(rng.permutation(episodes)[:n_hold].tolist())
    is_held = np.array([e in held for e in samples.episode_of])
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


@torch.no_grad()
def evaluate(model, samples: Samples, indices: np.ndarray, batch_size: int,
             loss_module=None, shared: SharedRows | None = None) -> dict:
    """Held-out loss and accuracy; ``loss_module`` (an FSDP-sharded
    :class:`~openvla_ros.learning.distributed.LossModule`) instead of ``model`` when the weights
    are gathered only inside its forward."""
    if len(indices) == 0:
        return {}
    losses, accs, weights = [], [], []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        if loss_module is not None:
            loss, acc = loss_module(*samples.batch(chunk))
        else:
            loss, acc = action_loss(model, *samples.batch(chunk), samples.action_dim, shared)
        losses.append(float(loss)), accs.append(float(acc)), weights.append(len(chunk))
    w = np.asarray(weights, dtype=float)
    return {'loss': float(np.dot(losses, w) / w.sum()), 'accuracy': float(np.dot(accs, w) / w.sum())}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train(checkpoint: str | Path, dataset_dir: str | Path, out_dir: str | Path,
          config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train, writing ``out_dir/train_state`` checkpoints, and export the result to
    ``out_dir/checkpoint`` (merged, HF layout). Returns the history.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; the global batch is shared
    out over the ranks as :mod:`openvla_ros.learning.distributed` describes, and only rank 0
    writes files."""
    if config.mode not in MODES:
        raise FinetuneError(f'unknown mode {config.mode!r}; choose one of {MODES}')
    if config.lr_schedule not in LR_SCHEDULES:
        raise FinetuneError(f'unknown learning-rate schedule {config.lr_schedule!r}; choose one of {LR_SCHEDULES}')
    if config.distributed not in dist.STRATEGIES:
        raise FinetuneError(f'unknown distributed strategy {config.distributed!r}; choose one of '
                            f'{dist.STRATEGIES}')
    if config.distributed == 'fsdp' and config.mode != 'full':
        raise FinetuneError(f'fsdp shards a full fine-tune; {config.mode} trains only the adapters '
                            '(use ddp)')
    if config.export_dtype not in EXPORT_DTYPES:
        raise FinetuneError(f'unknown export dtype {config.export_dtype!r}; choose one of '
                            f'{sorted(EXPORT_DTYPES)}')
    if not 0.0 <= config.mix_fraction < 1.0 or (config.mix_fraction > 0) != bool(config.mix_dataset):
        raise FinetuneError('a mixed-in dataset needs a fraction in (0, 1) of each batch, and a '
                            f'fraction needs the dataset (got {config.mix_dataset!r}, {config.mix_fraction})')
    if config.mode == 'qlora' and not torch.cuda.is_available():
        raise FinetuneError('qlora needs a CUDA GPU: its base model is quantised to 4 bits by '
                            "bitsandbytes, whose kernels run on CUDA only; on this machine use "
                            "--mode lora (the same adapters over a float32 base)")
    world = dist.from_env()
    try:
        return _train(checkpoint, dataset_dir, out_dir, config, resume, progress, world)
    finally:
        world.close()


def _train(checkpoint, dataset_dir, out_dir, config: TrainConfig, resume: bool, progress: bool,
           world: dist.World) -> dict:
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out = Path(out_dir)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
    device = world.device
    options = PolicyOptions(dtype='float32', device=device,
                            **({'quantization': '4bit'} if config.mode == 'qlora' else {}))
    policy = load_policy(checkpoint, options)
    model = policy.model
    samples = Samples(policy, Path(dataset_dir), config.dataset_key)
    mixed = Samples(policy, Path(config.mix_dataset), None) if config.mix_dataset else None
    if mixed is not None:
        if mixed.key == samples.key:
            raise FinetuneError(f'the mixed-in dataset {config.mix_dataset} has the statistics key '
                                f'{mixed.key!r} of the training dataset: give it its own')
        if mixed.action_dim != samples.action_dim:
            raise FinetuneError(f'the mixed-in dataset has {mixed.action_dim}-D actions, the '
                                f'dataset {samples.action_dim}-D')
    ckpt_dims = {k: len(v['action']['q01']) for k, v in policy.norm_stats.items()}
    if config.mode != 'full' and samples.action_dim not in ckpt_dims.values():
        raise FinetuneError(f'the checkpoint predicts {sorted(set(ckpt_dims.values()))}-D actions, '
                            f'the dataset has {samples.action_dim}-D actions')
    for p in model.parameters():
        p.requires_grad_(config.mode == 'full')
    if config.mode in ('lora', 'qlora'):
        model = wrap_lora(model, config.lora_rank)
    model.train()
    train_idx, held_idx = split_indices(samples, config.holdout_fraction, config.seed)
    per_draw = min(config.batch_size, len(train_idx))
    if per_draw < world.size:
        raise FinetuneError(f'a micro-batch of {per_draw} samples cannot be shared by '
                            f'{world.size} processes (--batch-size is summed over the processes)')
    strategy = config.distributed
    head = policy.model.language_model.lm_head
    shared = None           # the equal-row projection, decided on the weights training starts from
    wrapped = None
    if world.distributed:
        dim = samples.action_dim
        wrapped = dist.wrap(model, lambda m, *b: action_loss(m, *b, dim, shared), world, strategy)
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel: one pass over each parameter instead of a dozen element-wise ops (a small
    # model's AdamW step on a CPU: 25 -> 4 ms, BENCHMARKS.md); the same update up to rounding
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=True)
    rng = np.random.default_rng(config.seed)
    augment = torch.Generator().manual_seed(config.seed)
    history: dict = {'config': asdict(config), 'train': [], 'heldout': [], 'started_at': time.time()}
    step = 0
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise FinetuneError(f'--resume: no {STATE_FILE} in {out}')
        state = torch.load(state_path, weights_only=False)
        model_state = state['model']
        if config.mode != 'full':
            # adapters only (states written before kept the frozen base too: dropped here)
            wanted = adapter_state(model.state_dict())
            model_state = {k: v for k, v in model_state.items() if k in wanted}
            if model_state.keys() != wanted.keys():
                raise FinetuneError(f'--resume: {state_path} lacks adapter weights of this model '
                                    f'(another --lora-rank or mode?)')
            model.load_state_dict(model_state, strict=False)   # ddp only: replicas are whole
            optimizer.load_state_dict(state['optimizer'])
        else:
            dist.load_full_state(model, optimizer, model_state, state['optimizer'], strategy,
                                 world)
        rng.bit_generator.state = state['rng']
        if 'augment_rng' in state:
            augment.set_state(state['augment_rng'])
        history, step = state['history'], state['step']
    if world.distributed:
        history['world_size'] = world.size
    else:
        history.pop('world_size', None)
    if not (world.distributed and strategy == 'fsdp'):   # FSDP shards the head: it needs it whole
        shared = SharedRows.detect(head.weight, label_token_ids(policy.config))
    eval_module = wrapped if world.distributed and strategy == 'fsdp' else None

    def record_held_out() -> None:
        model.eval()
        held = evaluate(model, samples, held_idx, config.batch_size, eval_module, shared)
        model.train()
        if held:
            history['heldout'].append({'step': step, **held})

    def save() -> None:
        model_state, optimizer_state = dist.full_state(model, optimizer, strategy, world)
        if config.mode != 'full':
            model_state = adapter_state(model_state)   # the base is the start checkpoint's
        if world.is_main:
            _save_state(state_path, model_state, optimizer_state, rng, augment, history, step)

    n_mix = int(round(config.batch_size * config.mix_fraction)) if mixed is not None else 0
    autocast = (torch.autocast('cuda', dtype=torch.bfloat16) if device.startswith('cuda')
                else torch.autocast('cpu', enabled=False))
    bar = _progress(config.steps, step, progress and world.is_main)
    t0 = time.perf_counter()
    spent_before = history.get('train_seconds', 0.0)
    stopped_early = False
    while step < config.steps:
        if config.time_limit_s is not None:
            over = spent_before + time.perf_counter() - t0 >= config.time_limit_s
            if world.any(over and world.is_main) if world.distributed else over:
                stopped_early = True
                break
        for group in optimizer.param_groups:
            group['lr'] = learning_rate_at(step, config)
        optimizer.zero_grad(set_to_none=True)
        total_loss = total_acc = 0.0
        for micro in range(config.grad_accumulation):
            chunk = rng.choice(train_idx, size=min(config.batch_size - n_mix, len(train_idx)), replace=False)
            extra = (mixed, rng.choice(len(mixed), size=min(n_mix, len(mixed)), replace=False)) if n_mix else None
            pixels, ids, labels = samples.batch(chunk, extra)
            pixels = shift_images(pixels, config.augment_shift_px, augment)
            if not world.distributed:
                with autocast:
                    loss, acc = action_loss(model, pixels, ids, labels, samples.action_dim, shared)
                (loss / config.grad_accumulation).backward()
                total_loss += float(loss.detach()) / config.grad_accumulation
                total_acc += float(acc) / config.grad_accumulation
                continue
            rows = len(ids)                      # the drawn samples and the mixed-in ones
            mine = world.share(rows)
            weight = (mine.stop - mine.start) / rows
            sync = (strategy != 'ddp' or micro == config.grad_accumulation - 1)
            with (contextlib.nullcontext() if sync else wrapped.no_sync()), autocast:
                loss, acc = wrapped(pixels[mine], ids[mine], labels[mine])
            # DDP/FSDP average the gradients over the ranks: scale back to the global mean
            (loss * (weight * world.size / config.grad_accumulation)).backward()
            total_loss += float(loss.detach()) * weight / config.grad_accumulation
            total_acc += float(acc) * weight / config.grad_accumulation
        if world.distributed:
            total_loss, total_acc = world.sum([total_loss, total_acc])
        if shared is not None:
            shared.spread_grad(head.weight)
        optimizer.step()
        step += 1
        history['train'].append({'step': step, 'loss': total_loss, 'accuracy': total_acc})
        if bar is not None:
            bar.set_postfix(loss=f'{total_loss:.3f}', acc=f'{total_acc:.2f}')
            bar.update(1)
        if step % config.eval_every == 0 or step == config.steps:
            record_held_out()
        if step % config.save_every == 0 or step == config.steps:
            history['train_seconds'] = spent_before + time.perf_counter() - t0
            save()
    if bar is not None:
        bar.close()
    history['train_seconds'] = spent_before + time.perf_counter() - t0
    history['steps_done'] = step
    if stopped_early:
        history['stopped'] = f'time limit {config.time_limit_s:g} s reached at step {step}'
        record_held_out()
        save()
    model.eval()
    if world.distributed and strategy == 'fsdp':
        merged = dist.full_state(model, optimizer, strategy, world)[0]
    elif config.mode == 'qlora':
        merged = merge_into_full_precision(model, checkpoint, config.lora_rank)
    else:
        merged = model.merge_and_unload() if config.mode != 'full' else model
    if world.is_main:
        exported = export_checkpoint(merged, Path(checkpoint), out / 'checkpoint',
                                     {samples.key: samples.stats},
                                     EXPORT_DTYPES[config.export_dtype])
        write_training_seeds(Path(dataset_dir), exported)
        (out / 'history.json').write_text(json.dumps(history, indent=2))
    world.barrier()
    return history


def adapter_state(state: dict) -> dict:
    """The LoRA adapter entries of a peft model's state dict: what a lora/qlora trainer state
    keeps (the frozen base is the start checkpoint's, reloaded on resume)."""
    return {k: v for k, v in state.items() if 'lora_' in k}


def merge_into_full_precision(peft_model, checkpoint: str | Path, rank: int):
    """The trained adapters merged into the start checkpoint loaded in float32 on the CPU (as
    upstream merges its QLoRA adapters into the unquantised base): merging into the 4-bit base
    would re-quantise the sum and leave bitsandbytes' packed tensors, which no loader reads."""
    adapters = {k: v.detach().float().cpu() for k, v in adapter_state(peft_model.state_dict()).items()}
    base = wrap_lora(load_policy(checkpoint, PolicyOptions(dtype='float32', device='cpu')).model,
                     rank)
    missing = set(adapters) - set(base.state_dict())
    if missing:
        raise FinetuneError(f'adapter weights without a place in the float32 base: {sorted(missing)[:3]}')
    base.load_state_dict(adapters, strict=False)
    return base.merge_and_unload()


def _save_state(path: Path, model_state, optimizer_state, rng, augment, history, step) -> None:
    tmp = path.with_name(path.name + '.partial')
    torch.save({'model': model_state, 'optimizer': optimizer_state,
                'rng': rng.bit_generator.state, 'augment_rng': augment.get_state(),
                'history': history, 'step': step}, tmp)
    tmp.replace(path)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc='finetune', unit='step')


def export_checkpoint(model, source: Path, out: Path, norm_stats: dict,
                      dtype: torch.dtype = torch.bfloat16) -> Path:
    """A checkpoint directory in the Hugging Face layout: the source's config (with the new
    ``norm_stats``), preprocessor and tokenizer files, ``model.safetensors`` and
    ``dataset_statistics.json``. Written beside ``out`` and renamed when complete. ``model``: a
    module, or its state dict."""
    from safetensors.torch import save_file

    staging = out.with_name(out.name + '.partial')
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and not item.name.endswith('.safetensors') and \
                item.name not in ('model.safetensors.index.json', 'dataset_statistics.json'):
            shutil.copyfile(item, staging / item.name)
    config = json.loads((source / 'config.json').read_text())
    config['norm_stats'] = norm_stats
    (staging / 'config.json').write_text(json.dumps(config, indent=2))
    (staging / 'dataset_statistics.json').write_text(json.dumps(norm_stats, indent=2))
    tensors = {module_key_to_checkpoint_key(k): v.detach().to('cpu', dtype).contiguous()
               for k, v in (model if isinstance(model, dict) else model.state_dict()).items()}
    save_file(tensors, str(staging / 'model.safetensors'), metadata={'format': 'pt'})
    if out.exists():
        backup = out.with_name(out.name + '.previous')
        if backup.exists():
            shutil.rmtree(backup)
        out.rename(backup)
    staging.rename(out)
    return out


def write_training_seeds(dataset_dir: Path, checkpoint_dir: Path) -> None:
    """``training_seeds.json`` in the checkpoint: the simulator seeds its demonstrations came from
    (the dataset's ``meta/info.json``), which ``openvla-eval --held-out`` refuses to evaluate on,
    and the camera frame shape it was trained on (``image_shape``, [H, W, 3])."""
    info_path = dataset_dir / INFO_FILE
    if not info_path.is_file():
        return
    info = json.loads(info_path.read_text())
    doc = {}
    if info.get('seeds'):
        doc['seeds'] = [[int(min(info['seeds'])), int(max(info['seeds'])) + 1]]
    if info.get('image_shape'):
        doc['image_shape'] = [int(v) for v in info['image_shape']]
    if doc:
        (checkpoint_dir / TRAINING_SEEDS_FILE).write_text(json.dumps(doc))


def count_parameters(model) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
