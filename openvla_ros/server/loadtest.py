"""Throughput of ``openvla-serve`` under N concurrent clients (actions/s, latency, batch size).

    python -m openvla_ros.server.loadtest --checkpoint DIR --clients 1 2 4 --duration-s 10
    python -m openvla_ros.server.loadtest --url http://127.0.0.1:8000 --clients 1 4

With ``--checkpoint`` a server is started on a free loopback port for the run; with ``--url`` an
existing one is measured. Each client sends its own image in a closed loop (next request when the
previous answer arrived), like a robot that waits for its action.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from openvla_ros.server import numpy_json
from openvla_ros.server.process import ServerProcess


def _client(url: str, image: np.ndarray, instruction: str, unnorm_key: str | None,
            stop_at: float, headers: dict, out: dict) -> None:
    body = {'image': numpy_json.encode_array(image), 'instruction': instruction}
    if unnorm_key:
        body['unnorm_key'] = unnorm_key
    data = numpy_json.dumps(body).encode()
    latencies, batch_sizes, errors = [], [], 0
    with requests.Session() as session:
        session.trust_env = False
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            r = session.post(url + '/act/detailed', data=data, timeout=60,
                             headers={'Content-Type': 'application/json', **headers})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
                batch_sizes.append(r.json()['batch_size'])
            else:
                errors += 1
    out.update(latencies=latencies, batch_sizes=batch_sizes, errors=errors)


def measure(url: str, clients: int, duration_s: float, image_size: int = 224,
            instruction: str = 'put the spoon on the towel', unnorm_key: str | None = None,
            token: str | None = None, warmup_s: float = 1.0) -> dict:
    """Run ``clients`` closed-loop clients for ``duration_s``; return throughput and latencies."""
    headers = {'Authorization': f'Bearer {token}'} if token else {}
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
              for _ in range(clients)]
    if warmup_s > 0:
        _client(url, images[0], instruction, unnorm_key, time.monotonic() + warmup_s, headers, {})
    outs = [dict() for _ in range(clients)]
    start = time.monotonic()
    threads = [threading.Thread(target=_client, args=(url, images[i], instruction, unnorm_key,
                                                      start + duration_s, headers, outs[i]))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    lat = np.array([x for o in outs for x in o['latencies']])
    batches = np.array([x for o in outs for x in o['batch_sizes']])
    return {
        'clients': clients,
        'actions': int(lat.size),
        'actions_per_s': lat.size / elapsed,
        'latency_p50_s': float(np.percentile(lat, 50)) if lat.size else float('nan'),
        'latency_p95_s': float(np.percentile(lat, 95)) if lat.size else float('nan'),
        'mean_batch_size': float(batches.mean()) if batches.size else float('nan'),
        'errors': sum(o['errors'] for o in outs),
    }


def machine_description() -> str:
    return f'{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} ' \
           f'{platform.release()}, Python {platform.python_version()}'


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='openvla-server-loadtest', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--url', help='measure a running server')
    src.add_argument('--checkpoint', type=Path, help='start a server on this checkpoint')
    p.add_argument('--clients', type=int, nargs='+', default=[1, 2, 4])
    p.add_argument('--duration-s', type=float, default=10.0)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--unnorm-key', default=None)
    p.add_argument('--max-batch', type=int, default=4, help='server flag (with --checkpoint)')
    p.add_argument('--server-arg', action='append', default=[],
                   help='extra openvla-serve argument (with --checkpoint), repeatable')
    args = p.parse_args(argv)
    token = os.environ.get('OPENVLA_SERVER_TOKEN') or None

    server = None
    url = args.url
    if args.checkpoint is not None:
        log_path = Path(tempfile.mkdtemp(prefix='openvla-loadtest-')) / 'server.log'
        server = ServerProcess(args.checkpoint, '--max-batch', str(args.max_batch),
                               '--log-level', 'warning', *args.server_arg,
                               log_path=log_path).start()
        url = server.url
    try:
        print(f'# {machine_description()}; server {url}; {args.image_size}x{args.image_size} '
              f'images; {args.duration_s:g} s per row')
        print('| clients | actions/s | p50 latency (ms) | p95 latency (ms) | mean batch | errors |')
        print('|---|---|---|---|---|---|')
        for n in args.clients:
            r = measure(url, n, args.duration_s, args.image_size, unnorm_key=args.unnorm_key,
                        token=token)
            print(f"| {n} | {r['actions_per_s']:.1f} | {1e3 * r['latency_p50_s']:.1f} | "
                  f"{1e3 * r['latency_p95_s']:.1f} | {r['mean_batch_size']:.2f} | {r['errors']} |",
                  flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
