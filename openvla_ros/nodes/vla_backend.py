"""The one place where vla_node turns its parameters into a policy backend."""
from __future__ import annotations

from openvla_ros import defaults
from openvla_ros.engine.api import Policy, PolicyOptions


def policy_options(p: dict) -> PolicyOptions:
    return PolicyOptions(
        dtype=p['dtype'], device=p['device'], quantization=p['quantization'],
        bnb_4bit_quant_type=p['bnb_4bit_quant_type'], bnb_4bit_compute_dtype=p['bnb_4bit_compute_dtype'],
        prompt_template=p['prompt_template'], image_pipeline=p['image_pipeline'],
        center_crop=bool(p['center_crop']), max_instruction_chars=defaults.MAX_INSTRUCTION_CHARS,
        self_test=bool(p['self_test']), extra_latency_s=float(p['test.extra_latency_s']))


def make_policy(p: dict) -> Policy:
    """``p``: vla_node's parameter values. Raises the engine's / client's OpenVLAError subclasses."""
    if p['backend'] == 'local':
        from openvla_ros.engine import load_policy

        return load_policy(p['model_path'], policy_options(p))
    if p['backend'] == 'remote':
        from openvla_ros.server.client import RemotePolicy

        return RemotePolicy(p['server_url'], timeout_s=float(p['server_timeout_s']),
                            retries=int(p['server_retries']), backoff_s=float(p['server_backoff_s']),
                            token=p['server_token'] or None)
    raise ValueError(f'unknown backend {p["backend"]!r}')


def device_label(p: dict) -> str:
    """What the status reports as device: the torch device, or the server URL for remote."""
    return p['server_url'] if p['backend'] == 'remote' else p['device']
