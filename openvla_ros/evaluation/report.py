"""Evaluation outputs: per-episode results written as they finish, summaries, videos and plots.

``episodes.jsonl`` gets one line per finished episode, flushed at once, and ``summary.json`` /
``summary.md`` are rewritten after every episode, so an interrupted or failing run keeps
everything it has measured. Layout of an output directory::

    episodes.jsonl                 one JSON object per episode (policy, task, seed, success, reason, ...)
    summary.json, summary.md       per policy and task: successes / n, rate, 95% Wilson interval
    comparison.png                 success rate per task and policy, with the intervals
    episodes/<policy>/<task>/seed_<seed>.mp4 / .png   camera video and trajectory plot
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from openvla_ros.evaluation.stats import wilson_interval

EPISODES_FILE = 'episodes.jsonl'
SUMMARY_JSON = 'summary.json'
SUMMARY_MD = 'summary.md'
COMPARISON_PNG = 'comparison.png'


def write_video(stem: Path, frames: list, fps: float) -> Path:
    """``stem``.mp4 (imageio-ffmpeg) or, without it, ``stem``.gif at no more than 5 frames/s."""
    import imageio.v3 as iio

    stem.parent.mkdir(parents=True, exist_ok=True)
    images = np.stack(frames)
    try:
        import imageio_ffmpeg  # noqa: F401  (the MP4 writer's backend)
        path = stem.with_suffix('.mp4')
        # libx264 needs even sizes; pad by one row / column instead of resampling
        h, w = images.shape[1:3]
        images = np.pad(images, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
        iio.imwrite(path, images, fps=fps, codec='libx264')
        return path
    except ImportError:
        pass
    step = max(1, int(round(fps / 5.0)))
    path = stem.with_suffix('.gif')
    iio.imwrite(path, images[::step], duration=1000.0 * step / fps, loop=0)
    return path


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_episode(path: Path, result, objects: dict | None = None, period_s: float = 0.2) -> Path:
    """Actions, finger-tip trajectory and gripper over the steps, and the path seen from above."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(11, 7))
    grid = fig.add_gridspec(3, 2, width_ratios=(2, 1))
    t = np.arange(len(result.tip_positions)) * period_s
    ax = fig.add_subplot(grid[0, 0])
    for i, name in enumerate(('dx', 'dy', 'dz')):
        ax.step(t[:-1], result.actions[:, i], where='post', label=f'{name} [m]')
    ax.set_ylabel('action'); ax.legend(fontsize=7, loc='upper right')
    ax = fig.add_subplot(grid[1, 0])
    for i, name in enumerate('xyz'):
        ax.plot(t, result.tip_positions[:, i], label=f'finger tips {name} [m]')
    ax.set_ylabel('position'); ax.legend(fontsize=7, loc='upper right')
    ax = fig.add_subplot(grid[2, 0])
    if len(result.actions):
        ax.step(t[:-1], result.actions[:, 6], where='post', label='commanded (1 = open)')
    ax.plot(t, result.gripper, label='measured opening')
    ax.set_ylabel('gripper'); ax.set_xlabel('sim time [s]'); ax.legend(fontsize=7, loc='upper right')
    top = fig.add_subplot(grid[:, 1])
    top.plot(result.tip_positions[:, 1], result.tip_positions[:, 0], '.-', ms=3, label='finger tips')
    for name, (x, y, _) in (objects or {}).items():
        top.plot(y, x, 'o', ms=8)
        top.annotate(name.removeprefix('obj_'), (y, x), fontsize=7)
    top.set_xlabel('y [m]'); top.set_ylabel('x [m]'); top.invert_xaxis(); top.set_aspect('equal')
    top.set_title('from above (start layout)', fontsize=9)
    fig.suptitle(f'{result.task} seed {result.seed}: {result.reason} after {result.steps} steps\n'
                 f'"{result.instruction}"', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def load_episodes(out: Path) -> list[dict]:
    path = out / EPISODES_FILE
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # a line cut by a crash mid-write: everything before it is still valid
            if n != len(path.read_text().splitlines()):
                raise ValueError(f'{path}:{n}: not valid JSON') from None
    return rows


def summarize(episodes: list[dict]) -> dict:
    """Per policy and task: n, successes, rate, 95% Wilson interval, mean steps, failure reasons."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for e in episodes:
        groups[e['policy']][e['task']].append(e)
    out = {}
    for policy, per_task in groups.items():
        out[policy] = {}
        for task, rows in per_task.items():
            k, n = sum(bool(r['success']) for r in rows), len(rows)
            lo, hi = wilson_interval(k, n)
            reasons: dict = defaultdict(int)
            for r in rows:
                if not r['success']:
                    reasons[r['reason'].split(':')[0]] += 1
            out[policy][task] = {'episodes': n, 'successes': k, 'success_rate': k / n,
                                 'wilson95_low': lo, 'wilson95_high': hi,
                                 'mean_steps': float(np.mean([r['steps'] for r in rows])),
                                 'seeds': sorted(r['seed'] for r in rows), 'failures': dict(reasons)}
    return out


def markdown(summary: dict, meta: dict) -> str:
    lines = ['# openvla-eval', '']
    for key, value in meta.items():
        lines.append(f'- {key}: `{value}`')
    lines += ['', '| policy | task | success | rate | 95% Wilson interval | mean steps | failures |',
              '|---|---|---|---|---|---|---|']
    for policy, per_task in summary.items():
        for task, s in per_task.items():
            failures = ', '.join(f'{k} {v}' for k, v in s['failures'].items()) or '–'
            lines.append(f"| {policy} | {task} | {s['successes']}/{s['episodes']} | {100 * s['success_rate']:.0f}% "
                         f"| {100 * s['wilson95_low']:.0f}–{100 * s['wilson95_high']:.0f}% "
                         f"| {s['mean_steps']:.1f} | {failures} |")
    return '\n'.join(lines) + '\n'


def plot_comparison(path: Path, summary: dict) -> Path:
    """Grouped bars: success rate per task, one bar per policy, Wilson intervals as error bars."""
    plt = _pyplot()
    policies = list(summary)
    tasks = sorted({t for p in summary.values() for t in p})
    width = 0.8 / max(len(policies), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    x = np.arange(len(tasks))
    for i, policy in enumerate(policies):
        rates, lo, hi = [], [], []
        for t in tasks:
            s = summary[policy].get(t)
            rates.append(s['success_rate'] if s else math.nan)
            lo.append(s['success_rate'] - s['wilson95_low'] if s else 0.0)
            hi.append(s['wilson95_high'] - s['success_rate'] if s else 0.0)
        ax.bar(x + (i - (len(policies) - 1) / 2) * width, rates, width, yerr=[lo, hi], capsize=3, label=policy)
    ax.set_xticks(x, tasks, rotation=20, ha='right', fontsize=8)
    ax.set_ylim(0, 1.05); ax.set_ylabel('success rate (95% Wilson)'); ax.legend(fontsize=8)
    ax.grid(True, axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


class ResultsWriter:
    """Appends episodes to ``episodes.jsonl`` and rewrites the summaries after each one."""

    def __init__(self, out: Path, meta: dict):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.episodes = load_episodes(self.out)

    def done(self, policy: str, task: str, seed: int) -> bool:
        return any(e['policy'] == policy and e['task'] == task and e['seed'] == seed for e in self.episodes)

    def add(self, row: dict) -> None:
        with open(self.out / EPISODES_FILE, 'a') as f:
            f.write(json.dumps(row) + '\n')
            f.flush()
        self.episodes.append(row)
        self.write_summary()

    def write_summary(self) -> dict:
        summary = summarize(self.episodes)
        doc = {'meta': self.meta, 'results': summary}
        tmp = self.out / (SUMMARY_JSON + '.tmp')
        tmp.write_text(json.dumps(doc, indent=2) + '\n')
        tmp.replace(self.out / SUMMARY_JSON)
        (self.out / SUMMARY_MD).write_text(markdown(summary, self.meta))
        return summary
