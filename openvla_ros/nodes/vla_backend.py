"""The one place where vla_node turns its parameters into a policy backend."""
from __future__ import annotations

from openvla_ros.engine.api import OpenVLAError, Policy, PolicyOptions
from openvla_ros.policy.options import POLICY_SPECS, REMOTE_SPECS, RemoteOptions


def policy_options(p: dict) -> PolicyOptions:
    return PolicyOptions(**{s.field: s.type(p[s.ros_name]) for s in POLICY_SPECS if s.ros_name})


def remote_options(p: dict) -> RemoteOptions:
    return RemoteOptions(**{s.field: s.type(p[s.ros_name]) for s in REMOTE_SPECS})


def make_policy(p: dict) -> Policy:
    """``p``: vla_node's parameter values. Raises the engine's / client's OpenVLAError subclasses."""
    if p['backend'] == 'local':
        from openvla_ros.engine import load_policy

        return load_policy(p['model_path'], policy_options(p))
    if p['backend'] == 'remote':
        from openvla_ros.policy.remote import RemotePolicy

        policy = RemotePolicy.from_options(remote_options(p))
        try:
            policy.probe()   # learn the server's routes now; a server not up yet is probed later
        except OpenVLAError:
            pass
        return policy
    raise ValueError(f'unknown backend {p["backend"]!r}')


def model_label(p: dict, policy: Policy) -> str:
    """The model the status reports. Remote: what the server says it runs (a plain ``/act``
    server says nothing, so its URL and kind, with the configured ``model_id`` as a claim);
    local: ``model_id`` or what the engine reports."""
    reported = str(getattr(policy, 'model_id', '') or '')
    if p['backend'] == 'remote':
        if reported.startswith('remote:') and p['model_id']:
            return f'{reported}, configured as {p["model_id"]}'
        return reported
    return p['model_id'] or reported


def device_label(p: dict) -> str:
    """What the status reports as device: the torch device, or the server URL for remote."""
    return p['server_url'] if p['backend'] == 'remote' else p['device']
