"""The README stays true: generated tables current, every topic, executable and config named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from openvla_ros import defaults

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def test_parameter_tables_are_current():
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'readme_tables.py'), '--check'],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr


def test_every_topic_is_documented():
    for name, topic in vars(defaults).items():
        if name.endswith('_TOPIC'):
            shown = topic.replace('~/', f'/{defaults.VLA_NODE}/')
            assert f'`{shown}`' in README, f'{name} = {topic} is not in the README topic table'


def test_every_executable_and_config_is_named():
    for line in (ROOT / 'console_scripts.txt').read_text().splitlines():
        if line.strip() and not line.startswith('#'):
            name = line.split('=')[0].strip()
            assert name in README, f'executable {name} is not mentioned in the README'
    for cfg in (ROOT / 'config').glob('*.yaml'):
        assert f'config/{cfg.name}' in README, f'config/{cfg.name} is not mentioned in the README'


def test_two_commands_on_top():
    first_block = README.split('```bash', 1)[1].split('```', 1)[0]
    assert './tools/demo.sh' in first_block and './tools/test.sh' in first_block
    ci = (ROOT / '.ci' / 'run').read_text()
    assert 'CI=true' in ci and './tools/test.sh' in ci
