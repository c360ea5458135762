"""Python packaging metadata for openvla_ros.

The package is built with ament_cmake (messages + Python, see CMakeLists.txt). This file keeps
the Python side usable with plain pip as well (``pip install --no-deps .`` gives the console
scripts and the data files; the messages still come from the CMake build).
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
ENTRY_POINTS = [line.strip() for line in (HERE / 'console_scripts.txt').read_text().splitlines()
                if line.strip() and not line.startswith('#')]

setup(
    name='openvla_ros',
    version='0.1.0',
    packages=find_packages(include=['openvla_ros', 'openvla_ros.*']),
    package_data={'openvla_ros': ['description/*.xml', 'engine/assets/**/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/openvla_ros']),
        ('share/openvla_ros', ['package.xml']),
        ('share/openvla_ros/config', [str(p.relative_to(HERE)) for p in sorted((HERE / 'config').glob('*'))]),
        ('share/openvla_ros/launch', [str(p.relative_to(HERE)) for p in sorted((HERE / 'launch').glob('*.py'))]),
    ],
    python_requires='>=3.10',
    entry_points={'console_scripts': ENTRY_POINTS},
    license='Apache-2.0',
)
