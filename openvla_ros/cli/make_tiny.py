"""openvla-make-tiny: write a tiny random OpenVLA checkpoint (real layout) for tests and demos."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openvla_ros.policy.options import fail

# Files a checkpoint directory may hold; --force removes these (and only these) first, so a
# stale shard index cannot shadow the new weights.
_CHECKPOINT_GLOBS = ('model*.safetensors', 'model.safetensors.index.json', 'config.json',
                     'preprocessor_config.json', 'generation_config.json', 'tokenizer*.json',
                     'special_tokens_map.json', 'dataset_statistics.json')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='openvla-make-tiny', description=__doc__)
    parser.add_argument('out_dir', type=Path, help='directory to create')
    parser.add_argument('--seed', type=int, default=0, help='random seed (same seed, same weights)')
    parser.add_argument('--shards', type=int, default=1,
                        help='write N safetensors shards plus model.safetensors.index.json')
    parser.add_argument('--variant', choices=('openvla', 'v01'), default='openvla',
                        help="layout: 'openvla' (DINOv2+SigLIP, openvla-7b) or 'v01' (SigLIP only)")
    parser.add_argument('--force', action='store_true', help='overwrite a non-empty directory')
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    if args.shards < 1:
        return fail('--shards must be at least 1', 2)
    if out.exists() and not out.is_dir():
        return fail(f'{out} exists and is not a directory')
    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            return fail(f'{out} is not empty; use --force to overwrite')
        for pattern in _CHECKPOINT_GLOBS:
            for path in out.glob(pattern):
                path.unlink()

    from openvla_ros.engine.tiny import make_tiny_checkpoint

    try:
        path = make_tiny_checkpoint(out, seed=args.seed, shards=args.shards, variant=args.variant)
    except OSError as exc:
        return fail(f'cannot write {out}: {exc}')
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
