#!/usr/bin/env python3
"""Soak benchmark: vla_node + arm_controller + sim_node in a closed loop for a long time, with
each process's resident memory sampled, to show whether anything grows.

The node set comes from the bring-up description (``sim:=true``, the camera at sim_node's
default rate), on the tiny random checkpoint unless ``--checkpoint`` names another. RSS is read
from ``/proc/<pid>/status`` every ``--sample-s`` seconds; the slope in MB/min is a least-squares
fit over the samples after ``--warmup-min``. Writes a JSON file and prints a text summary.

    python tools/soak.py --duration-min 30 --output soak.json

:class:`SoakRun` is also what ``test/test_soak_short.py`` drives for its short forms.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the working tree, not an installed copy

from openvla_ros import defaults, runtime_env  # noqa: E402

NODES = (defaults.VLA_NODE, defaults.ARM_CONTROLLER_NODE, defaults.SIM_NODE)
INSTRUCTION = 'put the spoon on the towel'


def rss_mb(pid: int) -> float | None:
    """Resident set size of a live process in MB (None once it is gone)."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t_s, rss_mb) samples, in MB per minute."""
    if len(samples) < 3:
        return None
    t, m = np.array(samples, dtype=float).T
    return float(np.polyfit(t / 60.0, m, 1)[0])


class SoakRun:
    """The three nodes as processes plus a recorder in this process, enabled and instructed."""

    def __init__(self, checkpoint: Path, log_dir: Path, sim_params: tuple[str, ...] = ()):
        from openvla_ros.cli.bringup import commands

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cmds = []
        for name, argv in commands({'sim': 'true', 'model_path': str(Path(checkpoint).resolve())}):
            if name == defaults.SIM_NODE:
                for p in sim_params:
                    argv = argv + ['-p', p]
            self.cmds.append((name, argv))
        self.procs: dict[str, subprocess.Popen] = {}
        self.recorder = None
        self._ctx = None

    def __enter__(self) -> 'SoakRun':
        import rclpy
        from rclpy.context import Context
        from rclpy.signals import SignalHandlerOptions

        from openvla_ros.cli.demo import LoopRecorder

        env = runtime_env.loopback_env()
        for name, argv in self.cmds:
            log = open(self.log_dir / f'{name}.log', 'wb')
            self.procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        self._ctx = Context()
        rclpy.init(context=self._ctx, signal_handler_options=SignalHandlerOptions.NO)
        self.recorder = LoopRecorder(self._ctx, keep_frames=False)
        return self

    def start_loop(self, timeout_s: float) -> tuple[bool, str]:
        """Wait for the graph, send the instruction and enable the controller."""
        rec = self.recorder
        if not rec.spin_until(lambda: rec.graph_ready() or self.dead(), timeout_s, step_s=0.1) or self.dead():
            return False, f'graph not ready (exited: {self.dead()})'
        rec.send_instruction(INSTRUCTION)
        return rec.set_enabled(True)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown path runs, as when a process crashes."""
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def rss(self) -> dict[str, float | None]:
        return {name: rss_mb(p.pid) for name, p in self.procs.items()}

    def log(self, name: str) -> str:
        p = self.log_dir / f'{name}.log'
        return p.read_text(errors='replace') if p.exists() else ''

    def __exit__(self, *exc) -> None:
        import rclpy

        from openvla_ros.cli.bringup import stop_processes

        if self.recorder is not None:
            try:
                self.recorder.set_enabled(False, timeout_s=2.0)
            finally:
                self.recorder.close()
        self.exit_codes = stop_processes(list(self.procs.items()))
        if self._ctx is not None:
            rclpy.try_shutdown(context=self._ctx)


def machine() -> dict:
    return {'cpu': platform.processor() or platform.machine(), 'cores': os.cpu_count(),
            'python': platform.python_version(), 'system': f'{platform.system()} {platform.release()}'}


def soak(args) -> dict:
    from openvla_ros.cli.demo import ensure_checkpoint

    checkpoint = ensure_checkpoint(args.checkpoint)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    samples: dict[str, list[tuple[float, float]]] = {n: [] for n in NODES}
    with SoakRun(checkpoint, args.log_dir) as run:
        ok, msg = run.start_loop(args.startup_timeout_s)
        if not ok:
            raise RuntimeError(f'the loop did not start: {msg}; logs in {args.log_dir}')
        rec = run.recorder.rec
        t0 = time.monotonic()
        next_sample = t0
        while not stop.is_set() and time.monotonic() - t0 < args.duration_min * 60.0 and not run.dead():
            run.recorder.spin_until(lambda: time.monotonic() >= next_sample or stop.is_set(),
                                    max(0.0, next_sample - time.monotonic()) + 0.05)
            t = time.monotonic() - t0
            for name, mb in run.rss().items():
                if mb is not None:
                    samples[name].append((t, mb))
            cs = rec.controller_status
            print(f'[soak] t={t / 60:6.2f} min | ' + ' | '.join(f'{n} {samples[n][-1][1]:7.1f} MB'
                                                                for n in NODES if samples[n])
                  + f' | actions {len(rec.actions)} | trajectories {rec.trajectories}'
                  + f' | controller {cs.state_name if cs else "?"}', flush=True)
            next_sample += args.sample_s
        elapsed_min = (time.monotonic() - t0) / 60.0
        dead = run.dead()
        counts = {'actions': len(rec.actions), 'trajectories': rec.trajectories,
                  'camera_frames': len(rec.frame_times)}
    warm = args.warmup_min * 60.0
    result = {
        'duration_min': round(elapsed_min, 2), 'requested_duration_min': args.duration_min,
        'warmup_min': args.warmup_min, 'sample_s': args.sample_s, 'checkpoint': str(checkpoint),
        'machine': machine(), 'counts': counts, 'exited_early': dead, 'exit_codes': run.exit_codes,
        'processes': {},
    }
    for name, ss in samples.items():
        after = [(t, m) for t, m in ss if t >= warm]
        result['processes'][name] = {
            'samples': len(ss), 'rss_start_mb': ss[0][1] if ss else None, 'rss_end_mb': ss[-1][1] if ss else None,
            'rss_max_mb': max(m for _, m in ss) if ss else None,
            'slope_mb_per_min_after_warmup': slope_mb_per_min(after),
        }
    return result


def text_summary(r: dict) -> str:
    lines = [f"soak: {r['duration_min']:.1f} min (requested {r['requested_duration_min']}), warm-up "
             f"{r['warmup_min']} min, RSS every {r['sample_s']} s; {r['machine']['cores']} cores",
             f"loop: {r['counts']['actions']} actions, {r['counts']['trajectories']} trajectories, "
             f"{r['counts']['camera_frames']} frames; exit codes {r['exit_codes']}"]
    for name, p in r['processes'].items():
        s = p['slope_mb_per_min_after_warmup']
        lines.append(f"  {name:15s} RSS {p['rss_start_mb'] or 0:7.1f} -> {p['rss_end_mb'] or 0:7.1f} MB "
                     f"(max {p['rss_max_mb'] or 0:.1f}); slope after warm-up "
                     + (f'{s:+.3f} MB/min' if s is not None else 'n/a (too few samples)'))
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--duration-min', type=float, default=30.0, help='loop duration once the graph is up (min)')
    p.add_argument('--warmup-min', type=float, default=2.0, help='samples before this are left out of the slope')
    p.add_argument('--sample-s', type=float, default=10.0, help='RSS sampling period (s)')
    p.add_argument('--checkpoint', type=Path, default=None,
                   help='OpenVLA checkpoint directory (default: the tiny random one of openvla-demo)')
    p.add_argument('--startup-timeout-s', type=float, default=300.0)
    p.add_argument('--output', type=Path, default=Path('soak.json'), help='JSON result file')
    p.add_argument('--log-dir', type=Path, default=Path('soak-logs'), help='node logs')
    args = p.parse_args(argv)
    runtime_env.apply()
    try:
        result = soak(args)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f'soak: {exc}', file=sys.stderr)
        return 1
    args.output.write_text(json.dumps(result, indent=2) + '\n')
    print(text_summary(result))
    print(f'[soak] wrote {args.output}')
    return 0 if not result['exited_early'] else 1


if __name__ == '__main__':
    sys.exit(main())
