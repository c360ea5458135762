"""openvla-finetune: train an OpenVLA checkpoint on a dataset built by openvla-dataset.

Upstream's objective (next-token cross-entropy on the action tokens and EOS only), on the native
model through the same image pipeline, tokenizer and prompt that inference uses. Starts from any
local OpenVLA checkpoint (``--checkpoint``) or from a fresh small configuration (``--small
IMAGE_SIZE``). Writes ``OUT/trainer_state.pt`` (``--resume`` continues from it), ``OUT/history.json``
and the merged Hugging Face-layout checkpoint ``OUT/checkpoint`` that openvla-eval, vla_node and
openvla-serve load.

Several processes: ``torchrun --nproc-per-node N -m openvla_ros.cli.finetune ...`` (nccl, one GPU
each; gloo on CPU), ``--distributed ddp`` or ``fsdp``; the global micro-batch is ``--batch-size``
whatever N is (each process takes its share), and only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openvla_ros.policy.options import OPTIONAL, add_checkpoint_argument, fail

DEFAULT_SMALL_SEED = 0


def build_parser() -> argparse.ArgumentParser:
    from openvla_ros.learning.distributed import STRATEGIES
    from openvla_ros.learning.finetune import EXPORT_DTYPES, LR_SCHEDULES, MODES, TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog='openvla-finetune', description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    start = p.add_mutually_exclusive_group(required=True)
    add_checkpoint_argument(start, need=OPTIONAL)
    start.add_argument('--small', type=int, metavar='IMAGE_SIZE', default=None,
                       help='start from a fresh small OpenVLA-architecture model with this square '
                            'image size (a multiple of --small-patch), written to OUT/init')
    p.add_argument('--small-patch', type=int, default=None, metavar='PIXELS',
                   help="ViT patch size of the fresh small model (--small; default upstream's 14)")
    p.add_argument('--dataset', type=Path, required=True, help='dataset directory (openvla-dataset build)')
    p.add_argument('--out', type=Path, required=True, help='output directory')
    p.add_argument('--mix-dataset', type=Path, default=None, metavar='DIR',
                   help='a second dataset with its own statistics key (e.g. openvla-dataset grounding scenes) '
                        'drawn into every batch; held-out figures and the export are the --dataset\'s')
    p.add_argument('--mix-fraction', type=float, default=d.mix_fraction,
                   help='share of each batch drawn from --mix-dataset')
    p.add_argument('--mode', choices=MODES, default=d.mode,
                   help='full fine-tune, LoRA (peft, every linear layer but lm_head) or QLoRA '
                        '(4-bit base, CUDA only)')
    p.add_argument('--lora-rank', type=int, default=d.lora_rank, help='LoRA rank (alpha = min(rank, 16))')
    p.add_argument('--steps', type=int, default=d.steps,
                   help="optimizer steps (0: export the start checkpoint with the dataset's "
                        'statistics, the untrained control)')
    p.add_argument('--time-limit-min', type=float, default=None,
                   help='stop early, and export, after this many minutes of training')
    p.add_argument('--batch-size', type=int, default=d.batch_size, help='samples per micro-batch (over all processes under torchrun)')
    p.add_argument('--grad-accumulation', type=int, default=d.grad_accumulation,
                   help='micro-batches per optimizer step')
    p.add_argument('--learning-rate', type=float, default=d.learning_rate, help='AdamW learning rate')
    p.add_argument('--lr-schedule', choices=LR_SCHEDULES, default=d.lr_schedule, help='rate schedule')
    p.add_argument('--warmup-steps', type=int, default=d.warmup_steps, help='linear warm-up steps')
    p.add_argument('--weight-decay', type=float, default=d.weight_decay, help='AdamW weight decay')
    p.add_argument('--augment-shift-px', type=int, default=d.augment_shift_px,
                   help='random image shift augmentation, in model-input pixels (0: off)')
    p.add_argument('--holdout-fraction', type=float, default=d.holdout_fraction,
                   help='fraction of episodes held out for the validation loss and accuracy')
    p.add_argument('--eval-every', type=int, default=d.eval_every, help='held-out evaluation period, steps')
    p.add_argument('--save-every', type=int, default=d.save_every, help='trainer-state period, steps')
    p.add_argument('--seed', type=int, default=d.seed, help='seed of the initialisation, sampling and split')
    p.add_argument('--threads', type=int, default=d.threads, help='CPU threads')
    p.add_argument('--dataset-key', default=None,
                   help='statistics key of the dataset (default: its first)')
    p.add_argument('--distributed', choices=STRATEGIES, default=d.distributed,
                   help='under torchrun (several processes): DDP (replicas), or FSDP (sharded '
                        'weights, gradients and optimizer state; full fine-tunes). --batch-size '
                        'is then summed over the processes, so any number of them follows the '
                        'same run')
    p.add_argument('--export-dtype', choices=sorted(EXPORT_DTYPES), default=d.export_dtype,
                   help='weight dtype of the exported checkpoint')
    p.add_argument('--resume', action='store_true', help='continue the run in --out')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 0 or args.batch_size < 1 or args.grad_accumulation < 1:
        return fail('--steps must be >= 0, --batch-size and --grad-accumulation >= 1', 2)
    if not (args.dataset / 'dataset_statistics.json').is_file():
        return fail(f'{args.dataset}: not a dataset (no dataset_statistics.json); build it with '
                    'openvla-dataset build', 2)
    from openvla_ros.learning.distributed import from_env

    world = from_env()     # under torchrun: joins the group here, so rank 0 alone writes OUT/init
    try:
        return _run(args, world)
    finally:
        world.close()


def _run(args, world) -> int:
    from openvla_ros.learning.dataset import DatasetError
    from openvla_ros.learning.finetune import FinetuneError, TrainConfig, train

    checkpoint = args.checkpoint
    if args.small is not None:
        from openvla_ros.learning.small import make_small_checkpoint

        checkpoint = args.out / 'init'
        if world.is_main and not (checkpoint / 'config.json').is_file():
            try:
                patch = {} if args.small_patch is None else {'patch_size': args.small_patch}
                make_small_checkpoint(checkpoint, image_size=args.small, seed=args.seed, **patch)
            except ValueError as exc:
                return fail(f'--small: {exc}', 2)
        world.barrier()
    elif not (checkpoint / 'config.json').is_file():
        return fail(f'{checkpoint}: not a checkpoint directory (no config.json)', 2)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, grad_accumulation=args.grad_accumulation,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay,
        holdout_fraction=args.holdout_fraction, seed=args.seed, mode=args.mode,
        lora_rank=args.lora_rank, eval_every=args.eval_every, save_every=args.save_every,
        threads=args.threads, dataset_key=args.dataset_key, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, augment_shift_px=args.augment_shift_px,
        time_limit_s=None if args.time_limit_min is None else args.time_limit_min * 60.0,
        distributed=args.distributed, export_dtype=args.export_dtype,
        mix_dataset=None if args.mix_dataset is None else str(args.mix_dataset),
        mix_fraction=args.mix_fraction)
    try:
        history = train(checkpoint, args.dataset, args.out, config, resume=args.resume,
                        progress=not args.no_progress)
    except (FinetuneError, DatasetError) as exc:
        return fail(str(exc), 2)
    if not world.is_main:
        return 0
    last = history['train'][-1] if history['train'] else {}
    held = history['heldout'][-1] if history['heldout'] else {}
    print(json.dumps({'checkpoint': str(args.out / 'checkpoint'), 'steps': history.get('steps_done'),
                      'train_seconds': round(history['train_seconds'], 1),
                      'train_loss': last.get('loss'), 'train_accuracy': last.get('accuracy'),
                      'heldout': held, 'stopped': history.get('stopped')}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
