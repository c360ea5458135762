#!/usr/bin/env python3
"""Measure vla_node's own overhead at a given camera rate, on a checkpoint (default: the tiny one).

Publishes W x H rgb8 images at --rate-hz to a vla_node running in its own process, and for every
action received computes, from the image stamp (wall clock) and the action's own fields:
  end_to_end  = receive time - image stamp
  model       = inference_latency_s (the policy call)
  wait        = image_age_s (stamp -> inference start: transport in, latest-frame wait)
  overhead    = end_to_end - model  (everything the node and DDS add around the model)
  after_model = end_to_end - wait - model (building and publishing the action + DDS to the receiver)

    python tools/bench_vla_node.py [--checkpoint DIR] [--rate-hz 30] [--seconds 20] [--json]
    python tools/bench_vla_node.py --core [--json]   # VlaCore alone: the node logic per frame, no DDS
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openvla_ros import defaults, runtime_env  # noqa: E402

runtime_env.apply()


def bench_core(n: int = 20000) -> dict:
    """Cost of the node's own logic per inference cycle (offer a frame, take the job, publish under
    the lock), and per status derivation, with a steady clock and no model or DDS."""
    import threading

    from openvla_ros.nodes.vla_core import VlaCore

    core = VlaCore(time.monotonic_ns, time.monotonic, max_image_age_s=0.0)
    core.set_configured(True)
    core.set_active(True)
    core.set_instruction('pick up the cup')
    stop = threading.Event()
    rgb = np.zeros((480, 640, 3), np.uint8)
    tokens = list(range(7))
    t0 = time.perf_counter()
    for _ in range(n):
        core.offer_frame(rgb, None, time.monotonic_ns(), time.monotonic_ns())
        job = core.next_job(stop)
        core.publish_if_current(job, tokens, 0.0, lambda seq: None)
    cycle = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        core.state()
        core.rates()
    status = (time.perf_counter() - t0) / n
    return {'cycles': n, 'cycle_us': cycle * 1e6, 'status_us': status * 1e6}


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if '--core' in argv:
        report = bench_core()
        print(json.dumps(report, indent=2) if '--json' in argv else
              '\n'.join(f'{k:>12}: {v:.2f}' if isinstance(v, float) else f'{k:>12}: {v}' for k, v in report.items()))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--checkpoint', type=Path, help='checkpoint directory (default: a fresh tiny one)')
    ap.add_argument('--rate-hz', type=float, default=30.0)
    ap.add_argument('--seconds', type=float, default=20.0)
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--height', type=int, default=480)
    ap.add_argument('--json', action='store_true')
    ap.add_argument('--core', action='store_true', help='measure VlaCore alone (no node, no DDS)')
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from openvla_ros.imaging import rgb_to_image_fields
    from openvla_ros.msg import EndEffectorDelta, VlaStatus
    from openvla_ros.nodes.common import latched_qos, reliable_qos

    ckpt = args.checkpoint
    if ckpt is None:
        from openvla_ros.engine.tiny import make_tiny_checkpoint
        ckpt = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / 'openvla-tiny', seed=0)
    log = open(Path(tempfile.mkdtemp()) / 'vla_node.log', 'wb')
    proc = subprocess.Popen([sys.executable, '-m', 'openvla_ros.nodes.vla_node', '--ros-args',
                             '-p', f'model_path:={ckpt}', '-p', 'publish_debug_image:=false'],
                            stdout=log, stderr=subprocess.STDOUT, env=runtime_env.loopback_env())
    rclpy.init()
    node = rclpy.create_node('bench_vla_node')
    actions: list[tuple[int, EndEffectorDelta]] = []
    status: list[VlaStatus] = []
    node.create_subscription(EndEffectorDelta, defaults.ACTION_TOPIC,
                             lambda m: actions.append((time.time_ns(), m)), 100)
    node.create_subscription(VlaStatus, defaults.VLA_STATUS_TOPIC, status.append, latched_qos())
    img_pub = node.create_publisher(Image, defaults.CAMERA_TOPIC, qos_profile_sensor_data)
    instr_pub = node.create_publisher(String, defaults.INSTRUCTION_TOPIC, reliable_qos())
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (status and status[-1].state >= VlaStatus.STATE_IDLE):
            rclpy.spin_once(node, timeout_sec=0.1)
        if not status or status[-1].state < VlaStatus.STATE_IDLE:
            print('vla_node did not become active', file=sys.stderr)
            return 1
        instr_pub.publish(String(data='put the spoon on the towel'))
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in range(4)]
        fields = [rgb_to_image_fields(f) for f in frames]
        period = 1.0 / args.rate_hz
        t_next = time.monotonic()
        t_end = t_next + args.seconds + 2.0   # 2 s warm-up not counted
        warm_until_ns = time.time_ns() + 2_000_000_000
        i = 0
        while time.monotonic() < t_end:
            now = time.monotonic()
            if now >= t_next:
                ns = time.time_ns()
                msg = Image(**fields[i % 4])
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
                img_pub.publish(msg)
                i += 1
                t_next += period
            rclpy.spin_once(node, timeout_sec=max(0.0, min(period, t_next - time.monotonic())))
        rclpy.spin_once(node, timeout_sec=0.5)
    finally:
        proc.send_signal(2)
        proc.wait(20)
        node.destroy_node()
        rclpy.try_shutdown()
    rows = []
    for t_recv, m in actions:
        stamp = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
        if stamp < warm_until_ns:
            continue
        e2e = (t_recv - stamp) * 1e-9
        rows.append((e2e, m.inference_latency_s, m.image_age_s, e2e - m.inference_latency_s,
                     e2e - m.image_age_s - m.inference_latency_s))
    if not rows:
        print('no actions received', file=sys.stderr)
        return 1
    a = np.array(rows)

    def q(col, p):
        return float(np.percentile(a[:, col], p) * 1e3)

    report = {
        'images_published': i, 'actions': len(rows), 'rate_hz': args.rate_hz,
        'image_size': f'{args.width}x{args.height}', 'checkpoint': str(ckpt),
        'actions_per_s': len(rows) / args.seconds,
        **{f'{name}_ms_{p}': q(col, p) for col, name in enumerate(('end_to_end', 'model', 'wait', 'overhead', 'after_model'))
           for p in (50, 95)},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f'{k:>20}: {v:.2f}' if isinstance(v, float) else f'{k:>20}: {v}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
