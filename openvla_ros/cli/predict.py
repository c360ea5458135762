"""openvla-predict: run a local OpenVLA checkpoint on images from files, print JSON lines.

One request:  openvla-predict --checkpoint DIR --image scene.png --instruction "pick up the cup"
              [--unnorm-key bridge_orig]
Many:         openvla-predict --checkpoint DIR --jsonl requests.jsonl   ('-' reads stdin)
              each line {"image": path, "instruction": str, "unnorm_key": str (optional)}.

Each result is one JSON line with action, normalized_action, action_token_ids, unnorm_key and
timings (seconds). Bad input exits non-zero with a one-line error on stderr; with --jsonl a bad
line prints {"error": ...} and the run goes on, exiting non-zero at the end.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from openvla_ros.policy.options import (CHECKPOINT_DEFAULT, add_checkpoint_argument, add_policy_arguments,
                                        add_unnorm_key_argument, fail, policy_options)
from openvla_ros.engine.api import OpenVLAError


def read_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert('RGB'))
    except FileNotFoundError:
        raise OpenVLAError(f'image file {path} not found') from None
    except (UnidentifiedImageError, OSError) as exc:
        raise OpenVLAError(f'cannot read image {path}: {exc}') from None


def _predict_one(policy, image_path, instruction, unnorm_key) -> dict:
    result = policy.predict(read_image(image_path), instruction, unnorm_key)
    return {'image': str(image_path), **result.to_dict()}


def _run_jsonl(policy, stream, out) -> int:
    failures = 0
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or 'image' not in request or 'instruction' not in request:
                raise OpenVLAError('each line must be an object with "image" and "instruction"')
            record = _predict_one(policy, request['image'], request['instruction'],
                                  request.get('unnorm_key'))
        except (OpenVLAError, ValueError) as exc:
            failures += 1
            record = {'line': number, 'error': str(exc)}
        out.write(json.dumps(record) + '\n')
        out.flush()
    if failures:
        print(f'error: {failures} request(s) failed', file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='openvla-predict', description=__doc__.split('\n')[0])
    add_checkpoint_argument(parser)
    parser.add_argument('--image', help='RGB image file')
    parser.add_argument('--instruction', help='task instruction, e.g. "put the carrot on the plate"')
    add_unnorm_key_argument(parser, CHECKPOINT_DEFAULT)
    parser.add_argument('--jsonl', help="file of JSON requests, one per line ('-': stdin)")
    add_policy_arguments(parser)
    args = parser.parse_args(argv)
    single = args.image is not None or args.instruction is not None
    if single == (args.jsonl is not None):
        return fail('give either --image and --instruction, or --jsonl', 2)
    if single and (args.image is None or args.instruction is None):
        return fail('--image and --instruction go together', 2)

    from openvla_ros.engine import load_policy

    try:
        policy = load_policy(args.checkpoint, policy_options(args))
    except OpenVLAError as exc:
        return fail(str(exc))
    except (OSError, MemoryError, RuntimeError) as exc:
        # unreadable files, an allocation the estimate did not foresee, a device error
        return fail(f'cannot load {args.checkpoint}: {type(exc).__name__}: {exc}')
    try:
        if single:
            try:
                record = _predict_one(policy, args.image, args.instruction, args.unnorm_key)
            except (OpenVLAError, ValueError) as exc:
                return fail(str(exc))
            print(json.dumps(record))
            return 0
        if args.jsonl == '-':
            return _run_jsonl(policy, sys.stdin, sys.stdout)
        try:
            stream = open(args.jsonl)
        except OSError as exc:
            return fail(f'cannot open {args.jsonl}: {exc.strerror}')
        with stream:
            return _run_jsonl(policy, stream, sys.stdout)
    finally:
        policy.close()


if __name__ == '__main__':
    sys.exit(main())
