"""Where the package's data lives, in a source checkout and once installed (venv or /opt/ros)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = 'openvla_ros'
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def share_dir() -> Path:
    """Directory holding ``config/`` and ``launch/``: the source checkout first, then the install."""
    if (_SOURCE_ROOT / 'package.xml').is_file() and (_SOURCE_ROOT / 'config').is_dir():
        return _SOURCE_ROOT
    candidates = [Path(sys.prefix) / 'share' / PACKAGE]
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / 'share' / PACKAGE)
    for c in candidates:
        if (c / 'config').is_dir():
            return c
    raise FileNotFoundError(f'cannot find the {PACKAGE} share directory (looked in {_SOURCE_ROOT} and {candidates})')


def config_dir() -> Path:
    return share_dir() / 'config'


def config_file(name: str) -> Path:
    """``config/<name>.yaml`` (``name`` may also be a path to a YAML file)."""
    p = Path(name)
    if p.suffix in ('.yaml', '.yml') and p.is_file():
        return p
    f = config_dir() / f'{name}.yaml'
    if not f.is_file():
        known = sorted(x.stem for x in config_dir().glob('*.yaml'))
        raise FileNotFoundError(f'no config {name!r} in {config_dir()}; available: {known}')
    return f


def fastdds_profile() -> Path:
    return config_dir() / 'fastdds_localhost.xml'


def description_dir() -> Path:
    """MJCF robot and workcell models (shipped inside the Python package)."""
    return Path(__file__).resolve().parent / 'description'
