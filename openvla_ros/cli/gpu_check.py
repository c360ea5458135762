"""One prepared measurement of the engine on a GPU (or, small, on CPU): every decode mode on the
same random-weight model, the server under 1/4/8 clients, one JSON file and a markdown table.

    tools/gpu_check.sh                                   (full-size openvla-7b shapes on cuda)
    tools/gpu_check.sh --device cpu --preset tiny --budget-s 50

Modes: eager (bf16 on CUDA, float32 on CPU, the reference), compiled (``compile=True``; whether
CUDA graphs were captured comes from the inductor counters and logs), speculative (the previous
frame's action as the draft), bitsandbytes 8bit and 4bit, torchao-int8 and torchao-int4. Every
mode decodes the same frames with the same weights (one seed), so the token agreement with the
reference is meaningful. A mode that fails is reported with its error and the rest still run; a
mode that would start after the overall budget is skipped. With ``--isolate`` (the default on
CUDA) each mode runs in its own process with a deadline, so a hang or a CUDA fault costs one mode.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

MODES = ('eager', 'compiled', 'speculative', '8bit', '4bit', 'torchao-int8', 'torchao-int4')
PACKAGES = ('torch', 'numpy', 'timm', 'safetensors', 'tokenizers', 'PIL', 'bitsandbytes',
            'torchao', 'fastapi', 'uvicorn', 'requests')
INSTRUCTION = 'put the carrot on the plate'
UNNORM_KEY = 'bridge_orig'
STAGES = ('preprocess', 'vision', 'projector', 'prefill', 'decode', 'postprocess', 'total')
# a mode is not started with less than this left of the budget (load + compile + measure)
MIN_MODE_S = {'cuda': 40.0, 'cpu': 3.0}


def missing_packages() -> list[str]:
    missing = []
    for name in PACKAGES:
        try:
            importlib.import_module(name)
        except Exception:   # a broken install counts as missing, whatever it raises
            missing.append(name)
    return missing


def mode_options(mode: str, device: str):
    from openvla_ros.engine import PolicyOptions

    dtype = 'bfloat16' if device.startswith('cuda') else 'float32'
    kw = {'dtype': dtype, 'device': device}
    if mode == 'compiled':
        kw['compile'] = True
    elif mode == 'speculative':
        kw['speculative'] = True
    elif mode in ('8bit', '4bit', 'torchao-int8', 'torchao-int4'):
        kw['quantization'] = mode
        if mode == '4bit':
            kw['bnb_4bit_compute_dtype'] = dtype
    return PolicyOptions(**kw)


class _CudagraphLog(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        text = record.getMessage()
        if 'cudagraph' in text.lower() or 'cuda graph' in text.lower():
            self.lines.append(text[:300])


def run_mode(mode: str, device: str, preset: str, iterations: int, n_frames: int) -> dict:
    """Load ``preset`` in ``mode`` and measure it; raises on failure (the caller reports it)."""
    import torch
    from torch._dynamo.utils import counters

    from openvla_ros.cli.bench import trace_frames
    from openvla_ros.engine.synthetic import synthetic_policy

    cuda = device.startswith('cuda')
    log = _CudagraphLog()
    if mode == 'compiled':
        try:
            torch._logging.set_logs(perf_hints=True, cudagraphs=True)
        except Exception:   # the logging names change between torch versions; counters remain
            pass
        logging.getLogger('torch').addHandler(log)
        counters.clear()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    policy = synthetic_policy(preset, mode_options(mode, device), seed=0,
                              workdir=tempfile.mkdtemp(prefix='openvla-gpu-check-'))
    load_s = time.perf_counter() - t0
    try:
        trace = trace_frames(n_frames)
        stages: dict[str, list[float]] = {}
        tokens, accepted = [], []
        draft = None
        # warm-up: first calls allocate, autotune, and (compiled) record the graphs
        for image in trace[:2]:
            policy.predict(image, INSTRUCTION, UNNORM_KEY)
        for it in range(iterations):
            for image in trace:
                r = policy.predict(image, INSTRUCTION, UNNORM_KEY,
                                   draft_token_ids=draft if mode == 'speculative' else None)
                if mode == 'speculative':
                    if draft is not None:
                        accepted.append(r.draft_tokens_accepted)
                    draft = r.action_token_ids.tolist()
                if it == 0:
                    tokens.append(r.action_token_ids.tolist())
                for name in STAGES:
                    stages.setdefault(name, []).append(r.timings[name])
        result = {
            'mode': mode, 'ok': True, 'model': policy.describe(), 'load_s': load_s,
            'stages_ms': {k: 1000 * statistics.median(v) for k, v in stages.items()},
            'actions_per_s': 1.0 / statistics.median(stages['total']),
            'tokens': tokens,
        }
        if cuda:
            result['peak_memory_gib'] = torch.cuda.max_memory_allocated() / 2**30
        if accepted:
            result['draft_acceptance'] = sum(accepted) / (7 * len(accepted))
            result['draft_accepted_tokens'] = accepted
        if mode == 'compiled':
            inductor = dict(counters.get('inductor', {}))
            skips = int(inductor.get('cudagraph_skips', 0))
            result['cudagraphs'] = {
                'captured': bool(cuda and skips == 0),
                'cudagraph_skips': skips,
                'log': log.lines[-20:],
                'graphs_compiled': int(counters['stats'].get('unique_graphs', 0)),
            }
        return result
    finally:
        logging.getLogger('torch').removeHandler(log)
        policy.close()
        del policy
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def run_server(device: str, preset: str, clients: list[int], duration_s: float) -> dict:
    """openvla-serve's app in this process on a loopback port, eager mode, batching up to 8."""
    import uvicorn

    from openvla_ros.engine.synthetic import synthetic_policy
    from openvla_ros.server import loadtest
    from openvla_ros.server.app import ServerConfig, create_app
    from openvla_ros.server.cli import uvicorn_config
    from openvla_ros.server.process import free_port

    policy = synthetic_policy(preset, mode_options('eager', device), seed=0,
                              workdir=tempfile.mkdtemp(prefix='openvla-gpu-check-'))
    config = ServerConfig(max_batch=max(clients))
    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(policy, config), config, '127.0.0.1', port,
                                           log_level='warning'))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError('the server did not start')
            time.sleep(0.05)
        url = f'http://127.0.0.1:{port}'
        rows = [loadtest.measure(url, n, duration_s, unnorm_key=UNNORM_KEY,
                                 warmup_s=min(2.0, duration_s)) for n in clients]
        return {'mode': 'server', 'ok': True, 'rows': rows}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        policy.close()


def _agreement(reference: list[list[int]], tokens: list[list[int]]) -> float | None:
    if not reference or len(reference) != len(tokens):
        return None
    same = sum(a == b for ra, rb in zip(reference, tokens) for a, b in zip(ra, rb))
    return same / sum(len(r) for r in reference)


def _failure(mode: str, exc: BaseException) -> dict:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {'mode': mode, 'ok': False, 'error': f'{type(exc).__name__}: {exc}'[:500],
            'traceback_tail': ''.join(lines)[-1500:]}


def _one_mode_in_subprocess(args, mode: str, timeout_s: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix='openvla-gpu-check-')) / f'{mode}.json'
    cmd = [sys.executable, '-m', 'openvla_ros.cli.gpu_check', '--device', args.device,
           '--preset', args.preset, '--iterations', str(args.iterations), '--frames',
           str(args.frames), '--server-duration-s', str(args.server_duration_s),
           '--clients', *map(str, args.clients), '--only', mode, '--only-out', str(out)]
    try:
        proc = subprocess.run(cmd, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {'mode': mode, 'ok': False, 'error': f'did not finish within {timeout_s:.0f} s '
                                                    '(budget left for it)'}
    if out.is_file():
        return json.loads(out.read_text())
    return {'mode': mode, 'ok': False, 'error': f'exited with {proc.returncode}',
            'stderr_tail': proc.stderr[-1500:]}


def _run_one(args, mode: str) -> dict:
    try:
        if mode == 'server':
            return run_server(args.device, args.preset, args.clients, args.server_duration_s)
        return run_mode(mode, args.device, args.preset, args.iterations, args.frames)
    except Exception as exc:   # fail soft: this mode is reported, the others still run
        return _failure(mode, exc)


def environment(device: str) -> dict:
    info = {'python': sys.executable, 'python_version': sys.version.split()[0],
            'missing_packages': missing_packages()}
    try:
        import torch

        info['torch'] = torch.__version__
        info['cuda_available'] = bool(torch.cuda.is_available())
        if device.startswith('cuda') and torch.cuda.is_available():
            info['gpu'] = torch.cuda.get_device_name(0)
            info['cuda'] = torch.version.cuda
    except Exception as exc:
        info['torch_error'] = str(exc)
    try:
        from openvla_ros.cli.bench import machine_description

        info['machine'] = machine_description()
    except Exception:
        pass
    return info


def markdown(report: dict) -> str:
    env = report['environment']
    lines = [f"Machine: {env.get('machine', '?')}; preset `{report['preset']}` on "
             f"`{report['device']}`; {report['iterations']} passes over {report['frames']} frames "
             f"per mode; {report['elapsed_s']:.0f} s in all.", '',
             '| mode | prefill ms | decode ms | total ms | actions/s | peak GiB | tokens = eager | notes |',
             '|---|---:|---:|---:|---:|---:|---:|---|']
    for r in report['modes']:
        if r['mode'] == 'server':
            continue
        if not r.get('ok'):
            lines.append(f"| {r['mode']} | | | | | | | {r.get('error', 'failed')[:120]} |")
            continue
        s = r['stages_ms']
        notes = []
        if 'cudagraphs' in r:
            notes.append(f"CUDA graphs captured: {r['cudagraphs']['captured']}")
        if 'draft_acceptance' in r:
            notes.append(f"draft acceptance {r['draft_acceptance']:.0%}")
        agree = r.get('agreement')
        peak = r.get('peak_memory_gib')
        lines.append(f"| {r['mode']} | {s['prefill']:.1f} | {s['decode']:.1f} | {s['total']:.1f} | "
                     f"{r['actions_per_s']:.2f} | {'' if peak is None else f'{peak:.1f}'} | "
                     f"{'' if agree is None else f'{agree:.1%}'} | {'; '.join(notes)} |")
    server = next((r for r in report['modes'] if r['mode'] == 'server'), None)
    if server:
        lines += ['', 'Server (`openvla-serve` app, eager, batching):', '']
        if server.get('ok'):
            lines += ['| clients | actions/s | p50 ms | p95 ms | mean batch | errors |',
                      '|---:|---:|---:|---:|---:|---:|']
            for row in server['rows']:
                lines.append(f"| {row['clients']} | {row['actions_per_s']:.1f} | "
                             f"{1e3 * row['latency_p50_s']:.0f} | {1e3 * row['latency_p95_s']:.0f} | "
                             f"{row['mean_batch_size']:.2f} | {row['errors']} |")
        else:
            lines.append(f"server: {server.get('error')}")
    if env.get('missing_packages'):
        lines += ['', f"Missing packages: {', '.join(env['missing_packages'])}"]
    return '\n'.join(lines) + '\n'


def _write(args, env: dict, results: list[dict], start: float) -> str:
    reference = next((r['tokens'] for r in results if r['mode'] == 'eager' and r.get('ok')), None)
    for r in results:
        if r.get('ok') and 'tokens' in r:
            r['agreement'] = _agreement(reference, r['tokens'])
    report = {'device': args.device, 'preset': args.preset, 'iterations': args.iterations,
              'frames': args.frames, 'budget_s': args.budget_s, 'environment': env,
              'modes': results, 'elapsed_s': time.monotonic() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'gpu_check.json').write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / 'gpu_check.md').write_text(table)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='gpu_check', description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--preset', choices=('tiny', 'mid', 'full'), default=None,
                   help='synthetic model (default: full on cuda, tiny on cpu)')
    p.add_argument('--modes', nargs='+', choices=(*MODES, 'server'), default=None)
    p.add_argument('--iterations', type=int, default=None, help='passes over the frames')
    p.add_argument('--frames', type=int, default=8)
    p.add_argument('--clients', type=int, nargs='+', default=[1, 4, 8])
    p.add_argument('--server-duration-s', type=float, default=None)
    p.add_argument('--budget-s', type=float, default=450.0, help='overall time budget')
    p.add_argument('--isolate', action=argparse.BooleanOptionalAction, default=None,
                   help='one process per mode (default: on for cuda)')
    p.add_argument('--out', type=Path, default=Path(os.environ.get('OUT', 'output/gpu_check')))
    p.add_argument('--only', help=argparse.SUPPRESS)
    p.add_argument('--only-out', type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith('cuda')
    args.preset = args.preset or ('full' if cuda else 'tiny')
    args.iterations = args.iterations or (3 if cuda else 1)
    args.server_duration_s = args.server_duration_s or (10.0 if cuda else 2.0)
    if args.only:   # child process of --isolate
        result = _run_one(args, args.only)
        args.only_out.write_text(json.dumps(result))
        return 0

    start = time.monotonic()
    env = environment(args.device)
    print(f"gpu_check: {env.get('machine', '')}; python {env['python']}; torch "
          f"{env.get('torch', 'MISSING')}; missing: {', '.join(env['missing_packages']) or 'none'}",
          flush=True)
    if 'torch' in env['missing_packages']:
        print('gpu_check: torch is not importable here; nothing to measure', file=sys.stderr)
        return 2
    if cuda and not env.get('cuda_available'):
        print('gpu_check: --device cuda but torch sees no CUDA device', file=sys.stderr)
        return 2
    isolate = cuda if args.isolate is None else args.isolate
    modes = args.modes or [*MODES, 'server']
    if 'eager' in modes:   # the reference comes first
        modes = ['eager'] + [m for m in modes if m != 'eager']
    results: list[dict] = []
    table = _write(args, env, results, start)
    floor = MIN_MODE_S['cuda' if cuda else 'cpu']
    for mode in modes:
        left = args.budget_s - (time.monotonic() - start)
        if left < floor:
            results.append({'mode': mode, 'ok': False, 'error': f'skipped: {left:.0f} s of the '
                                                                 'budget left'})
            print(f'gpu_check: {mode}: skipped (budget)', flush=True)
            continue
        t0 = time.monotonic()
        result = _one_mode_in_subprocess(args, mode, left) if isolate else _run_one(args, mode)
        result['wall_s'] = time.monotonic() - t0
        results.append(result)
        status = 'ok' if result.get('ok') else f"FAILED: {result.get('error')}"
        print(f'gpu_check: {mode}: {status} ({result["wall_s"]:.0f} s)', flush=True)
        # written after every mode: an outer timeout still leaves what was measured
        table = _write(args, env, results, start)
    print(table)
    print(f'gpu_check: wrote {args.out / "gpu_check.json"} and {args.out / "gpu_check.md"}')
    return 0 if any(r.get('ok') for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
