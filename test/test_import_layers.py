"""Imports point down: every module's imports, parsed, obey the layer order of the package.

``defaults``/``action_layout``/... < ``engine``, ``control`` < ``policy`` < ``server``, ``bag``,
``sim``, ``nodes``, ``evaluation``, ``learning``, ``demo`` < ``cli``. A package without a layer fails the test. A module may import its own layer and any layer below it. Modules
kept only so that old import paths still work (re-exports of moved code) are listed, with where
the code lives now.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'openvla_ros'

LAYERS = {
    'foundation': 0,   # top-level modules: defaults, paths, stamps, action_layout, ...
    'engine': 1, 'control': 1,
    'policy': 2,
    'server': 3, 'bag': 3, 'sim': 3, 'nodes': 3, 'evaluation': 3, 'learning': 3, 'demo': 3,
    'cli': 4,
}
# Top-level modules that sit above the foundation (they build on a package layer).
TOP_LEVEL = {'action_message': 2, 'imaging': 1, 'bringup': 3}
# Old paths of moved modules: re-exports that point up on purpose until their users move.
SHIMS = {'server.client': 'policy.remote', 'server.numpy_json': 'policy.numpy_json',
         'cli.engine_args': 'policy.options'}


def _layer(module: str) -> int:
    """``module``: dotted path inside the package (``engine.api``, ``defaults``)."""
    first = module.split('.')[0]
    if first in LAYERS:
        return LAYERS[first]
    assert not (PACKAGE / first).is_dir(), f'package {first} has no layer: add it to LAYERS'
    return TOP_LEVEL.get(first, 0)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    parts = path.relative_to(PACKAGE).with_suffix('').parts
    package = parts[:-1] if parts[-1] != '__init__' else parts[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                name = '.'.join(['openvla_ros', *base] + ([node.module] if node.module else []))
            else:
                name = node.module or ''
            found.append((node.lineno, name))
            # ``from openvla_ros import defaults`` names a module, not an attribute
            if name == 'openvla_ros':
                found += [(node.lineno, f'openvla_ros.{a.name}') for a in node.names]
    return [(line, n[len('openvla_ros.'):]) for line, n in found if n.startswith('openvla_ros.')]


def _modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(PACKAGE).with_suffix('')
        parts = rel.parts[:-1] if rel.name == '__init__' else rel.parts
        yield path, '.'.join(parts)


def test_imports_point_down():
    wrong = []
    for path, module in _modules():
        if not module or module in SHIMS:
            continue
        own = _layer(module)
        for line, target in _imports(path):
            if target in SHIMS:
                wrong.append(f'{module}:{line} imports {target}, which moved to {SHIMS[target]}')
            elif _layer(target) > own:
                wrong.append(f'{module}:{line} (layer {own}) imports {target} (layer {_layer(target)})')
    assert not wrong, 'imports that point up:\n' + '\n'.join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path):
    # The checker itself: a control module importing the engine's neighbour layer above it.
    assert _layer('control.delta') < _layer('policy.options') < _layer('nodes.vla_node')
    assert _layer('action_layout') < _layer('engine.api')
    sample = PACKAGE / 'control' / 'delta.py'
    assert all(_layer(t) <= _layer('control.delta') for _, t in _imports(sample))


def test_shims_only_re_export():
    for old, new in SHIMS.items():
        path = PACKAGE / (old.replace('.', '/') + '.py')
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if not isinstance(n, ast.Expr)]   # docstring
        assert all(isinstance(n, ast.ImportFrom) and n.module == f'openvla_ros.{new}'
                   for n in body), f'{old} should only re-export {new}'
