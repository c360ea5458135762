"""Packaging: package.xml and the console scripts every install exposes."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_format_3():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'openvla_ros'
    assert root.find('export/build_type').text == 'ament_cmake'


def _console_scripts() -> list[tuple[str, str, str]]:
    out = []
    for line in (ROOT / 'console_scripts.txt').read_text().splitlines():
        if line.strip() and not line.startswith('#'):
            name, target = (x.strip() for x in line.split('=', 1))
            module, func = target.split(':')
            out.append((name, module, func))
    return out


@pytest.mark.parametrize('name,module,func', _console_scripts())
def test_console_script_targets_exist(name, module, func):
    import importlib

    mod = importlib.import_module(module)
    assert callable(getattr(mod, func)), f'{name}: {module}:{func} is not callable'
    installed = Path(sys.prefix) / 'bin' / name
    assert installed.is_file(), f'{installed} missing: run ./tools/setup.sh'
