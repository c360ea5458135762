"""VlaCore and WorkerSlot in-process: no DDS, a hand-driven clock, real threads where the point
is concurrency (instruction storm, worker lifecycle)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from openvla_ros.engine.api import InvalidInstructionError
from openvla_ros.engine.prompt import validate_instruction
from openvla_ros.msg import VlaStatus
from openvla_ros.nodes import vla_core
from openvla_ros.nodes.vla_core import VlaCore, WorkerSlot

RGB = np.zeros((4, 4, 3), np.uint8)
S = 1_000_000_000


class FakeClock:
    """Node clock (ns) and steady clock (s), both moved by the test."""

    def __init__(self, t_ns: int = 100 * S):
        self.t = t_ns
        self.mono = 1000.0

    def now_ns(self) -> int:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def advance(self, s: float) -> None:
        self.t += int(s * S)
        self.mono += s


def _core(clock, **kw) -> VlaCore:
    core = VlaCore(clock.now_ns, clock.monotonic, **kw)
    core.set_configured(True)
    core.set_active(True)
    return core


def _take(core, stop=None, timeout_s=2.0):
    """next_job with a watchdog, so a test never hangs on a wait the core should not do."""
    stop = stop or threading.Event()
    out = []
    t = threading.Thread(target=lambda: out.append(core.next_job(stop)), daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        stop.set()
        with core.cond:
            core.cond.notify_all()
        t.join(2.0)
        return 'blocked'
    return out[0]


def test_state_constants_match_the_message():
    for name, value in (('UNCONFIGURED', vla_core.UNCONFIGURED), ('INACTIVE', vla_core.INACTIVE),
                        ('IDLE', vla_core.IDLE), ('RUNNING', vla_core.RUNNING),
                        ('PAUSED', vla_core.PAUSED), ('ERROR', vla_core.ERROR)):
        assert getattr(VlaStatus, f'STATE_{name}') == value
        assert vla_core.STATE_NAMES[value] == name


def test_latest_frame_wins_and_overwritten_frames_count_as_dropped():
    c = FakeClock()
    core = _core(c)
    core.set_instruction('pick')
    for i in range(3):
        core.offer_frame(RGB, f'h{i}', c.t - 10_000_000, c.t)
    job = _take(core)
    assert job.frame.header == 'h2' and core.counters['frames_dropped'] == 2
    assert job.instruction == 'pick' and job.age_s == pytest.approx(0.01)
    assert _take(core, timeout_s=0.3) == 'blocked'   # nothing new: waits


def test_no_job_without_instruction_when_paused_or_inactive():
    c = FakeClock()
    core = _core(c)
    core.offer_frame(RGB, 'h', c.t, c.t)
    assert _take(core, timeout_s=0.2) == 'blocked'
    assert core.state()[0] == vla_core.IDLE and 'no instruction' in core.state()[1]
    core.set_instruction('pick')
    core.set_param('enabled', False)
    assert _take(core, timeout_s=0.2) == 'blocked' and core.state()[0] == vla_core.PAUSED
    core.set_param('enabled', True)
    core.set_active(False)
    assert core.state()[0] == vla_core.INACTIVE
    core.offer_frame(RGB, 'h', c.t, c.t)     # inactive: not kept
    core.set_active(True)
    assert _take(core, timeout_s=0.2) == 'blocked'


def test_stale_and_zero_stamped_frames_are_skipped_counted_and_clear_the_draft():
    c = FakeClock()
    core = _core(c, max_image_age_s=1.0)
    core.set_instruction('pick')
    core.offer_frame(RGB, 'h', c.t, c.t)
    job = _take(core)
    assert core.publish_if_current(job, [1, 2, 3, 4, 5, 6, 7], 0.1, lambda seq: None)
    assert core.draft_for('pick') == (1, 2, 3, 4, 5, 6, 7)
    core.offer_frame(RGB, 'old', c.t - 2 * S, c.t)
    job = _take(core)
    assert core.is_stale(job) and core.counters['frames_stale'] == 1 and 'stale' in core.last_event
    assert core.draft_for('pick') is None
    core.offer_frame(RGB, 'zero', 0, c.t)
    job = _take(core)
    assert core.is_stale(job) and 'zero' in core.last_event
    # A frame from the future (sim clock behind the camera) is as stale as an old one.
    core.offer_frame(RGB, 'future', c.t + 2 * S, c.t)
    assert core.is_stale(_take(core))


def test_draft_only_for_the_same_instruction_and_cleared_on_change_reset_and_error():
    c = FakeClock()
    core = _core(c)
    core.set_instruction('pick')

    def cycle(tokens):
        core.offer_frame(RGB, 'h', c.t, c.t)
        job = _take(core)
        assert core.publish_if_current(job, tokens, 0.1, lambda seq: None)
        return job

    assert cycle([1] * 7).draft_token_ids is None
    assert cycle([2] * 7).draft_token_ids == (1,) * 7
    assert cycle([3] * 7).draft_token_ids == (2,) * 7
    core.set_instruction('place')
    assert cycle([4] * 7).draft_token_ids is None
    core.set_instruction('place')            # the same text again is no change
    assert cycle([5] * 7).draft_token_ids == (4,) * 7
    core.report_error(RuntimeError('x'))
    assert cycle([6] * 7).draft_token_ids is None
    core.reset()
    core.set_instruction('place')
    assert cycle([7] * 7).draft_token_ids is None


def test_publish_refused_after_instruction_change_pause_or_deactivate():
    c = FakeClock()
    core = _core(c)
    core.set_instruction('a')
    sent = []
    for change in (lambda: core.set_instruction('b'), lambda: core.set_param('enabled', False),
                   lambda: core.set_active(False), lambda: (core.set_instruction('x'), core.set_instruction('a')),
                   lambda: core.reset()):
        core.set_active(True)
        core.set_param('enabled', True)
        core.set_instruction('a')
        core.offer_frame(RGB, 'h', c.t, c.t)
        job = _take(core)
        change()
        assert not core.publish_if_current(job, [0] * 7, 0.1, sent.append)
        assert 'discarded' in core.last_event
    assert sent == []


def test_rate_limit_on_the_node_clock_and_recomputed_when_the_rate_changes():
    c = FakeClock()
    core = _core(c, max_rate_hz=5.0)
    core.set_instruction('pick')
    core.offer_frame(RGB, 'h', c.t, c.t)
    assert core.publish_if_current(_take(core), [0] * 7, 0.01, lambda s: None)
    core.offer_frame(RGB, 'h', c.t, c.t)
    # The steady clock moves, the node clock does not (paused simulation): no start.
    c.mono += 5.0
    assert _take(core, timeout_s=0.3) == 'blocked'
    assert core.rate_wait_s() == pytest.approx(0.2)
    c.t += int(0.19 * S)
    assert _take(core, timeout_s=0.2) == 'blocked'
    c.t += int(0.011 * S)
    assert _take(core) not in (None, 'blocked')
    # 0.01 Hz then 0: the 100 s wait goes at once, and the status says why nothing comes out meanwhile.
    core.set_param('max_rate_hz', 0.01)
    core.offer_frame(RGB, 'h', c.t, c.t)
    assert _take(core, timeout_s=0.2) == 'blocked'
    state, why = core.state()
    assert 'rate limit' in why and 'max_rate_hz=0.01' in why
    stop = threading.Event()
    out = []
    t = threading.Thread(target=lambda: out.append(core.next_job(stop)), daemon=True)
    t.start()
    time.sleep(0.05)
    core.set_param('max_rate_hz', 0.0)
    t.join(2.0)
    assert not t.is_alive() and out[0] is not None
    # A clock that jumps back (sim reset) does not block for the old deadline.
    core.set_param('max_rate_hz', 1.0)
    core.offer_frame(RGB, 'h', c.t, c.t)
    c.t -= 50 * S
    core.offer_frame(RGB, 'h', c.t, c.t)
    assert _take(core) not in (None, 'blocked')


def test_worker_paces_at_max_rate_of_a_slow_sim_clock():
    """A clock running at 0.3x real time, driven from a thread: starts are 0.2 s of sim time
    apart (5 Hz of sim time), not of real time."""
    t0 = time.monotonic()
    sim0 = 500 * S

    def sim_now():
        return sim0 + int((time.monotonic() - t0) * 0.3 * S)

    core = VlaCore(sim_now, time.monotonic, max_rate_hz=5.0, max_image_age_s=0.0)
    core.set_configured(True)
    core.set_active(True)
    core.set_instruction('pick')
    stop = threading.Event()
    starts = []

    def feeder():
        while not stop.is_set():
            core.offer_frame(RGB, 'h', sim_now(), sim_now())
            time.sleep(0.01)

    threading.Thread(target=feeder, daemon=True).start()
    try:
        while len(starts) < 6:
            job = core.next_job(stop)
            starts.append(core._last_start_ns)   # the core's own start time (a later read drifts)
            core.publish_if_current(job, [0] * 7, 0.0, lambda s: None)
    finally:
        stop.set()
    gaps = np.diff(starts) * 1e-9
    assert np.all(gaps >= 0.2 - 1e-6), gaps
    assert np.median(gaps) < 0.2 + 0.05, gaps   # polling granularity, not a real-time period (0.667 s sim)


def test_instruction_storm_every_published_action_matches_start_and_publish():
    """Threads: a worker that 'infers' for a random few ms, and a storm of instruction changes.
    Every published action's instruction is the one in force when its job started and when it
    was published."""
    c = FakeClock()
    core = _core(c)
    core.set_instruction('i0')
    stop = threading.Event()
    published, violations = [], []
    rng = np.random.default_rng(0)

    def feeder():
        while not stop.is_set():
            core.offer_frame(RGB, 'h', c.t, c.t)
            time.sleep(0.0005)

    def worker():
        while True:
            job = core.next_job(stop)
            if job is None:
                return
            time.sleep(float(rng.uniform(0, 0.003)))

            def publish(seq, job=job):
                if core.instruction != job.instruction:
                    violations.append((seq, job.instruction, core.instruction))
                published.append(job.instruction)

            core.publish_if_current(job, [0] * 7, 0.0, publish)

    threads = [threading.Thread(target=feeder, daemon=True), threading.Thread(target=worker, daemon=True)]
    for t in threads:
        t.start()
    for i in range(1, 400):
        core.set_instruction(f'i{i}')
        time.sleep(float(rng.uniform(0, 0.004)))
    stop.set()
    with core.cond:
        core.cond.notify_all()
    for t in threads:
        t.join(5.0)
    assert not violations
    assert len(published) > 20 and core.counters['actions_published'] == len(published)


def test_instruction_check_uses_the_given_engine_check():
    assert VlaCore.instruction_problem('', validate_instruction) is None
    assert 'empty' in VlaCore.instruction_problem('   \t ', validate_instruction)
    assert VlaCore.instruction_problem('pick up the cup', validate_instruction) is None

    def token_limit(text):
        if len(text.encode()) > 40:
            raise InvalidInstructionError('too many tokens')

    assert VlaCore.instruction_problem('\U0001F600' * 20, token_limit) == 'too many tokens'
    c = FakeClock()
    core = _core(c)
    core.set_instruction('keep me')
    why = core.reject_instruction('too many tokens')
    assert core.instruction == 'keep me' and 'keep me' in why and core.counters['instructions_rejected'] == 1


def test_error_state_and_model_diagnostics_follow_the_backend():
    c = FakeClock()
    core = VlaCore(c.now_ns, c.monotonic)
    assert core.state()[0] == vla_core.UNCONFIGURED and core.levels().model == 'WARN'
    core.set_configured(True)
    core.set_active(True)
    core.set_instruction('pick')
    assert core.levels().model == 'OK'
    core.report_error(ConnectionError('server down'))
    state, why = core.state()
    assert state == vla_core.ERROR and 'server down' in why
    lv = core.levels()
    assert lv.model == 'ERROR' and lv.inference == 'ERROR' and lv.counters['inference_errors'] == 1
    core.offer_frame(RGB, 'h', c.t, c.t)
    assert core.publish_if_current(_take(core), [0] * 7, 0.05, lambda s: None)
    assert core.state()[0] == vla_core.RUNNING and core.levels().model == 'OK'
    c.advance(vla_core.IDLE_AFTER_S + 0.1)
    assert core.state()[0] == vla_core.IDLE


def test_rejected_frames_and_qos_problems_are_reported():
    c = FakeClock()
    core = _core(c)
    core.frame_received()
    assert 'bomb' in core.frame_rejected('bomb')
    assert core.counters['frames_rejected'] == 1 and core.levels().camera == 'WARN'
    core.qos_incompatible('RELIABILITY', 1)
    assert 'QoS' in core.state()[1]
    core.reset()
    assert 'QoS' not in core.state()[1] and core.counters['frames_rejected'] == 0


def test_worker_slot_never_doubles_a_live_worker():
    release = threading.Event()
    running = []

    def slow_worker(stop):
        running.append(threading.current_thread())
        release.wait(10.0)       # a long forward pass that ignores the stop request meanwhile

    slot = WorkerSlot('w')
    assert slot.start(slow_worker) == ''
    assert not slot.stop(0.05)            # deactivate gives up waiting ...
    assert slot.alive()                   # ... but does not forget the thread
    why = slot.start(slow_worker, wait_s=0.05)
    assert 'still running' in why and len(running) == 1
    release.set()
    assert slot.start(slow_worker, wait_s=5.0) == '' and len(running) == 2
    assert slot.stop(5.0) and not slot.alive()


def test_each_worker_has_its_own_stop_event():
    events = []

    def worker(stop):
        events.append(stop)
        stop.wait(5.0)

    slot = WorkerSlot('w')
    slot.start(worker)
    assert slot.stop(5.0)
    slot.start(worker)
    time.sleep(0.05)
    assert events[0].is_set() and not events[1].is_set()
    assert slot.stop(5.0)


def test_the_core_imports_no_rclpy():
    import subprocess
    import sys

    code = ('import sys, openvla_ros.nodes.vla_core, openvla_ros.nodes.vla_debug_image; '
            'sys.exit(int("rclpy" in sys.modules))')
    assert subprocess.run([sys.executable, '-c', code], timeout=120).returncode == 0
