"""Grounding pre-training data: real MuJoCo renders, labels that agree with the simulator state,
the dataset layout fine-tuning reads, and a CLI that never writes into a used directory."""
from __future__ import annotations

import json

import numpy as np
import pytest

from openvla_ros.cli import dataset as cli
from openvla_ros.learning import grounding as G
from openvla_ros.learning.dataset import iter_episodes, load_statistics


def test_frames_are_labelled_from_the_scene_they_show():
    from openvla_ros.evaluation import tasks as T
    from openvla_ros.sim.workcell import WorkcellSim

    frames = list(G.render_frames(4, image_size=64, seed=123))
    assert len(frames) == 4
    tips = set()
    for f in frames:
        assert f.image.shape == (64, 64, 3) and f.image.dtype == np.uint8 and f.image.std() > 10
        assert f.noun in G.NOUNS
        rel, obj_xy, tip_x, opening = f.label[:3], f.label[3:5], f.label[5], f.label[6]
        tip = obj_xy - rel[:2]
        assert tip[0] == pytest.approx(tip_x)
        # the finger tips lie over the table and the object inside the task's table region
        assert T.TABLE_X_M[0] - 0.05 <= obj_xy[0] <= T.TABLE_X_M[1] + 0.05
        assert 0.0 <= opening <= 1.0
        tips.add(tuple(np.round(tip, 3)))
    assert len(tips) == 4                      # a new arm pose per frame
    # the same seed gives the same scene and labels
    again = list(G.render_frames(2, image_size=64, seed=123))
    np.testing.assert_array_equal(again[0].image, frames[0].image)
    np.testing.assert_allclose(again[1].label, frames[1].label)
    with WorkcellSim() as sim:                 # the labels use the tasks' own points
        assert set(G.NOUNS.values()) <= set(sim.object_names) | {T.TOWEL}
    # every object named in one scene: one image, a label per noun, the same arm in each
    scene = list(G.render_frames(1, image_size=64, seed=123, nouns_per_scene=len(G.NOUNS)))
    assert sorted(f.noun for f in scene) == sorted(G.NOUNS)
    assert all(f.image is scene[0].image for f in scene)
    tip_x = {round(float(f.label[5]), 9) for f in scene}
    assert len(tip_x) == 1 and len({tuple(f.label[3:5]) for f in scene}) == len(G.NOUNS)
    with pytest.raises(ValueError, match='nouns_per_scene'):
        next(G.render_frames(1, nouns_per_scene=len(G.NOUNS) + 1))


def test_cli_writes_a_dataset_and_refuses_a_used_directory(tmp_path, capsys):
    out = tmp_path / 'grounding'
    assert cli.main(['grounding', '--frames', '6', '--out', str(out), '--image-size', '48']) == 0
    episodes = list(iter_episodes(out))
    assert sum(len(e.actions) for e in episodes) == 6
    assert {e.instruction for e in episodes} <= {G.instruction(n) for n in G.NOUNS}
    stats = load_statistics(out)[G.GROUNDING_KEY]['action']
    assert stats['mask'] == [True] * 6 + [False]
    info = json.loads((out / 'meta' / 'info.json').read_text())
    assert info['transitions'] == 6 and info['image_shape'] == [48, 48, 3]
    before = sorted(p.name for p in out.rglob('*'))
    assert cli.main(['grounding', '--frames', '2', '--out', str(out)]) == 2
    assert 'exists and is not empty' in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob('*')) == before


def test_label_layouts_position_first_and_every_object_in_a_slot(tmp_path):
    """``position`` reorders the offset layout (the named object's place first); ``objects``
    labels each scene once, under one instruction, with every reach object in a fixed slot and
    the finger tips' y last, all seven normalised, and ``relative`` the same slots with each
    object's offset from the tips and the tips' height; the statistics key can be chosen so two
    grounding datasets mix into one fine-tune."""
    offset = G.build_dataset(tmp_path / 'o', 3, image_size=32, seed=321, nouns_per_scene=5)
    G.build_dataset(tmp_path / 'p', 3, image_size=32, seed=321, nouns_per_scene=5, labels='position')
    info = G.build_dataset(tmp_path / 'a', 3, image_size=32, seed=321, labels='objects', key='sim_objects')
    assert offset['transitions'] == 15 and info['transitions'] == 3
    by_text = {e.instruction: e for e in iter_episodes(tmp_path / 'o')}
    for e in iter_episodes(tmp_path / 'p'):
        np.testing.assert_allclose(e.actions[:, [2, 3, 4, 0, 1, 5, 6]], by_text[e.instruction].actions)
    (objects,) = list(iter_episodes(tmp_path / 'a'))
    assert objects.instruction == G.OBJECTS_INSTRUCTION and objects.actions.shape == (3, 7)
    assert list(load_statistics(tmp_path / 'a')) == ['sim_objects']
    for slot, noun in enumerate(G.SLOT_NOUNS):   # the same scenes: the slot holds that noun's place
        np.testing.assert_allclose(objects.actions[:, 2 * slot:2 * slot + 2],
                                   by_text[G.instruction(noun)].actions[:, 3:5])
    red = by_text[G.instruction('red block')]
    np.testing.assert_array_equal(objects.images, red.images)
    # the tips' y: the red block's y less its offset from the tips (the offset layout's oy - ty)
    np.testing.assert_allclose(objects.actions[:, 6], red.actions[:, 4] - red.actions[:, 1], atol=1e-6)
    assert load_statistics(tmp_path / 'a')['sim_objects']['action']['mask'] == [True] * 7
    assert load_statistics(tmp_path / 'o')['sim_grounding']['action']['mask'][6] is False
    # relative: the same slots, each the object's offset from the finger tips, then the tips' z
    G.build_dataset(tmp_path / 'r', 3, image_size=32, seed=321, labels='relative', key='sim_objects')
    (relative,) = list(iter_episodes(tmp_path / 'r'))
    assert relative.instruction == G.OBJECTS_INSTRUCTION
    np.testing.assert_array_equal(relative.images, objects.images)
    for slot, noun in enumerate(G.SLOT_NOUNS):
        np.testing.assert_allclose(relative.actions[:, 2 * slot:2 * slot + 2],
                                   by_text[G.instruction(noun)].actions[:, :2], atol=1e-6)
    # the tips' z: the red block's grasp height less its offset from the tips
    frames = list(G.render_frames(3, image_size=32, seed=321, nouns_per_scene=5))
    np.testing.assert_allclose(relative.actions[:, 6], [f.tip[2] for f in frames[::5]], atol=1e-6)
    assert load_statistics(tmp_path / 'r')['sim_objects']['action']['mask'] == [True] * 7
    with pytest.raises(ValueError, match='relative layout names no noun'):
        G.build_dataset(tmp_path / 'y', 1, labels='relative', nouns=['red block'])
    with pytest.raises(ValueError, match='labels'):
        G.build_dataset(tmp_path / 'x', 1, labels='nope')


def test_rendering_processes_give_the_same_dataset(tmp_path, monkeypatch):
    """A pool of rendering processes gives the frames of the one-process sequence, in its order
    (close-range scenes included): the scene seeds are found first (the IK alone), then rendered
    in runs by the workers."""
    seeds = G.scene_seeds(5, seed=77)
    assert len(seeds) == 5 and seeds == sorted(seeds) and seeds[0] >= 77
    monkeypatch.setattr(G, 'POOL_JOB_SCENES', 2)     # three jobs for two processes
    one = G.build_dataset(tmp_path / 'one', 5, image_size=32, seed=77, nouns_per_scene=2, labels='position',
                          near_fraction=0.5)
    two = G.build_dataset(tmp_path / 'two', 5, image_size=32, seed=77, nouns_per_scene=2, labels='position',
                          workers=2, near_fraction=0.5)
    assert one['transitions'] == two['transitions'] == 10
    for a, b in zip(iter_episodes(tmp_path / 'one'), iter_episodes(tmp_path / 'two'), strict=True):
        assert a.instruction == b.instruction
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.actions, b.actions)
    given = list(G.render_frames(2, image_size=32, nouns_per_scene=2, scenes=seeds[3:]))
    plain = list(G.render_frames(5, image_size=32, seed=77, nouns_per_scene=2))
    for a, b in zip(given, plain[6:], strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_allclose(a.label, b.label)


def test_installed_tool_renders_with_a_pool(tmp_path):
    """Through the installed console script (which a spawned worker re-imports): two workers
    write the dataset one process writes."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(sys.prefix) / 'bin' / 'openvla-dataset'
    out = tmp_path / 'pool'
    proc = subprocess.run([str(tool), 'grounding', '--frames', '3', '--image-size', '32', '--seed', '55',
                           '--workers', '2', '--out', str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    G.build_dataset(tmp_path / 'one', 3, image_size=32, seed=55)
    for a, b in zip(iter_episodes(out), iter_episodes(tmp_path / 'one'), strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.actions, b.actions)


def test_nouns_name_only_the_chosen_objects(tmp_path):
    """--nouns: only the chosen objects are named (every scene still holds all of them, so a
    named object's label is the one the five-noun scene gives it); an unknown noun, too many
    nouns per scene or nouns with the objects layout are refused before anything is written."""
    reach = ['red block', 'green can', 'purple block']
    out = tmp_path / 'reach'
    assert cli.main(['grounding', '--frames', '4', '--out', str(out), '--image-size', '32', '--seed', '91',
                     '--nouns-per-scene', '3', '--nouns', ','.join(reach)]) == 0
    episodes = list(iter_episodes(out))
    assert [e.instruction for e in episodes] == [G.instruction(n) for n in reach]
    assert all(len(e.actions) == 4 for e in episodes)
    info = json.loads((out / 'meta' / 'info.json').read_text())
    assert info['nouns'] == reach and info['transitions'] == 12
    every = {(f.noun, f.image.tobytes()): f.label
             for f in G.render_frames(4, image_size=32, seed=91, nouns_per_scene=len(G.NOUNS))}
    for e in episodes:
        noun = e.instruction.removeprefix('where is the ')
        for image, label in zip(e.images, e.actions):
            np.testing.assert_allclose(label, every[(noun, image.tobytes())])
    for bad in (['--nouns', 'red block,unicorn'], ['--nouns', 'red block', '--nouns-per-scene', '2'],
                ['--nouns', 'red block', '--labels', 'objects']):
        target = tmp_path / 'bad'
        assert cli.main(['grounding', '--frames', '1', '--out', str(target), *bad]) == 2
        assert not target.exists() or not any(target.iterdir())
    with pytest.raises(ValueError, match='nouns must be among'):
        G.build_dataset(tmp_path / 'x', 1, nouns=['unicorn'])


def test_near_scenes_put_the_finger_tips_close_to_a_named_object(tmp_path):
    """--near-fraction: that share of the scenes has the finger tips within NEAR_RADIUS_M of one
    named object and NEAR_ABOVE_TOP_M above its top, as the simulator places them (the label is
    the rendered scene's); the other scenes are the ones rendered without it, and a share outside
    [0, 1] is refused before anything is written."""
    from openvla_ros.evaluation import tasks as T
    from openvla_ros.sim.workcell import WorkcellSim

    reach = ['red block', 'green can', 'purple block']
    plain = list(G.render_frames(30, image_size=32, seed=70, nouns_per_scene=3, nouns=reach))
    near = list(G.render_frames(30, image_size=32, seed=70, nouns_per_scene=3, nouns=reach, near_fraction=0.5))
    assert len(plain) == len(near) == 90
    moved = 0
    with WorkcellSim() as sim:
        for scene in range(30):
            a, b = plain[3 * scene:3 * scene + 3], near[3 * scene:3 * scene + 3]
            assert [f.noun for f in a] == [f.noun for f in b]
            for f, g in zip(a, b):                    # the same layout either way
                np.testing.assert_allclose(f.label[3:5], g.label[3:5])
            if np.array_equal(a[0].image, b[0].image):
                np.testing.assert_allclose([f.label for f in a], [f.label for f in b])
                continue
            moved += 1
            close = [f for f in b if np.hypot(*f.label[:2]) <= G.NEAR_RADIUS_M + 1e-6]
            assert close, f'scene {scene}: the finger tips are near no named object'
            for f in close:                           # the tips' height above that object's top
                body = G.NOUNS[f.noun]
                sim.reset()
                top_above_grasp = T.top_z(sim, body) - T.grasp_point(sim, body)[2]
                above = -f.label[2] - top_above_grasp
                if G.NEAR_ABOVE_TOP_M[0] - 0.005 <= above <= G.NEAR_ABOVE_TOP_M[1] + 0.005:
                    break
            else:
                raise AssertionError(f'scene {scene}: no close object with the tips at the near height')
    assert 8 <= moved <= 22                         # about half of 30
    out = tmp_path / 'bad'
    assert cli.main(['grounding', '--frames', '1', '--out', str(out), '--near-fraction', '1.5']) == 2
    assert not out.exists() or not any(out.iterdir())
    info = G.build_dataset(tmp_path / 'near', 2, image_size=32, seed=70, near_fraction=0.5)
    assert json.loads((tmp_path / 'near' / 'meta' / 'info.json').read_text())['near_fraction'] == 0.5
    assert info['transitions'] == 2
