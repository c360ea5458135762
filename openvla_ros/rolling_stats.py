"""Event rate and value percentiles over a sliding time window (ROS-free: used by the node
cores and, through ``nodes.common``, by the nodes)."""
from __future__ import annotations

import threading
from collections import deque


class RollingStats:
    """Event rate and value percentiles over a sliding time window (thread-safe).

    Times are seconds on any monotonic-ish clock the caller chooses (wall or node clock)."""

    def __init__(self, window_s: float = 10.0, max_samples: int = 10000):
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def add(self, t: float, value: float = 0.0) -> None:
        with self._lock:
            self._samples.append((t, value))

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()

    def _window(self, now: float) -> list[tuple[float, float]]:
        with self._lock:
            while self._samples and self._samples[0][0] < now - self.window_s:
                self._samples.popleft()
            return list(self._samples)

    def rate_hz(self, now: float) -> float:
        s = self._window(now)
        if len(s) < 2:
            return 0.0
        span = max(now - s[0][0], s[-1][0] - s[0][0])
        return (len(s) - 1) / span if span > 0 else 0.0

    def percentile(self, now: float, q: float) -> float:
        """q in [0, 100]; NaN when there are no samples in the window."""
        values = sorted(v for _, v in self._window(now))
        if not values:
            return float('nan')
        k = min(len(values) - 1, max(0, int(round(q / 100.0 * (len(values) - 1)))))
        return values[k]

    def count(self, now: float) -> int:
        return len(self._window(now))
