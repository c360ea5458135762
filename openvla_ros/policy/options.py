"""The policy options as command-line flags and as parameter specs, derived from one definition.

Each option is written once, as a dataclass field with its help text, choices or range and
default (:class:`~openvla_ros.engine.api.PolicyOptions` for the engine, :class:`RemoteOptions`
for the HTTP client). The argparse flags of every tool and vla_node's ROS parameters are built
from those fields here, so a default or a range cannot drift between them.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from urllib.parse import urlparse

from openvla_ros import defaults
from openvla_ros.engine.api import PolicyOptions, option


@dataclass
class RemoteOptions:
    """How the remote backend reaches an OpenVLA server."""

    server_url: str = option(f'http://{defaults.DEFAULT_SERVER_HOST}:{defaults.DEFAULT_SERVER_PORT}',
                             'inference server URL (openvla-serve or any deploy.py-style server)',
                             ros='server_url')
    timeout_s: float = option(10.0, 'HTTP timeout of one remote prediction, seconds',
                              range=(0.1, 600.0), ros='server_timeout_s')
    retries: int = option(1, 'retries of a remote prediction that did not reach the server or '
                          'found it busy', range=(0, 10), ros='server_retries')
    backoff_s: float = option(0.2, 'pause before the first remote retry (doubling after), seconds',
                              range=(0.0, 30.0), ros='server_backoff_s')
    token: str = option('', 'bearer token for the inference server (empty: none)',
                        ros='server_token')


@dataclass(frozen=True)
class OptionSpec:
    """One option as every surface sees it."""

    field: str                  # dataclass field name
    default: object
    help: str
    type: type
    choices: tuple[str, ...] | None
    range: tuple[float, float] | None
    pattern: str | None
    cli: bool
    ros_name: str | None        # vla_node parameter name (None: not a parameter)

    @property
    def flag(self) -> str:
        return '--' + self.field.replace('_', '-')

    def problem(self, value) -> str | None:
        """Why ``value`` is not acceptable (None when it is)."""
        name = self.ros_name or self.field
        if self.choices and value not in self.choices:
            return f'{name}={value!r} is not one of {", ".join(self.choices)}'
        if self.range and not (self.range[0] <= value <= self.range[1]):
            return f'{name}={value} is outside [{self.range[0]}, {self.range[1]}]'
        if self.pattern and not re.match(self.pattern, str(value)):
            return f'{name}={value!r} does not match {self.pattern}'
        if self.field == 'server_url':
            u = urlparse(str(value))
            if u.scheme not in ('http', 'https') or not u.netloc:
                return f'{name}={value!r} is not an http(s) URL'
        return None


_TYPES = {'str': str, 'bool': bool, 'int': int, 'float': float}


def specs(cls) -> tuple[OptionSpec, ...]:
    """The :class:`OptionSpec` of every field of ``cls`` (PolicyOptions or RemoteOptions)."""
    out = []
    for f in fields(cls):
        assert f.default is not MISSING, f.name
        m = f.metadata
        ros = m.get('ros', '')
        out.append(OptionSpec(field=f.name, default=f.default, help=m.get('help', ''),
                              type=_TYPES[f.type] if isinstance(f.type, str) else f.type,
                              choices=m.get('choices'), range=m.get('range'),
                              pattern=m.get('pattern'), cli=m.get('cli', True),
                              ros_name=f.name if ros == '' else ros))
    return tuple(out)


POLICY_SPECS = specs(PolicyOptions)
REMOTE_SPECS = specs(RemoteOptions)


def _add(group, spec: OptionSpec) -> None:
    if spec.type is bool:
        group.add_argument(spec.flag, action=argparse.BooleanOptionalAction, default=spec.default,
                           help=spec.help.replace('%', '%%'))
        return
    kwargs = {'type': spec.type, 'default': spec.default,
              'help': spec.help.replace('%', '%%') + ' (default: %(default)s)'}
    if spec.choices:
        kwargs['choices'] = spec.choices
    group.add_argument(spec.flag, **kwargs)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine options (``--dtype``, ``--quantization``, ``--compile``, ...) as flags."""
    g = parser.add_argument_group('model options')
    for spec in POLICY_SPECS:
        if spec.cli:
            _add(g, spec)


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    """The remote client options (``--server-url``, ``--timeout-s``, ...) as flags."""
    g = parser.add_argument_group('remote server options')
    for spec in REMOTE_SPECS:
        _add(g, spec)


def _from_args(cls, spec_list, args: argparse.Namespace, extra: dict):
    values = {s.field: getattr(args, s.field) for s in spec_list if s.cli and hasattr(args, s.field)}
    values.update(extra)
    for s in spec_list:
        if s.field in values and (why := s.problem(values[s.field])):
            raise ValueError(why)
    return cls(**values)


def policy_options(args: argparse.Namespace, **extra) -> PolicyOptions:
    """PolicyOptions from parsed :func:`add_policy_arguments` flags (``extra`` overrides)."""
    return _from_args(PolicyOptions, POLICY_SPECS, args, extra)


def remote_options(args: argparse.Namespace, **extra) -> RemoteOptions:
    return _from_args(RemoteOptions, REMOTE_SPECS, args, extra)


# ---- --checkpoint / --unnorm-key: one definition, each tool says how much it needs them ----
REQUIRED = 'required'           # the tool cannot run without it
OPTIONAL = 'optional'           # --checkpoint may be left out; --unnorm-key defaults to bridge_orig
CHECKPOINT_DEFAULT = 'checkpoint default'   # --unnorm-key left out: the checkpoint's only key


def add_checkpoint_argument(parser, need: str = REQUIRED) -> None:
    """``--checkpoint``: an OpenVLA checkpoint directory (Hugging Face layout)."""
    parser.add_argument('--checkpoint', required=need == REQUIRED, default=None, type=Path,
                        metavar='DIR',
                        help='local OpenVLA checkpoint directory (Hugging Face layout: config.json, '
                             'model*.safetensors, tokenizer.json, preprocessor_config.json; no '
                             'downloads)')


def add_unnorm_key_argument(parser, need: str = OPTIONAL, flag: str = '--unnorm-key',
                            help_prefix: str = '') -> None:
    """``--unnorm-key`` (or ``flag``): which dataset statistics un-normalize the actions.

    ``need``: REQUIRED; OPTIONAL (default ``DEFAULT_UNNORM_KEY``); CHECKPOINT_DEFAULT (default
    none: the checkpoint's only key, an error when it has several)."""
    text = help_prefix + 'dataset statistics that un-normalize the actions (a key of the checkpoint)'
    if need == CHECKPOINT_DEFAULT:
        parser.add_argument(flag, default=None,
                            help=text + " (default: the checkpoint's only key, if it has just one)")
    else:
        parser.add_argument(flag, required=need == REQUIRED,
                            default=None if need == REQUIRED else defaults.DEFAULT_UNNORM_KEY,
                            help=text + ('' if need == REQUIRED else ' (default: %(default)s)'))


def fail(message: str, code: int = 1) -> int:
    """One line on stderr, no traceback."""
    print(f'error: {message}', file=sys.stderr)
    return code
