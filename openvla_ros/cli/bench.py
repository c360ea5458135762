"""openvla-bench: latency per stage, actions per second and peak memory of the engine.

  openvla-bench --synthetic mid --iterations 20            (random weights, no download)
  openvla-bench --checkpoint DIR --device cuda --dtype bfloat16 [--quantization 8bit|4bit]
  openvla-bench --synthetic full --device cuda --dtype bfloat16   (exact openvla-7b shapes)

Stages: preprocess, vision, projector, prefill, each decode step, decode-to-action (decode +
postprocess), total. The same language model is also run through transformers' stock
``LlamaForCausalLM.generate(inputs_embeds=..., do_sample=False)`` on the same spliced embeddings
(sharing the weights, no copy) and the ratio of the two is reported. Peak memory: CUDA
``max_memory_allocated``; CPU: peak resident set size of the process.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from openvla_ros.policy.options import add_policy_arguments, fail, policy_options
from openvla_ros.defaults import DEFAULT_UNNORM_KEY
from openvla_ros.engine.api import OpenVLAError

INSTRUCTION = 'put the carrot on the plate'


def bench_scene(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic camera-sized frame (shapes on a textured table)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = rng.integers(60, 200, 3)
    img += rng.integers(0, 20, (height, width, 1), dtype=np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, height - 80), rng.integers(0, width - 80)
        img[y:y + 80, x:x + 80] = rng.integers(0, 256, 3)
    return img


def trace_frames(n: int) -> list[np.ndarray]:
    """A short trace of camera frames that change a little from one to the next, like a scene
    seen at 5 Hz while the arm moves."""
    base = bench_scene().astype(np.int16)
    return [np.clip(np.roll(base, shift=3 * i, axis=1) + (i % 3), 0, 255).astype(np.uint8)
            for i in range(n)]


def run_speculative(policy, n_frames: int, rounds: int) -> dict:
    """Speculative decoding (draft = the previous frame's action) against plain greedy decoding,
    interleaved frame by frame in one run so both see the same machine load.

    Also compares the logits of the verification pass (several tokens in one forward) with those
    of plain one-token steps: a step whose top-1/top-2 margin is below twice their difference is
    a near-tie that rounding could flip."""
    import torch

    keys = policy.unnorm_keys()
    key = DEFAULT_UNNORM_KEY if DEFAULT_UNNORM_KEY in keys else next(iter(keys))
    frames = trace_frames(n_frames)
    plain_t, spec_t, accepted, passes = [], [], [], []
    same = True
    for _ in range(rounds):
        draft = None
        for image in frames:
            p = policy.predict(image, INSTRUCTION, key)
            s = policy.predict(image, INSTRUCTION, key, draft_token_ids=draft)
            same &= p.action_token_ids.tolist() == s.action_token_ids.tolist()
            if draft is not None:
                plain_t.append(p.timings['prefill'] + p.timings['decode'])
                spec_t.append(s.timings['prefill'] + s.timings['decode'])
                accepted.append(s.draft_tokens_accepted)
                passes.append(policy.last_forward_passes)
            draft = p.action_token_ids.tolist()
    # near ties, on the draft that is right in full (the longest verification pass)
    steps = keys[key]
    margins, diffs, flips = [], [], 0
    for image in frames:
        pixels = policy.pixel_values(image)[None]
        ids = [policy.prompt_token_ids(INSTRUCTION)]
        tokens, plain_logits, _ = policy.generate(pixels, ids, steps, return_logits=True)
        _, spec_logits, _ = policy.generate(pixels, ids, steps, return_logits=True,
                                            drafts=[tokens[0].tolist()])
        for a, b in zip(plain_logits, spec_logits):
            top2 = torch.topk(a[0], 2).values
            margins.append(float(top2[0] - top2[1]))
            diffs.append(float((a[0] - b[0]).abs().max()))
            flips += int(a[0].argmax() != b[0].argmax())
    near = sum(m < 2 * d for m, d in zip(margins, diffs))
    return {
        'frames': n_frames, 'rounds': rounds, 'actions': len(accepted), 'same_tokens': same,
        'acceptance': sum(accepted) / (steps * len(accepted)) if accepted else None,
        'all_accepted_share': sum(a >= steps - 1 for a in accepted) / len(accepted) if accepted else None,
        'mean_forward_passes': statistics.mean(passes) if passes else None,
        'plain_lm': _summary(plain_t), 'speculative_lm': _summary(spec_t),
        'speedup_lm': statistics.median(plain_t) / statistics.median(spec_t) if spec_t else None,
        'near_ties': {'steps': len(margins), 'max_logit_difference': max(diffs),
                      'smallest_margin': min(margins), 'margin_below_2x_difference': near,
                      'argmax_flips': flips},
    }


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {'median_ms': 1000 * statistics.median(ordered),
            'p90_ms': 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            'min_ms': 1000 * ordered[0]}


def _peak_memory(policy) -> dict:
    import torch

    if policy.device.type == 'cuda':
        return {'kind': 'cuda max_memory_allocated',
                'bytes': int(torch.cuda.max_memory_allocated(policy.device))}
    # ru_maxrss is in KiB on Linux
    return {'kind': 'cpu peak RSS', 'bytes': int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def _hf_language_model(policy):
    """transformers' LlamaForCausalLM sharing the policy's language-model weights (no copy)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    text = policy.config.text
    cfg = LlamaConfig(vocab_size=text.vocab_size, hidden_size=text.hidden_size,
                      intermediate_size=text.intermediate_size,
                      num_hidden_layers=text.num_hidden_layers,
                      num_attention_heads=text.num_attention_heads,
                      num_key_value_heads=text.num_key_value_heads,
                      max_position_embeddings=text.max_position_embeddings,
                      rms_norm_eps=text.rms_norm_eps, rope_theta=text.rope_theta,
                      tie_word_embeddings=False, bos_token_id=text.bos_token_id,
                      eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id)
    cfg._attn_implementation = 'sdpa'
    with torch.device('meta'):
        hf = LlamaForCausalLM(cfg)
    hf.load_state_dict(policy.model.language_model.state_dict(), strict=True, assign=True)
    with torch.device(policy.device):
        hf.model.rotary_emb = LlamaRotaryEmbedding(cfg)
    return hf.eval()


def run_benchmark(policy, iterations: int, warmup: int, baseline: bool = True) -> dict:
    import torch

    image = bench_scene()
    keys = policy.unnorm_keys()
    key = DEFAULT_UNNORM_KEY if DEFAULT_UNNORM_KEY in keys else next(iter(keys))
    steps = keys[key]
    if policy.device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(policy.device)
    for _ in range(warmup):
        policy.predict(image, INSTRUCTION, key)
    stages: dict[str, list[float]] = {}
    for _ in range(iterations):
        timings = policy.predict(image, INSTRUCTION, key).timings
        timings['decode_to_action'] = timings['decode'] + timings['postprocess']
        for name, value in timings.items():
            stages.setdefault(name, []).append(value)

    pixels = policy.pixel_values(image)[None]
    ids = [policy.prompt_token_ids(INSTRUCTION)]
    per_step: list[list[float]] = [[] for _ in range(steps - 1)]
    ours_lm: list[float] = []
    ours_tokens = None
    for _ in range(iterations):
        step_times: list[float] = []
        ours_tokens, _, times = policy.generate(pixels, ids, steps, step_times=step_times)
        for i, t in enumerate(step_times):
            per_step[i].append(t)
        ours_lm.append(times['prefill'] + times['decode'])

    result = {
        'model': policy.describe(),
        'iterations': iterations, 'warmup': warmup, 'action_dim': steps,
        'stages': {name: _summary(values) for name, values in stages.items()},
        'decode_steps': [_summary(v) for v in per_step],
        'actions_per_s': 1.0 / statistics.median(stages['total']),
        'peak_memory': _peak_memory(policy),
    }
    if baseline and policy.options.quantization == 'none':
        result['baseline'] = _baseline(policy, pixels, ids, steps, iterations, warmup, ours_lm,
                                       ours_tokens)
    elif baseline:
        result['baseline'] = {'skipped': 'the generate() comparison runs unquantized models only'}
    return result


def _baseline(policy, pixels, ids, steps, iterations, warmup, ours_lm, ours_tokens) -> dict:
    import torch

    from openvla_ros.engine.modeling import splice_image

    hf = _hf_language_model(policy)
    model = policy.model
    sync = (lambda: torch.cuda.synchronize(policy.device)) if policy.device.type == 'cuda' else (lambda: None)
    with torch.inference_mode():
        patches = model.projector(model.vision_backbone(pixels.to(policy.device, policy.dtype)))
        token_tensor = torch.tensor(ids, dtype=torch.long, device=policy.device)
        embeds = splice_image(model.language_model.model.embed_tokens(token_tensor), patches)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=policy.device)
        times, generated = [], None
        for i in range(warmup + iterations):
            sync()
            start = time.perf_counter()
            generated = hf.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=steps,
                                    min_new_tokens=steps, do_sample=False,
                                    pad_token_id=policy.tokenizer.pad_token_id)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    hf_tokens = generated[0, -steps:].cpu()
    return {
        'generate_prefill_plus_decode': _summary(times),
        'engine_prefill_plus_decode': _summary(ours_lm),
        'speedup': statistics.median(times) / statistics.median(ours_lm),
        'same_tokens': bool(torch.equal(hf_tokens, ours_tokens[0])),
    }


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return f'{model}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}'


def format_report(r: dict) -> str:
    m = r['model']
    lines = [f"model {m['model_id']} ({m['parameter_count']:,} parameters), {m['dtype']} on "
             f"{m['device']}, quantization {m['quantization']}",
             f"machine: {r['machine']}",
             f"{r['iterations']} iterations after {r['warmup']} warm-up",
             f"{'stage':<18}{'median ms':>11}{'p90 ms':>10}"]
    for name in ('preprocess', 'vision', 'projector', 'prefill', 'decode', 'decode_to_action',
                 'postprocess', 'total'):
        s = r['stages'][name]
        lines.append(f'{name:<18}{s["median_ms"]:>11.2f}{s["p90_ms"]:>10.2f}')
    for i, s in enumerate(r['decode_steps'], start=1):
        lines.append(f'{"decode step " + str(i):<18}{s["median_ms"]:>11.2f}{s["p90_ms"]:>10.2f}')
    lines.append(f"actions per second: {r['actions_per_s']:.2f}")
    pm = r['peak_memory']
    lines.append(f"peak memory ({pm['kind']}): {pm['bytes'] / 2**20:.0f} MiB")
    b = r.get('baseline')
    if b and 'skipped' not in b:
        lines.append(f"LM prefill+decode: engine {b['engine_prefill_plus_decode']['median_ms']:.2f} ms, "
                     f"transformers generate() {b['generate_prefill_plus_decode']['median_ms']:.2f} ms "
                     f"-> {b['speedup']:.2f}x; same tokens: {b['same_tokens']}")
    elif b:
        lines.append(f"baseline: {b['skipped']}")
    sp = r.get('speculative')
    if sp:
        nt = sp['near_ties']
        lines.append(f"speculative (draft = previous action, {sp['actions']} actions): acceptance "
                     f"{sp['acceptance']:.1%}, all accepted {sp['all_accepted_share']:.1%}, "
                     f"{sp['mean_forward_passes']:.2f} forward passes per action; LM prefill+decode "
                     f"plain {sp['plain_lm']['median_ms']:.2f} ms vs speculative "
                     f"{sp['speculative_lm']['median_ms']:.2f} ms -> {sp['speedup_lm']:.2f}x; "
                     f"same tokens: {sp['same_tokens']}")
        lines.append(f"near ties: {nt['margin_below_2x_difference']}/{nt['steps']} steps with a "
                     f"top-2 margin below twice the multi- vs one-token logit difference (max "
                     f"{nt['max_logit_difference']:.2e}), argmax flips {nt['argmax_flips']}")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='openvla-bench', description=__doc__.split('\n')[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', type=Path, help='local OpenVLA checkpoint directory')
    source.add_argument('--synthetic', choices=('tiny', 'mid', 'full'),
                        help='random weights with preset shapes (full = exact openvla-7b)')
    parser.add_argument('--iterations', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--no-baseline', action='store_true',
                        help="skip the transformers generate() comparison")
    parser.add_argument('--json', action='store_true', help='print one JSON object')
    parser.add_argument('--speculative-trace', type=int, default=0, metavar='FRAMES',
                        help='also compare speculative decoding (draft = previous action) with '
                             'plain decoding, interleaved, on a trace of this many frames')
    parser.add_argument('--speculative-rounds', type=int, default=3,
                        help='passes over the speculative trace')
    add_policy_arguments(parser)
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        return fail('--iterations must be >= 1 and --warmup >= 0', 2)

    from openvla_ros.engine import load_policy
    from openvla_ros.engine.synthetic import synthetic_policy

    try:
        options = policy_options(args)
        if args.speculative_trace:
            options.speculative = True   # only predictions given a draft decode speculatively
        policy = (synthetic_policy(args.synthetic, options) if args.synthetic
                  else load_policy(args.checkpoint, options))
    except OpenVLAError as exc:
        return fail(str(exc))
    try:
        report = run_benchmark(policy, args.iterations, args.warmup, baseline=not args.no_baseline)
        if args.speculative_trace:
            report['speculative'] = run_speculative(policy, args.speculative_trace,
                                                    args.speculative_rounds)
    finally:
        policy.close()
    report['machine'] = machine_description()
    report['command'] = 'openvla-bench ' + ' '.join(sys.argv[1:] if argv is None else argv)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
