"""Property tests of the controller core (ROS-free, real wx250s MJCF and IK): random action
streams at 1-1000 Hz, random joint-state faults and random enable / e-stop sequences, against
the invariants of the README's safety section."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import enabled_controller
from openvla_ros.control.embodiment import EmbodimentConfigError
from openvla_ros.control.safety import PERIOD_TOLERANCE_S, ActionInput, Command, EStopLatch, Refusal, SafetyController

TICK_S = 0.02
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check_speed(e, cmd: Command, q_latest: np.ndarray) -> None:
    """Every command, holds included, within the joint-speed limit from the latest measurement."""
    if cmd.joint_positions is not None:
        speed = np.max(np.abs(cmd.joint_positions - q_latest)) / cmd.duration_s
        assert speed <= e.max_joint_speed_rad_s + 1e-9, (speed, cmd.reason)
    assert cmd.duration_s >= e.control_period_s - 1e-12


actions = st.lists(st.floats(-0.3, 0.3), min_size=7, max_size=7)


@SETTINGS
@given(rate_hz=st.floats(1.0, 1000.0), stream=st.lists(actions, min_size=5, max_size=60),
       follow=st.booleans())
def test_any_input_rate_moves_at_most_one_clip_per_control_period(bridge, kin, start_q, rate_hz, stream, follow):
    e, c = enabled_controller(bridge, kin)
    q = np.array(start_q)
    now = 100.0
    c.update_joints(dict(zip(e.arm_joints, q)), now, now)
    dt = 1.0 / rate_hz
    next_tick = now
    executed: list[tuple[float, Command]] = []
    low, high = np.array(e.workspace_low_m), np.array(e.workspace_high_m)

    def handle(result, t):
        nonlocal q
        if isinstance(result, Command):
            _check_speed(e, result, q)
            assert np.all(result.target.position >= low - 1e-12) and np.all(result.target.position <= high + 1e-12)
            if not result.hold:
                executed.append((t, result))
            if follow and result.joint_positions is not None:
                q = np.array(result.joint_positions)    # the arm reaches its command

    for a in stream:
        while next_tick <= now:   # the 50 Hz tick and joint states run whatever the action rate
            c.update_joints(dict(zip(e.arm_joints, q)), next_tick, next_tick)
            handle(c.tick(next_tick, next_tick), next_tick)
            next_tick += TICK_S
        handle(c.on_action(ActionInput(tuple(a), now, e.base_frame_id), now, now), now)
        now += dt
    for _ in range(20):
        c.update_joints(dict(zip(e.arm_joints, q)), next_tick, next_tick)
        handle(c.tick(next_tick, next_tick), next_tick)
        next_tick += TICK_S
    assert executed, 'no action was ever executed'
    for (t0, a), (t1, b) in zip(executed, executed[1:]):
        assert t1 - t0 >= e.control_period_s - PERIOD_TOLERANCE_S
        step = np.abs(b.target.position - a.target.position)
        assert np.all(step <= e.max_translation_step_m + 1e-9)
    # per control period window, whatever the rate: at most one executed action
    times = np.array([t for t, _ in executed])
    for t in times:
        assert np.sum((times >= t) & (times < t + e.control_period_s - PERIOD_TOLERANCE_S)) == 1


def test_a_1khz_burst_executes_the_newest_action_once_per_period(bridge, kin, start_q):
    e, c = enabled_controller(bridge, kin)
    c.update_joints(dict(zip(e.arm_joints, start_q)), 10.0, 10.0)
    start = kin.forward(start_q).position
    first = c.on_action(ActionInput((0.05, 0, 0, 0, 0, 0, 1), 10.0, e.base_frame_id), 10.0, 10.0)
    assert isinstance(first, Command)
    results = [c.on_action(ActionInput((0.05, 0, 0, 0, 0, 0, 1), 10.0 + i * 1e-3, e.base_frame_id),
                           10.0 + i * 1e-3, 10.0 + i * 1e-3) for i in range(1, 200)]
    assert not any(isinstance(r, Command) for r in results)
    assert all('rate' in r.reason for r in results) and c.counters.rejected == 0
    assert c.counters.dropped_while_busy == 198          # 199 kept one after the other, newest wins
    c.update_joints(dict(zip(e.arm_joints, start_q)), 10.2, 10.2)
    second = c.tick(10.2, 10.2)
    assert isinstance(second, Command)
    # 200 actions of 5 cm within 0.2 s: the target moved 10 cm (two periods), not 10 m
    np.testing.assert_allclose(second.target.position, start + [0.10, 0, 0], atol=1e-9)
    assert c.tick(10.22, 10.22) is None


FAULTS = ('ok', 'nan', 'inf', 'missing', 'only_fingers', 'empty', 'foreign', 'partial', 'reordered', 'silent')


def _joint_message(fault, names, q, rng):
    arm = dict(zip(names, q))
    if fault == 'ok':
        return arm
    if fault in ('nan', 'inf'):
        bad = dict(arm)
        bad[names[rng.integers(len(names))]] = math.nan if fault == 'nan' else -math.inf
        return bad
    if fault == 'missing':
        return {n: v for i, (n, v) in enumerate(arm.items()) if i != rng.integers(len(names))}
    if fault == 'only_fingers':
        return {'left_finger': 0.03, 'right_finger': -0.03}
    if fault == 'empty':
        return {}
    if fault == 'foreign':
        return {f'robot2/{n}': v + 1.0 for n, v in arm.items()}
    if fault == 'partial':
        return dict(list(arm.items())[:3])
    if fault == 'reordered':
        return dict(reversed(list(arm.items())))
    return None   # silent: no message this tick


@SETTINGS
@given(faults=st.lists(st.sampled_from(FAULTS), min_size=10, max_size=80), seed=st.integers(0, 2**16),
       jumps=st.booleans())
def test_no_command_from_a_joint_that_is_not_freshly_measured(bridge, kin, start_q, faults, seed, jumps):
    """Random joint-state faults, actions every tick, watchdog holds: every command comes from
    joints that each had a finite measurement within max_joint_state_age_s, and moves no joint
    faster than the limit from that measurement."""
    rng = np.random.default_rng(seed)
    e, c = enabled_controller(bridge, kin, watchdog_timeout_s=0.3, max_joint_state_age_s=0.1)
    names = list(e.arm_joints)
    truth = np.array(start_q)                       # where the arm really is
    last_fresh = {n: (None, -1.0) for n in names}   # the oracle: newest finite value per joint
    now = 50.0
    for fault in faults:
        if jumps and rng.random() < 0.2:            # the arm is pushed while measurements are faulty
            truth = truth + rng.normal(0, 0.2, size=len(names))
        msg = _joint_message(fault, names, truth, rng)
        if msg is not None:
            c.update_joints(msg, now, now)
            for n in names:
                if n in msg and math.isfinite(msg[n]):
                    last_fresh[n] = (msg[n], now)
        for result in (c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), now, e.base_frame_id), now, now),
                       c.tick(now, now)):
            if not isinstance(result, Command):
                continue
            assert all(now - t <= e.max_joint_state_age_s + 1e-12 for _, t in last_fresh.values()), result.reason
            q_latest = np.array([last_fresh[n][0] for n in names])
            _check_speed(e, result, q_latest)
            if result.hold:
                np.testing.assert_allclose(result.joint_positions, q_latest)
        now += 0.05


def test_frozen_joints_then_watchdog_sends_no_fast_hold(bridge, kin, start_q):
    """The reported fault: NaN states kept the measurement 'fresh' and the hold then commanded
    the frozen pose at 5.41 rad/s. Now the NaN messages refresh nothing: no hold is sent."""
    e, c = enabled_controller(bridge, kin)
    names = list(e.arm_joints)
    c.update_joints(dict(zip(names, start_q)), 10.0, 10.0)
    assert isinstance(c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), 10.0, e.base_frame_id), 10.0, 10.0), Command)
    for k in range(1, 60):                                      # 1.2 s of NaN joint states
        t = 10.0 + 0.02 * k
        c.update_joints({n: math.nan for n in names}, t, t)
        result = c.tick(t, t)
        assert not isinstance(result, Command)
    assert 'no hold command sent' in c.last_event
    r = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), 11.2, e.base_frame_id), 11.2, 11.2)
    assert isinstance(r, Refusal) and 'stale' in r.reason


def test_steady_clock_bounds_hold_when_the_node_clock_stops(bridge, kin, start_q):
    """use_sim_time with the simulator killed: /clock and /joint_states stop together. The
    node clock stands still, the steady clock does not: actions are refused."""
    e, c = enabled_controller(bridge, kin)
    c.update_joints(dict(zip(e.arm_joints, start_q)), 5.0, 1000.0)
    assert isinstance(c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), 5.0, e.base_frame_id), 5.0, 1000.0), Command)
    # sim time frozen at 5.0, 2 s of wall time later
    r = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), 5.0, e.base_frame_id), 5.2, 1002.0)
    assert isinstance(r, Refusal) and 'steady clock' in r.reason
    # the watchdog trips on the steady clock too; no hold either (the joints are not fresh)
    assert c.tick(5.2, 1002.0 + e.watchdog_timeout_s) is None
    assert 'watchdog' in c.last_event and 'steady clock' in c.last_event and 'no hold command sent' in c.last_event


def test_wrong_action_frame_is_refused(bridge, kin, start_q):
    e, c = enabled_controller(bridge, kin)
    c.update_joints(dict(zip(e.arm_joints, start_q)), 10.0, 10.0)
    for frame in ('', 'wx250s/ee_gripper_link', 'map'):
        r = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), 10.0, frame), 10.0, 10.0)
        assert isinstance(r, Refusal) and 'frame' in r.reason
    assert c.target is None and c.counters.executed == 0
    assert isinstance(c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), 10.0, e.base_frame_id), 10.0, 10.0),
                      Command)


events = st.lists(st.sampled_from(['action', 'estop', 'release', 'reset', 'enable', 'disable', 'rebuild', 'tick']),
                  min_size=5, max_size=40)


@SETTINGS
@given(seq=events)
def test_after_an_estop_nothing_moves_until_reset(bridge, kin, start_q, seq, tmp_path_factory):
    """Random enable / e-stop / rebuild sequences: the latch is kept by an EStopLatch that a
    rebuilt controller (what on_configure does) shares, so only reset_estop clears it."""
    latch = EStopLatch(tmp_path_factory.mktemp('latch') / 'estop')
    e, c = enabled_controller(bridge, kin, latch)
    now = 10.0
    latched = False
    for ev in seq + ['action']:
        c.update_joints(dict(zip(e.arm_joints, start_q)), now, now)
        if ev == 'action':
            r = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), now, e.base_frame_id), now, now)
            assert not (latched and isinstance(r, Command))
        elif ev == 'estop':
            c.set_estop(True, now, now)
            latched = True
        elif ev == 'release':
            c.set_estop(False, now, now)
        elif ev == 'reset':
            ok, _ = c.reset_estop()
            latched = latched and not ok
        elif ev == 'enable':
            ok, _ = c.set_enabled(True, now, now)
            assert not (ok and latched)
        elif ev == 'disable':
            c.set_enabled(False, now, now)
        elif ev == 'rebuild':
            c = SafetyController(e, kin, latch)
            c.set_enabled(True)
        else:
            r = c.tick(now, now)
            assert not (latched and isinstance(r, Command) and not r.hold)
        assert c.estop_latched == latched
        # a restart with the same latch file starts latched
        assert EStopLatch(latch.path).latched == latched
        now += 0.25


def test_safety_limits_stay_within_the_embodiment_hard_limits(bridge):
    with pytest.raises(EmbodimentConfigError, match='hard limit'):
        bridge.with_overrides(workspace_high_m=(1e9, 1e9, 1e9))
    with pytest.raises(EmbodimentConfigError, match='hard limit'):
        bridge.with_overrides(workspace_low_m=(-1e9, -1e9, -1e9))
    with pytest.raises(EmbodimentConfigError, match='hard limit'):
        bridge.with_overrides(max_translation_step_m=bridge.max_translation_step_m * 2)
    with pytest.raises(EmbodimentConfigError, match='hard limit'):
        bridge.with_overrides(max_joint_speed_rad_s=bridge.max_joint_speed_rad_s + 0.1)
    tighter = bridge.with_overrides(workspace_high_m=(0.4, 0.2, 0.25), max_translation_step_m=0.01,
                                    watchdog_timeout_s=bridge.hard_limits['watchdog_timeout_s'])
    assert tighter.max_translation_step_m == 0.01
