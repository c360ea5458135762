"""The engine's public API on the tiny checkpoint: results, bad input, checkpoint errors,
sharded loading, statistics override, batching and the self-test."""
from __future__ import annotations

import gc
import json
import shutil
import weakref

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from openvla_ros.engine import (CheckpointError, InvalidImageError, InvalidInstructionError,
                                InvalidModelOutputError,
                                OpenVLAError, PolicyOptions, UnknownUnnormKeyError, load_policy)
from openvla_ros.engine.policy import TIMING_KEYS
from openvla_ros.engine.tiny import EXTRA_STATS_KEY, make_tiny_checkpoint
from openvla_ros.imaging import MAX_IMAGE_PIXELS

INSTRUCTION = 'pick up the red block'

pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.fixture(scope='module')
def policy(tiny_checkpoint):
    p = load_policy(tiny_checkpoint, PolicyOptions())
    yield p
    p.close()


@pytest.fixture(scope='module')
def scenes():
    rng = np.random.default_rng(3)
    images = []
    for i in range(6):
        img = np.zeros((120 + 40 * i, 160 + 20 * i, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3)
        for _ in range(3):
            y, x = rng.integers(0, img.shape[0] - 30), rng.integers(0, img.shape[1] - 30)
            img[y:y + 30, x:x + 30] = rng.integers(0, 256, 3)
        images.append(img)
    return images


def _copy(src, dst):
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_predict_result(policy, scenes):
    r = policy.predict(scenes[0], INSTRUCTION, 'bridge_orig')
    assert r.action.shape == r.normalized_action.shape == r.action_token_ids.shape == (7,)
    assert r.action.dtype == np.float64 and r.action_token_ids.dtype == np.int64
    assert np.all((r.action_token_ids >= 31744) & (r.action_token_ids < 32000))
    assert np.all(np.abs(r.normalized_action) < 1.0)
    # the gripper (mask False in bridge_orig) passes through un-normalised
    assert r.action[6] == r.normalized_action[6]
    assert set(r.timings) == set(TIMING_KEYS)
    assert all(v >= 0 for v in r.timings.values())
    assert r.timings['total'] >= r.timings['vision'] + r.timings['prefill']
    assert r.unnorm_key == 'bridge_orig'
    json.dumps(r.to_dict())


def test_deterministic_and_image_dependent(policy, scenes):
    first = [tuple(policy.predict(img, INSTRUCTION, 'bridge_orig').action_token_ids) for img in scenes]
    again = [tuple(policy.predict(img, INSTRUCTION, 'bridge_orig').action_token_ids) for img in scenes]
    assert first == again
    assert len(set(first)) >= 4, first


def test_unnorm_keys_and_resolution(policy, scenes):
    assert policy.unnorm_keys() == {'bridge_orig': 7, EXTRA_STATS_KEY: 7}
    with pytest.raises(UnknownUnnormKeyError) as err:
        policy.predict(scenes[0], INSTRUCTION, 'no_such_robot')
    assert 'bridge_orig' in str(err.value) and EXTRA_STATS_KEY in str(err.value)
    with pytest.raises(UnknownUnnormKeyError, match='available keys'):
        policy.predict(scenes[0], INSTRUCTION, None)
    masked = policy.predict(scenes[0], INSTRUCTION, EXTRA_STATS_KEY)
    # q01=-1, q99=1 on every dim: un-normalising is the identity
    np.testing.assert_allclose(masked.action, masked.normalized_action, atol=1e-12)


@pytest.mark.parametrize('image, message', [
    ([[1, 2, 3]], 'numpy array'),
    (np.zeros((10, 10, 3), np.float32), 'uint8'),
    (np.full((10, 10, 3), np.nan), 'uint8'),
    (np.zeros((10, 10), np.uint8), 'H x W x 3'),
    (np.zeros((10, 10, 4), np.uint8), 'H x W x 3'),
    (np.zeros((10, 10, 1), np.uint8), 'H x W x 3'),
    (np.zeros((0, 10, 3), np.uint8), 'empty'),
    (np.zeros((MAX_IMAGE_PIXELS // 8 + 1, 8, 3), np.uint8), 'more than the limit'),
])
def test_bad_images(policy, image, message):
    with pytest.raises(InvalidImageError, match=message):
        policy.predict(image, INSTRUCTION, 'bridge_orig')


@pytest.mark.parametrize('instruction, message', [
    ('', 'empty'), ('   \n\t', 'empty'), (None, 'str'), (42, 'str'), (b'pick', 'str'),
    ('x' * 1001, 'limit'),
])
def test_bad_instructions(policy, scenes, instruction, message):
    with pytest.raises(InvalidInstructionError, match=message):
        policy.predict(scenes[0], instruction, 'bridge_orig')


def test_instruction_limit_is_configurable(tiny_checkpoint, scenes):
    p = load_policy(tiny_checkpoint, PolicyOptions(max_instruction_chars=10))
    try:
        p.predict(scenes[0], 'open it', 'bridge_orig')
        with pytest.raises(InvalidInstructionError, match='10'):
            p.predict(scenes[0], 'open the top drawer', 'bridge_orig')
    finally:
        p.close()


def test_prompt_is_lower_cased_and_ends_with_space_token(policy):
    assert policy.prompt_token_ids('PICK UP the Red Block') == policy.prompt_token_ids(INSTRUCTION)
    ids = policy.prompt_token_ids(INSTRUCTION)
    assert ids[0] == 1 and ids[-4:] == [13, 3744, 29901, 29871]


def test_batch_equals_single(policy, scenes):
    instructions = [INSTRUCTION, 'open the drawer and then close it again slowly', 'wipe',
                    'put the eggplant in the basket']
    keys = ['bridge_orig', EXTRA_STATS_KEY, 'bridge_orig', EXTRA_STATS_KEY]
    images = scenes[:4]
    single = [policy.predict(i, t, k) for i, t, k in zip(images, instructions, keys)]
    batch = policy.predict_batch(images, instructions, keys)
    for s, b in zip(single, batch):
        assert s.action_token_ids.tolist() == b.action_token_ids.tolist()
        np.testing.assert_array_equal(s.action, b.action)
        assert s.unnorm_key == b.unnorm_key
    with pytest.raises(OpenVLAError):
        policy.predict_batch(images, instructions[:2], keys)
    with pytest.raises(InvalidImageError, match='image 1'):
        policy.predict_batch([images[0], np.zeros((4, 4), np.uint8)], instructions[:2], keys[:2])


def test_image_pipelines(tiny_checkpoint, scenes):
    base = load_policy(tiny_checkpoint, PolicyOptions())
    bridge = load_policy(tiny_checkpoint, PolicyOptions(image_pipeline='bridge_eval'))
    crop = load_policy(tiny_checkpoint, PolicyOptions(center_crop=True))
    try:
        img = scenes[5]
        px = [p.pixel_values(img) for p in (base, bridge, crop)]
        assert all(x.shape == (6, 224, 224) for x in px)
        assert not torch.equal(px[0], px[1]) and not torch.equal(px[0], px[2])
        # a 224x224 input is not resized by the processor path, so pixel values are exact
        square = scenes[0][:120, :120].repeat(2, axis=0).repeat(2, axis=1)[:224, :224]
        square = np.ascontiguousarray(np.pad(square, ((0, 224 - square.shape[0]),
                                                      (0, 224 - square.shape[1]), (0, 0))))
        x = base.pixel_values(square)
        np.testing.assert_allclose(x[3:].numpy(), (square.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5,
                                   atol=1e-6)
        for p in (bridge, crop):
            assert np.all(np.isfinite(p.predict(img, INSTRUCTION, 'bridge_orig').action))
        assert crop.describe()['center_crop'] is True
        assert bridge.describe()['image_pipeline'] == 'bridge_eval'
    finally:
        for p in (base, bridge, crop):
            p.close()


def test_v01_prompt_template(tiny_checkpoint):
    p = load_policy(tiny_checkpoint, PolicyOptions(prompt_template='v01'))
    try:
        ids = p.prompt_token_ids(INSTRUCTION)
        text = p.tokenizer.decode(ids)
        assert text.startswith('A chat between a curious user') and text.rstrip().endswith('ASSISTANT:')
        assert ids[-1] == 29871
    finally:
        p.close()


def test_describe_and_close(tiny_checkpoint, scenes):
    p = load_policy(tiny_checkpoint, PolicyOptions(extra_latency_s=0.05))
    info = p.describe()
    for key in ('model_id', 'checkpoint', 'dtype', 'device', 'quantization', 'image_pipeline',
                'center_crop', 'prompt_template', 'parameter_count'):
        assert key in info
    assert info['model_id'] == p.model_id == tiny_checkpoint.name
    assert info['parameter_count'] > 0
    r = p.predict(scenes[0], INSTRUCTION, 'bridge_orig')
    assert r.timings['total'] >= 0.05
    model = weakref.ref(p.model)
    p.close()
    gc.collect()
    assert model() is None, 'close() must release the model'
    with pytest.raises(OpenVLAError, match='closed'):
        p.predict(scenes[0], INSTRUCTION, 'bridge_orig')


def test_bad_options(tiny_checkpoint):
    for options in (PolicyOptions(dtype='int8'), PolicyOptions(quantization='2bit'),
                    PolicyOptions(prompt_template='chatml'), PolicyOptions(image_pipeline='x'),
                    PolicyOptions(device='tpu')):
        with pytest.raises(OpenVLAError):
            load_policy(tiny_checkpoint, options)


# ---------------------------------------------------------------- checkpoint handling
@pytest.mark.parametrize('name', ['config.json', 'preprocessor_config.json', 'tokenizer.json',
                                  'model.safetensors'])
def test_missing_file_is_named(tiny_checkpoint, tmp_path, name):
    ckpt = _copy(tiny_checkpoint, tmp_path / 'ckpt')
    (ckpt / name).unlink()
    with pytest.raises(CheckpointError) as err:
        load_policy(ckpt)
    assert name in str(err.value) and str(ckpt) in str(err.value)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        load_policy(tmp_path / 'nowhere')


def test_unexpected_and_missing_tensors_are_named(tiny_checkpoint, tmp_path):
    tensors = load_file(str(tiny_checkpoint / 'model.safetensors'))
    extra = _copy(tiny_checkpoint, tmp_path / 'extra')
    save_file({**tensors, 'projector.fc4.weight': torch.zeros(2, 2, dtype=torch.bfloat16)},
              str(extra / 'model.safetensors'))
    with pytest.raises(CheckpointError, match=r'unexpected tensors \(1\): projector.fc4.weight'):
        load_policy(extra)
    missing = _copy(tiny_checkpoint, tmp_path / 'missing')
    gone = 'language_model.model.layers.1.mlp.up_proj.weight'
    save_file({k: v for k, v in tensors.items() if k != gone}, str(missing / 'model.safetensors'))
    with pytest.raises(CheckpointError, match=rf'missing tensors \(1\): {gone}'):
        load_policy(missing)
    wrong = _copy(tiny_checkpoint, tmp_path / 'wrong')
    bad = dict(tensors)
    bad['projector.fc3.bias'] = torch.zeros(3, dtype=torch.bfloat16)
    save_file(bad, str(wrong / 'model.safetensors'))
    with pytest.raises(CheckpointError, match='projector.fc3.bias'):
        load_policy(wrong)


def test_sharded_checkpoint_gives_the_same_tokens(tiny_checkpoint, tmp_path, policy, scenes):
    sharded = make_tiny_checkpoint(tmp_path / 'sharded', seed=0, shards=3)
    assert not (sharded / 'model.safetensors').exists()
    index = json.loads((sharded / 'model.safetensors.index.json').read_text())
    assert len(set(index['weight_map'].values())) == 3
    p = load_policy(sharded)
    try:
        for img in scenes[:3]:
            assert (p.predict(img, INSTRUCTION, 'bridge_orig').action_token_ids.tolist()
                    == policy.predict(img, INSTRUCTION, 'bridge_orig').action_token_ids.tolist())
    finally:
        p.close()
    next(sharded.glob('model-00002-*.safetensors')).unlink()
    with pytest.raises(CheckpointError, match='model-00002-of-00003.safetensors'):
        load_policy(sharded)


def test_dataset_statistics_override(tiny_checkpoint, tmp_path, policy, scenes):
    ckpt = _copy(tiny_checkpoint, tmp_path / 'finetuned')
    stats = {'my_robot': {'action': {'q01': [0.0] * 5, 'q99': [2.0] * 5,
                                     'mask': [True, True, True, True, False]}}}
    (ckpt / 'dataset_statistics.json').write_text(json.dumps(stats))
    p = load_policy(ckpt)
    try:
        assert p.unnorm_keys() == {'my_robot': 5}
        r = p.predict(scenes[1], INSTRUCTION)         # one key: None resolves to it
        ref = policy.predict(scenes[1], INSTRUCTION, 'bridge_orig')
        assert r.unnorm_key == 'my_robot' and r.action.shape == (5,)
        assert r.action_token_ids.tolist() == ref.action_token_ids[:5].tolist()
        np.testing.assert_allclose(r.action[:4], r.normalized_action[:4] + 1.0, atol=1e-12)
        assert r.action[4] == r.normalized_action[4]
    finally:
        p.close()


def test_self_test_passes_and_catches_a_disconnected_vision_path(tiny_checkpoint, tmp_path):
    p = load_policy(tiny_checkpoint, PolicyOptions(self_test=True))
    p.self_test()
    p.close()
    broken = _copy(tiny_checkpoint, tmp_path / 'broken')
    tensors = load_file(str(broken / 'model.safetensors'))
    for key in ('projector.fc1.weight', 'projector.fc2.weight', 'projector.fc3.weight'):
        tensors[key] = torch.zeros_like(tensors[key])
    save_file(tensors, str(broken / 'model.safetensors'))
    loaded = load_policy(broken)   # loads without the check ...
    with pytest.raises(OpenVLAError, match='self-test failed'):
        loaded.self_test()         # ... and the explicit check catches it
    loaded.close()
    with pytest.raises(OpenVLAError, match='image has no effect'):
        load_policy(broken, PolicyOptions(self_test=True))


def test_make_tiny_is_deterministic(tmp_path, tiny_checkpoint):
    again = make_tiny_checkpoint(tmp_path / 'again', seed=0)
    a = load_file(str(again / 'model.safetensors'))
    b = load_file(str(tiny_checkpoint / 'model.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = load_file(str(make_tiny_checkpoint(tmp_path / 'other', seed=1) / 'model.safetensors'))
    assert not torch.equal(other['projector.fc1.weight'], b['projector.fc1.weight'])


def test_non_finite_model_output_is_refused(tiny_checkpoint, tmp_path, scenes):
    broken = _copy(tiny_checkpoint, tmp_path / 'nan')
    tensors = load_file(str(broken / 'model.safetensors'))
    tensors['projector.fc3.bias'] = torch.full_like(tensors['projector.fc3.bias'], float('nan'))
    save_file(tensors, str(broken / 'model.safetensors'))
    p = load_policy(broken)
    try:
        with pytest.raises(InvalidModelOutputError, match='non-finite'):
            p.predict(scenes[0], INSTRUCTION, 'bridge_orig')
    finally:
        p.close()


def test_unnorm_key_of_wrong_type(policy, scenes):
    with pytest.raises(UnknownUnnormKeyError, match='str or None'):
        policy.predict(scenes[0], INSTRUCTION, ['bridge_orig'])


def test_static_shape_decode_matches(tiny_checkpoint, policy, scenes):
    """The decode path used under compile=True (whole-cache attention under a key mask, fixed
    shapes every step) gives the same tokens as the default path, single and batched; here it
    runs eagerly on CPU."""
    static = load_policy(tiny_checkpoint)
    static._setup_static_decode(compiled=False)
    try:
        instructions = [INSTRUCTION, 'open the drawer and then close it again slowly', 'wipe']
        keys = ['bridge_orig'] * 3
        for img, text in zip(scenes[:3], instructions):
            assert (static.predict(img, text, 'bridge_orig').action_token_ids.tolist()
                    == policy.predict(img, text, 'bridge_orig').action_token_ids.tolist())
        batch = static.predict_batch(scenes[:3], instructions, keys)
        single = [policy.predict(i, t, k) for i, t, k in zip(scenes[:3], instructions, keys)]
        assert [b.action_token_ids.tolist() for b in batch] == \
            [s.action_token_ids.tolist() for s in single]
    finally:
        static.close()


def test_v01_layout_checkpoint(tmp_path, scenes):
    """SigLIP-only backbone, 2-layer projector, letterbox, 3-channel pixels, v01 prompt."""
    ckpt = make_tiny_checkpoint(tmp_path / 'v01', seed=2, variant='v01')
    p = load_policy(ckpt, PolicyOptions(prompt_template='v01', self_test=True))
    try:
        assert not hasattr(p.model.projector, 'fc3')
        assert p.pixel_values(scenes[2]).shape == (3, 224, 224)
        r = p.predict(scenes[2], INSTRUCTION, 'bridge_orig')
        assert r.action.shape == (7,) and np.all(np.isfinite(r.action))
        assert p.predict_batch(scenes[:2], [INSTRUCTION, 'wipe'], ['bridge_orig'] * 2)[1] \
            .action_token_ids.tolist() == p.predict(scenes[1], 'wipe', 'bridge_orig') \
            .action_token_ids.tolist()
    finally:
        p.close()
