"""The full closed loop on the tiny model: sim_node, vla_node and arm_controller in separate
processes, started from the bring-up description (sim:=true), over loopback DDS."""
from __future__ import annotations

import numpy as np
import pytest

from openvla_ros import defaults
from openvla_ros.cli.bringup import commands
from openvla_ros.cli.demo import LoopRecorder

pytestmark = pytest.mark.ros

STARTUP_TIMEOUT_S = 60.0
LOOP_TIMEOUT_S = 25.0


def test_closed_loop_actions_reach_the_simulated_arm_and_all_nodes_exit_cleanly(processes, ros_context,
                                                                               tiny_checkpoint):
    for name, argv in commands({'sim': 'true', 'model_path': str(tiny_checkpoint)}):
        assert argv[1] == '-m'
        extra = ['-p', 'image_width:=224', '-p', 'image_height:=224'] if name == defaults.SIM_NODE else []
        processes.start(argv[2], *argv[3:], *extra, name=name)
    rec = LoopRecorder(ros_context, keep_frames=False)
    try:
        assert rec.spin_until(rec.graph_ready, STARTUP_TIMEOUT_S), {
            n: processes.log(n)[-2000:] for n in (defaults.SIM_NODE, defaults.VLA_NODE, defaults.ARM_CONTROLLER_NODE)}
        r = rec.rec
        home = dict(r.joint_states[-1][1])
        rec.send_instruction('put the spoon on the towel')
        ok, msg = rec.set_enabled(True)
        assert ok, msg

        def looped():
            cs = r.controller_status
            return (len(r.actions) >= 5 and r.trajectories >= 3 and cs is not None
                    and cs.actions_executed >= 3)
        assert rec.spin_until(looped, LOOP_TIMEOUT_S), (len(r.actions), r.trajectories, r.controller_status,
                                                        processes.log(defaults.ARM_CONTROLLER_NODE)[-2000:])
        rec.spin_for(1.0)
        # Every action is conditioned on a camera image from the simulator (sim-time stamps).
        frame_stamps = {s for s, _ in r.frame_times}
        assert all(a[0] in frame_stamps for a in r.actions)
        assert all(a[3].shape == (7,) and np.all(np.isfinite(a[3])) for a in r.actions)
        # The trajectories moved the simulated arm away from its start pose.
        now = r.joint_states[-1][1]
        moved = max(abs(now[j] - home[j]) for j in ('waist', 'shoulder', 'elbow', 'wrist_angle'))
        assert moved > 0.005, (home, now)
        ok, msg = rec.set_enabled(False)
        assert ok, msg
    finally:
        rec.close()
    codes = processes.stop(timeout_s=20.0)
    assert codes == {defaults.VLA_NODE: 0, defaults.ARM_CONTROLLER_NODE: 0, defaults.SIM_NODE: 0}, codes


def test_demo_runs_the_loop_and_writes_its_report(tmp_path, tiny_checkpoint):
    import json
    import subprocess
    import sys

    import imageio.v3 as iio

    from openvla_ros import runtime_env

    out = tmp_path / 'report'
    proc = subprocess.run(
        [sys.executable, '-m', 'openvla_ros.cli.demo', '--checkpoint', str(tiny_checkpoint), '--duration-s', '3',
         '--image-width', '224', '--image-height', '224', '--seed', '4', '--output', str(out),
         '--startup-timeout-s', '60'],
        env=runtime_env.loopback_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f'report: {(out / "summary.md").resolve()}' in proc.stdout
    assert proc.stdout.count('[demo] t=') >= 2  # a progress line per second
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['exit_codes'] == {defaults.VLA_NODE: 0, defaults.ARM_CONTROLLER_NODE: 0, defaults.SIM_NODE: 0}
    c = summary['counts']
    assert c['actions'] > 0 and c['camera_frames'] > c['actions'] and c['joint_trajectories'] > 0
    assert summary['rates_hz']['camera_sim'] == pytest.approx(10.0, rel=0.05)  # sim_node default camera rate
    assert summary['latency_s']['inference_p50'] > 0 and summary['startup_s'] > 0
    frames = iio.imread(out / 'camera.gif', index=None) if (out / 'camera.gif').exists() \
        else iio.imread(out / 'camera.mp4', index=None)
    assert frames.ndim == 4 and frames.shape[0] >= 2 and frames.std() > 10
    plot = iio.imread(out / 'actions_and_trajectory.png')
    assert plot.shape[0] > 500 and plot.std() > 10
    md = (out / 'summary.md').read_text()
    assert 'action rate' in md and 'vla_node=0' in md
