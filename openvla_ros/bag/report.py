"""The offline evaluation's plots and human-readable table (matplotlib Agg, no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from openvla_ros.action_message import dim_names
from openvla_ros.stamps import NS_PER_S

ACTIONS_PLOT = 'actions.png'
ERROR_PLOT = 'error.png'


def plot_actions(predictions, references, out_dir: Path) -> list[Path]:
    """Predicted vs recorded action per dimension over time (and |error| when references exist).

    ``references[i]`` is the reference matched with ``predictions[i]`` or None."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    t0 = predictions[0].stamp_ns
    t = np.array([(p.stamp_ns - t0) / NS_PER_S for p in predictions])
    pred = np.stack([p.action for p in predictions])
    names = dim_names(pred.shape[1])
    matched = [(i, r) for i, r in enumerate(references) if r is not None and r.action.shape == pred[i].shape]
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.6 * len(names)), sharex=True, squeeze=False)
    for d, ax in enumerate(axes[:, 0]):
        ax.plot(t, pred[:, d], '.-', label='predicted')
        if matched:
            ax.plot([t[i] for i, _ in matched], [r.action[d] for _, r in matched], 'x--', label='recorded')
        ax.set_ylabel(names[d])
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(loc='upper right', fontsize='small')
    axes[-1, 0].set_xlabel('image stamp [s] from the first frame')
    fig.tight_layout()
    paths = [out_dir / ACTIONS_PLOT]
    fig.savefig(paths[0], dpi=80)
    plt.close(fig)
    if matched:
        err = np.stack([np.abs(pred[i] - r.action) for i, r in matched])
        fig, ax = plt.subplots(figsize=(8, 3))
        for d, name in enumerate(names):
            ax.plot([t[i] for i, _ in matched], err[:, d], '.-', label=name)
        ax.set_xlabel('image stamp [s] from the first frame')
        ax.set_ylabel('|predicted - recorded|')
        ax.legend(ncol=len(names), fontsize='small')
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / ERROR_PLOT)
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    return paths


def summary_table(report: dict) -> str:
    c = report['counts']
    lines = [
        f"bag        {report['bag']}{'' if report['complete'] else '  (INCOMPLETE: ' + '; '.join(report['problems']) + ')'}",
        f"model      {report['model_id']}  unnorm_key {report['unnorm_key']}",
        f"frames     {c['frames_evaluated']} evaluated / {c['frames_selected']} selected / {c['frames_read']} read "
        f"/ {c['frames_in_bag']} in bag; skipped: {c['frames_skipped_conversion']} conversion, "
        f"{c['frames_without_instruction']} no instruction, {c['inference_errors']} inference errors",
        f"sizes      {', '.join(f'{k}: {v}' for k, v in report['frame_sizes'].items()) or '-'}",
        f"output     {report['output_bag']}",
        f"report     {report['report_dir']}",
    ]
    m = report['metrics']
    if m is None:
        lines.append(f"reference  {report['reference_topic'] or 'none'}: {c['matched']} matched, {c['unmatched']} unmatched")
        return '\n'.join(lines)
    lines.append(f"reference  {report['reference_topic']} ({report['match']}): {c['matched']} matched, "
                 f"{c['unmatched']} unmatched, {c['dimension_mismatch']} wrong dimension")
    lines.append(f"{'dim':<10}{'L1 mean':>14}{'RMSE':>14}")
    for name in m['dims']:
        lines.append(f"{name:<10}{m['l1_mean'][name]:>14.6g}{m['rmse'][name]:>14.6g}")
    lines.append(f"{'all':<10}{m['l1_mean_overall']:>14.6g}{m['rmse_overall']:>14.6g}")
    if m['gripper_agreement'] is not None:
        lines.append(f"gripper agreement  {m['gripper_agreement']:.3f}")
    if m['token_accuracy'] is not None:
        lines.append(f"token accuracy     {m['token_accuracy']:.3f} (exact action match {m['action_exact_token_match']:.3f})")
    return '\n'.join(lines)
