"""One worker thread owns the policy; requests reach it through a bounded queue.

A GPU runs one forward pass at a time, so concurrency is turned into batching rather than into
threads fighting over the device: when the worker is free it takes the oldest request plus every
other request already waiting (up to ``max_batch``) and runs them as one
``policy.predict_batch`` call. A full queue is refused at once (the caller answers 503) instead
of growing latency without bound. A request whose caller gave up before the worker reached it is
skipped, so timed-out work never occupies the device.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from openvla_ros.engine.api import Policy, PredictionResult

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The request queue is at capacity; the caller should retry later."""


class WorkerStoppedError(RuntimeError):
    """The worker is not running (server shutting down or crashed)."""


@dataclass
class ServedPrediction:
    result: PredictionResult
    queue_wait_s: float      # from submit() until the worker started the model call
    batch_size: int          # requests that shared this model call


@dataclass
class _Job:
    image: np.ndarray
    instruction: str
    unnorm_key: str | None
    submitted_at: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class InferenceWorker:
    """Serve ``policy`` from one thread, batching requests that wait at the same time."""

    def __init__(self, policy: Policy, max_batch: int = 4, queue_size: int = 32):
        if max_batch < 1:
            raise ValueError(f'max_batch must be >= 1, got {max_batch}')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        self.policy = policy
        self.max_batch = max_batch
        self.queue_size = queue_size
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='openvla-inference', daemon=True)
        self._busy = False
        self._batch_supported = True
        self.requests_served = 0
        self.batches_run = 0

    # ---- caller side ----
    def start(self) -> None:
        self._thread.start()

    def submit(self, image: np.ndarray, instruction: str, unnorm_key: str | None) -> Future:
        """Queue one request; the future resolves to a :class:`ServedPrediction`.

        Requests may be queued before :meth:`start`; they are served once the worker runs."""
        if self._stop.is_set() or (self._thread.ident is not None and not self._thread.is_alive()):
            raise WorkerStoppedError('the inference worker is not running')
        job = _Job(image, instruction, unnorm_key)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f'the server is busy: {self.queue_size} requests are already '
                                 'waiting; retry later') from None
        return job.future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        while True:   # nobody will serve what is still queued
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(WorkerStoppedError('the server is shutting down'))

    # ---- worker side ----
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # Futures cancelled by a caller that timed out are dropped here, unstarted.
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self._busy = True
            try:
                self._serve(live)
            except BaseException as exc:  # never leave a caller waiting on an unresolved future
                log.exception('inference worker failed')
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._busy = False

    def _serve(self, jobs: list[_Job]) -> None:
        started = time.monotonic()
        results: list[PredictionResult | BaseException] | None = None
        if len(jobs) > 1 and self._batch_supported:
            try:
                batch = self.policy.predict_batch([j.image for j in jobs],
                                                  [j.instruction for j in jobs],
                                                  [j.unnorm_key for j in jobs])
                if len(batch) != len(jobs):
                    raise RuntimeError(f'predict_batch returned {len(batch)} results for '
                                       f'{len(jobs)} requests')
                results = list(batch)
                self.batches_run += 1
            except (NotImplementedError, AttributeError):
                log.warning('policy has no working predict_batch; serving requests one by one')
                self._batch_supported = False
            except Exception as exc:
                # One bad request must not fail the others: retry each on its own so the
                # error lands on the request that caused it.
                log.info('batch of %d failed (%s: %s); retrying one by one', len(jobs),
                         type(exc).__name__, exc)
        if results is not None:
            for job, res in zip(jobs, results):
                job.future.set_result(ServedPrediction(res, started - job.submitted_at,
                                                       len(jobs)))
            self.requests_served += len(jobs)
            return
        for job in jobs:
            item_started = time.monotonic()
            try:
                res = self.policy.predict(job.image, job.instruction, job.unnorm_key)
            except Exception as exc:
                job.future.set_exception(exc)
            else:
                job.future.set_result(ServedPrediction(res, item_started - job.submitted_at, 1))
            self.batches_run += 1
            self.requests_served += 1
