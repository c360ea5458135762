"""The logic of vla_node without ROS: latest-frame handling, the worker's pacing and staleness
policy, the atomic instruction check + publish, the speculative draft, counters, state and the
values of status and diagnostics.

Time comes from injected clocks, as in :class:`openvla_ros.control.safety.SafetyController`:
``now_ns`` is the node clock (sim time under ``use_sim_time``: image ages, the rate limit and the
worker's pacing use it, so a simulator running at 0.3x real time still gets ``max_rate_hz`` of sim
time) and ``monotonic`` is a steady clock in seconds (rolling statistics and the idle timeout,
which must keep moving while a simulation is paused). The node adapts topics, parameters and
threads to this class; everything here is testable in-process.

Thread safety: every public method takes the one condition lock; ``publish_if_current`` calls the
publish function while holding it, so no instruction change can come between the check that the
instruction is still the one the inference started with and the publish.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from openvla_ros import defaults
from openvla_ros.rolling_stats import RollingStats

STATS_WINDOW_S = 10.0
# RUNNING turns back into IDLE when no action was published for this long.
IDLE_AFTER_S = 2.0
# Longest single wait of the worker: under sim time the deadline is in node-clock time, which
# moves at an unknown pace, so the worker looks at the clock again at least this often.
MAX_WAIT_S = 0.01
IDLE_WAIT_S = 0.5

# States: the values of openvla_ros/msg/VlaStatus (checked by a test against the message).
UNCONFIGURED, INACTIVE, IDLE, RUNNING, PAUSED, ERROR = 0, 1, 2, 3, 4, 5
STATE_NAMES = {UNCONFIGURED: 'UNCONFIGURED', INACTIVE: 'INACTIVE', IDLE: 'IDLE', RUNNING: 'RUNNING',
               PAUSED: 'PAUSED', ERROR: 'ERROR'}
COUNTERS = ('frames_received', 'frames_rejected', 'frames_dropped', 'frames_stale',
            'actions_published', 'inference_errors', 'instructions_rejected', 'qos_incompatible')


@dataclass
class Frame:
    rgb: np.ndarray
    header: object          # the source image's header, handed back to the publisher untouched
    stamp_ns: int
    received_ns: int        # node clock at reception


@dataclass
class Job:
    """One inference: the frame, and what was in force when it was taken."""
    frame: Frame
    instruction: str
    age_s: float
    draft_token_ids: tuple[int, ...] | None
    generation: int          # instruction generation at start (bumped by every change / reset)


@dataclass
class Levels:
    """Diagnostics levels ('OK', 'WARN' or 'ERROR') and the counters they are derived from."""
    model: str
    inference: str
    camera: str
    instruction: str
    counters: dict = field(default_factory=dict)


class VlaCore:

    def __init__(self, now_ns: Callable[[], int], monotonic: Callable[[], float] = time.monotonic, *,
                 max_rate_hz: float = 0.0, max_image_age_s: float = 1.0, enabled: bool = True):
        self._now_ns = now_ns
        self._mono = monotonic
        self.cond = threading.Condition()
        self.max_rate_hz = float(max_rate_hz)
        self.max_image_age_s = float(max_image_age_s)
        self.enabled = bool(enabled)
        self.configured = False
        self.active = False
        self.instruction = ''
        self.error = ''            # non-empty: the last inference failed (state ERROR)
        self.last_event = ''       # the latest notable event (rejection, stale frame, QoS problem)
        self.qos_problem = ''      # kept in the status until reset or configure
        self.last_frame_stamp_ns: int | None = None
        self._frame: Frame | None = None
        self._generation = 0
        self._draft: tuple[str, tuple[int, ...]] | None = None
        self._last_start_ns: int | None = None
        self._last_action_mono = -math.inf
        self.latency = RollingStats(STATS_WINDOW_S)
        self.published = RollingStats(STATS_WINDOW_S)
        self.counters: dict[str, int] = {}
        self.sequence = 0
        self._reset_counters()

    # ------------------------------------------------------------------ parameters, instruction
    def set_param(self, name: str, value) -> None:
        with self.cond:
            if name == 'max_rate_hz':
                # Only the last start is stored: the deadline is derived from the rate in force at
                # every look, so lowering the rate (0.01 -> 0) takes effect at once.
                self.max_rate_hz = float(value)
            elif name == 'max_image_age_s':
                self.max_image_age_s = float(value)
            elif name == 'enabled':
                self.enabled = bool(value)
            self.cond.notify_all()

    def set_instruction(self, text: str) -> str:
        """Replace (or, with '', clear) the instruction; it stays until replaced: no silent expiry."""
        with self.cond:
            if text != self.instruction:
                self._generation += 1
                self._draft = None
            self.instruction = text
            self.last_event = f'instruction set: {text!r}' if text else 'instruction cleared'
            self.cond.notify_all()
            return self.last_event

    @staticmethod
    def instruction_problem(text: str, check: Callable[[str], object]) -> str | None:
        """Why ``text`` cannot be the instruction ('' clears it and is always fine). ``check`` is
        the engine's check: ``Policy.check_instruction`` of the loaded backend (characters and,
        locally, token positions) or the character-level ``validate_instruction``."""
        if text == '':
            return None
        from openvla_ros.engine.api import InvalidInstructionError

        try:
            check(text)
        except InvalidInstructionError as exc:
            return str(exc)
        return None

    def reject_instruction(self, reason: str) -> str:
        with self.cond:
            self.counters['instructions_rejected'] += 1
            self.last_event = f'instruction rejected ({reason}); keeping {self.instruction!r}'
            return self.last_event

    def reset(self) -> str:
        """~/reset: instruction, counters, frame, error, QoS problem and draft cleared."""
        with self.cond:
            self.instruction = ''
            self._generation += 1
            self._draft = None
            self._reset_counters()
            self._frame = None
            self.error = ''
            self.qos_problem = ''
            self.latency.clear()
            self.published.clear()
            self.last_event = 'reset: instruction and counters cleared'
            self.cond.notify_all()
            return self.last_event

    def _reset_counters(self) -> None:
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.sequence = 0

    # ------------------------------------------------------------------ lifecycle flags
    def set_configured(self, configured: bool, event: str | None = None) -> None:
        with self.cond:
            if configured:
                self._reset_counters()
                self.error = ''
                self.qos_problem = ''
            self.configured = configured
            self._frame = None
            if event is not None:
                self.last_event = event

    def set_active(self, active: bool) -> None:
        with self.cond:
            self.active = active
            self._frame = None
            self._last_start_ns = None
            self.cond.notify_all()

    def note(self, event: str) -> None:
        with self.cond:
            self.last_event = event

    # ------------------------------------------------------------------ inputs
    def frame_received(self) -> None:
        with self.cond:
            self.counters['frames_received'] += 1

    def frame_rejected(self, reason: str) -> str:
        with self.cond:
            self.counters['frames_rejected'] += 1
            self.last_event = f'image rejected: {reason}'
            return self.last_event

    def offer_frame(self, rgb: np.ndarray, header, stamp_ns: int, received_ns: int) -> None:
        """Keep the newest frame; an overwritten, unused one counts as dropped."""
        with self.cond:
            self.last_frame_stamp_ns = stamp_ns
            if not self.active:
                return
            if self._frame is not None:
                self.counters['frames_dropped'] += 1
            self._frame = Frame(rgb, header, stamp_ns, received_ns)
            self.cond.notify_all()

    def qos_incompatible(self, policy: str, total: int) -> str:
        with self.cond:
            self.counters['qos_incompatible'] += 1
            self.last_event = self.qos_problem = (
                f'QoS incompatible with a publisher (policy {policy}, {total} so far): no data from it')
            return self.last_event

    # ------------------------------------------------------------------ worker
    def _ready(self) -> bool:
        return self.active and self._frame is not None and bool(self.instruction) and self.enabled

    def rate_wait_s(self) -> float:
        """Node-clock seconds until ``max_rate_hz`` allows the next start (0: now)."""
        with self.cond:
            return self._rate_wait_s(self._now_ns())

    def _rate_wait_s(self, now_ns: int) -> float:
        if self.max_rate_hz <= 0 or self._last_start_ns is None:
            return 0.0
        if now_ns < self._last_start_ns:   # the clock went back (sim reset, bag loop): start over
            self._last_start_ns = None
            return 0.0
        return max(0.0, self._last_start_ns * 1e-9 + 1.0 / self.max_rate_hz - now_ns * 1e-9)

    def next_job(self, stop: threading.Event) -> Job | None:
        """Block until a frame may be inferred on (or ``stop`` is set: None). Stale frames are
        counted, reported through ``last_event`` and skipped here; they also clear the draft."""
        with self.cond:
            while True:
                if stop.is_set():
                    return None
                if not self._ready():
                    self.cond.wait(IDLE_WAIT_S)
                    continue
                now = self._now_ns()
                wait = self._rate_wait_s(now)
                if wait > 0:
                    self.cond.wait(min(wait, MAX_WAIT_S))
                    continue
                frame, self._frame = self._frame, None
                age_s = (now - frame.stamp_ns) * 1e-9
                max_age = self.max_image_age_s
                if frame.stamp_ns == 0 or (max_age > 0 and abs(age_s) > max_age):
                    self.counters['frames_stale'] += 1
                    self._draft = None   # the scene may have moved on: the last action is no guess
                    self.last_event = (f'stale image skipped: age {age_s:.3f} s > {max_age} s'
                                       if frame.stamp_ns else 'image skipped: header.stamp is zero')
                    return Job(frame, self.instruction, age_s, None, -1)
                self._last_start_ns = now
                draft = self._draft[1] if self._draft and self._draft[0] == self.instruction else None
                return Job(frame, self.instruction, age_s, draft, self._generation)

    @staticmethod
    def is_stale(job: Job) -> bool:
        return job.generation < 0

    def publish_if_current(self, job: Job, token_ids: Sequence[int], latency_s: float,
                           publish: Callable[[int], None]) -> bool:
        """Publish ``job``'s result unless the node was paused or deactivated, or the instruction
        changed (or was reset) since the job started. ``publish(sequence)`` runs under the lock,
        so the instruction in force at publish time is the job's. Returns whether it published."""
        with self.cond:
            if not (self.active and self.enabled and self._generation == job.generation
                    and self.instruction == job.instruction):
                self.last_event = 'prediction discarded: paused, deactivated or instruction changed meanwhile'
                return False
            publish(self.sequence)
            self.sequence += 1
            self.counters['actions_published'] += 1
            self.error = ''
            self._draft = (job.instruction, tuple(int(t) for t in token_ids))
            now = self._mono()
            self._last_action_mono = now
            self.latency.add(now, latency_s)
            self.published.add(now)
            return True

    def report_error(self, exc: BaseException) -> str:
        with self.cond:
            self.counters['inference_errors'] += 1
            self.error = f'{type(exc).__name__}: {exc}'
            self.last_event = self.error
            self._draft = None
            return self.error

    def draft_for(self, instruction: str) -> tuple[int, ...] | None:
        with self.cond:
            return self._draft[1] if self._draft and self._draft[0] == instruction else None

    # ------------------------------------------------------------------ monitoring
    def state(self) -> tuple[int, str]:
        """(state, why), with a QoS problem always in the reason."""
        state, message = self._state_and_reason()
        if self.qos_problem and self.qos_problem not in message:
            message = f'{self.qos_problem}; {message}' if message else self.qos_problem
        return state, message

    def _state_and_reason(self) -> tuple[int, str]:
        with self.cond:
            if not self.configured:
                return UNCONFIGURED, self.last_event
            if not self.active:
                return INACTIVE, self.last_event
            if not self.enabled:
                return PAUSED, 'paused through ~/enable or the enabled parameter'
            if self.error:
                return ERROR, self.error
            if not self.instruction:
                return IDLE, 'no instruction: publish one on ' + defaults.INSTRUCTION_TOPIC
            wait = self._rate_wait_s(self._now_ns())
            if wait > 0.5 and self._frame is not None:
                return RUNNING, (f'rate limit: max_rate_hz={self.max_rate_hz:g}, next inference in '
                                 f'{wait:.1f} s')
            if self._mono() - self._last_action_mono > IDLE_AFTER_S:
                return IDLE, self.last_event or 'waiting for camera images'
            return RUNNING, self.last_event

    def image_age_s(self) -> float:
        with self.cond:
            stamp = self.last_frame_stamp_ns
        return -1.0 if stamp is None else (self._now_ns() - stamp) * 1e-9

    def rates(self) -> tuple[float, float, float]:
        """(inference rate Hz, latency p50 s, latency p95 s); -1 for an unknown latency."""
        now = self._mono()
        with self.cond:
            return (self.published.rate_hz(now), _nan_to(self.latency.percentile(now, 50), -1.0),
                    _nan_to(self.latency.percentile(now, 95), -1.0))

    def levels(self) -> Levels:
        """Diagnostics levels. The model is ERROR while the backend fails (the last inference
        raised), WARN when no model is loaded, OK otherwise."""
        state, _ = self.state()
        with self.cond:
            c = dict(self.counters)
            model = 'ERROR' if state == ERROR else 'WARN' if state == UNCONFIGURED else 'OK'
            return Levels(
                model=model,
                inference='ERROR' if state == ERROR else 'OK',
                camera='WARN' if (c['qos_incompatible'] or c['frames_rejected']) else 'OK',
                instruction='OK' if self.instruction else 'WARN',
                counters=c)


class WorkerSlot:
    """At most one worker thread, each with its own stop event; a worker that is still running
    (e.g. inside a long forward pass) is never forgotten, so it can be neither revived nor doubled."""

    def __init__(self, name: str):
        self._name = name
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, target: Callable[[threading.Event], None], wait_s: float = 0.0) -> str:
        """Start ``target(stop_event)``; '' on success, else why not (the previous worker is still
        running after ``wait_s`` seconds)."""
        if self.alive():
            self._stop.set()
            self._thread.join(timeout=wait_s)
            if self._thread.is_alive():
                return ('the previous inference worker is still running (inside a forward pass); '
                        'try again when it has finished')
        self._stop = threading.Event()
        self._thread = threading.Thread(target=target, args=(self._stop,), name=self._name, daemon=True)
        self._thread.start()
        return ''

    def stop(self, timeout_s: float, notify: Callable[[], None] | None = None) -> bool:
        """Ask the worker to stop and wait up to ``timeout_s``; True when none is running. A worker
        still running afterwards stays referenced (``alive``), and its stop event stays set."""
        if self._thread is None:
            return True
        self._stop.set()
        if notify is not None:
            notify()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            return False
        self._thread = None
        return True


def _nan_to(x: float, default: float) -> float:
    return default if math.isnan(x) else x
