"""A LoRA fine-tune's merged export predicts what the unmerged adapters predict, and qlora's CPU
refusal says why and what to use instead.

The unmerged model is the engine's own: the start checkpoint loaded with load_policy, the same
peft adapters injected into its modules (wrap_lora) and the trained adapter weights from the
trainer state, so its greedy tokens come from the engine's generation path (policy.predict),
exactly as the merged export's do. The export is written in float32 for this comparison: merging
changes only float32 rounding (W x + B A x vs (W + B A) x, ~1e-7 relative), which the greedy choice
tolerates; in bfloat16 (the default export, 8 bits of mantissa) near-tied logits could flip."""
import numpy as np
import pytest
import torch

from openvla_ros.cli.finetune import main as finetune_main
from openvla_ros.engine.policy import PolicyOptions, load_policy
from openvla_ros.learning.dataset import Episode, finish_dataset, write_episode
from openvla_ros.learning.finetune import (STATE_FILE, FinetuneError, TrainConfig, adapter_state,
                                           train, wrap_lora)
from openvla_ros.learning.small import make_small_checkpoint

IMAGE = 28
RANK = 4


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return make_small_checkpoint(tmp_path_factory.mktemp('init'), image_size=IMAGE)


def _dataset(directory):
    rng = np.random.default_rng(2)
    for i, colour in enumerate(([255, 0, 0], [0, 0, 255], [0, 200, 0])):
        images = np.broadcast_to(np.array(colour, np.uint8), (3, IMAGE, IMAGE, 3)).copy()
        actions = np.column_stack([rng.uniform(-1, 1, (3, 6)), np.full(3, i % 2)])
        write_episode(directory, i, Episode(images, actions, f'reach the block {i}', f'ep {i}'))
    finish_dataset(directory)
    return directory


def _tokens(policy, cases):
    return [policy.predict(image, text).action_token_ids.tolist() for image, text in cases]


def test_merged_lora_export_predicts_the_unmerged_adapters_tokens(checkpoint, tmp_path):
    data = _dataset(tmp_path / 'data')
    out = tmp_path / 'lora'
    train(checkpoint, data, out, TrainConfig(steps=4, mode='lora', lora_rank=RANK, batch_size=4,
                                             learning_rate=1e-2, holdout_fraction=0.0,
                                             eval_every=4, save_every=4, threads=2,
                                             export_dtype='float32'), progress=False)
    rng = np.random.default_rng(3)
    images = [np.full((IMAGE, IMAGE, 3), c, np.uint8) for c in ([255, 0, 0], [0, 0, 255])]
    images += [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    texts = ['reach the block 0', 'reach the block 1', 'pick up the spoon']
    cases = [(image, text) for image in images for text in texts]

    base = load_policy(checkpoint, PolicyOptions(dtype='float32'))
    base_tokens = _tokens(base, cases)
    unmerged = load_policy(checkpoint, PolicyOptions(dtype='float32'))
    peft_model = wrap_lora(unmerged.model, RANK)        # injected into unmerged.model in place
    state = torch.load(out / STATE_FILE, weights_only=False)['model']   # the adapters only
    assert state.keys() == adapter_state(peft_model.state_dict()).keys()
    peft_model.load_state_dict(state, strict=False)
    assert any('lora_B' in k and v.abs().max() > 0 for k, v in state.items())
    unmerged_tokens = _tokens(unmerged, cases)
    merged_tokens = _tokens(load_policy(out / 'checkpoint', PolicyOptions(dtype='float32')), cases)

    assert merged_tokens == unmerged_tokens
    # the adapters were trained enough to change what the model says
    assert merged_tokens != base_tokens


@pytest.mark.skipif(torch.cuda.is_available(), reason='the refusal is for machines without CUDA')
def test_qlora_without_cuda_is_refused_clearly(checkpoint, tmp_path, capsys):
    data = _dataset(tmp_path / 'data')
    with pytest.raises(FinetuneError, match='qlora needs a CUDA GPU.*bitsandbytes.*--mode lora'):
        train(checkpoint, data, tmp_path / 'q', TrainConfig(steps=1, mode='qlora'), progress=False)
    rc = finetune_main(['--checkpoint', str(checkpoint), '--dataset', str(data), '--out',
                        str(tmp_path / 'q'), '--mode', 'qlora', '--steps', '1', '--no-progress'])
    assert rc == 2
    assert 'qlora needs a CUDA GPU' in capsys.readouterr().err
    assert not (tmp_path / 'q' / 'checkpoint').exists()
