#!/usr/bin/env python3
"""Regenerate the parameter tables in README.md from the nodes' own parameter definitions.

    python tools/readme_tables.py           # rewrite README.md
    python tools/readme_tables.py --check   # exit 1 if README.md is out of date (used by the tests)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'


def _fmt(value) -> str:
    if isinstance(value, str):
        return f"`'{value}'`" if value == '' else f'`{value}`'
    return f'`{value}`'


def vla_node_table() -> str:
    from openvla_ros.nodes.vla_params import PARAMS

    rows = ['| Parameter | Default | When | Range / choices | Description |', '|---|---|---|---|---|']
    for p in PARAMS:
        rng = ', '.join(p.choices) if p.choices else (
            f'{p.float_range[0]} … {p.float_range[1]}' if p.float_range else (
                f'{p.int_range[0]} … {p.int_range[1]}' if p.int_range else ''))
        when = 'load time' if p.load_time else 'live'
        rows.append(f'| `{p.name}` | {_fmt(p.default)} | {when} | {rng} | {p.description} |')
    return '\n'.join(rows)


def arm_controller_table() -> str:
    from openvla_ros.control.embodiment import load_embodiment
    from openvla_ros.nodes.arm_controller import SAFETY_PARAMS

    from openvla_ros import defaults

    emb = load_embodiment(defaults.DEFAULT_EMBODIMENT)
    rows = [f'| Parameter | Default ({defaults.DEFAULT_EMBODIMENT}) | When | Range | Description |',
            '|---|---|---|---|---|']
    for name, spec in SAFETY_PARAMS.items():
        default = getattr(emb, name)
        if isinstance(default, tuple):
            default = [float(x) for x in default]
        rng = f'{spec.low} … {spec.high}' if spec.low is not None else ''
        when = 'live' if spec.live else 'configure'
        rows.append(f'| `{name}` | {_fmt(default)} | {when} | {rng} | {spec.description} |')
    return '\n'.join(rows)


TABLES = {'vla_node parameters': vla_node_table, 'arm_controller parameters': arm_controller_table}


def render(text: str) -> str:
    for title, make in TABLES.items():
        pattern = re.compile(rf'(<!-- BEGIN GENERATED: {re.escape(title)} [^>]*-->\n).*?(<!-- END GENERATED: {re.escape(title)} -->)',
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f'README.md has no generated block for {title!r}')
        text = pattern.sub(lambda m: m.group(1) + make() + '\n' + m.group(2), text)
    return text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(ROOT))
    current = README.read_text()
    new = render(current)
    if '--check' in argv:
        if new != current:
            print('README.md parameter tables are out of date: run python tools/readme_tables.py', file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == '__main__':
    sys.exit(main())
