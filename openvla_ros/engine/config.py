"""OpenVLA checkpoint configuration (``config.json``) and the synthetic presets.

Upstream's ``config.json`` carries a Llama ``text_config`` that omits most fields; the omitted
ones are the defaults of transformers 4.40.1's ``LlamaConfig`` (the version the checkpoints were
exported with), not those of whatever transformers is installed now. ``TEXT_CONFIG_DEFAULTS``
holds them, once.

``timm_model_kwargs`` is a project extension: one dict per vision backbone of constructor
overrides for the timm ViT (``embed_dim``, ``depth``, ``num_heads``, ...), so tiny models keep the
real layout and parameter names.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from .api import CheckpointError

# transformers 4.40.1 LlamaConfig defaults (openvla-7b's exported text_config relies on them).
TEXT_CONFIG_DEFAULTS: dict[str, Any] = {
    'vocab_size': 32000,
    'hidden_size': 4096,
    'intermediate_size': 11008,
    'num_hidden_layers': 32,
    'num_attention_heads': 32,
    'num_key_value_heads': None,     # None means "same as num_attention_heads"
    'hidden_act': 'silu',
    'max_position_embeddings': 2048,
    'rms_norm_eps': 1e-6,
    'rope_theta': 10000.0,
    'attention_bias': False,
    'tie_word_embeddings': False,
    'bos_token_id': 1,
    'eos_token_id': 2,
    'pad_token_id': None,
}

# Sane bounds for every dimension a config.json may state, checked before anything is built: far
# above any OpenVLA/Llama/ViT in use (openvla-7b: 32 layers, 4096 wide, ViTs 24/27 blocks, 1152
# wide), far below what would take minutes to even describe on the meta device.
TEXT_BOUNDS = {
    'vocab_size': (1, 1_048_576),
    'hidden_size': (2, 65_536),
    'intermediate_size': (1, 262_144),
    'num_hidden_layers': (1, 512),
    'num_attention_heads': (1, 1024),
    'num_key_value_heads': (1, 1024),
    'max_position_embeddings': (2, 1_048_576),
    'bos_token_id': (0, 1_048_575),
    'eos_token_id': (0, 1_048_575),
}
TIMM_BOUNDS = {'embed_dim': (1, 16_384), 'depth': (1, 256), 'num_heads': (1, 1024),
               'patch_size': (1, 1024), 'num_classes': (0, 0), 'reg_tokens': (0, 1024),
               'img_size': (1, 4096)}
MAX_MLP_RATIO = 64.0
IMAGE_SIZE_BOUNDS = (1, 4096)
PAD_TO_MULTIPLE_BOUNDS = (0, 65_536)


def check_int(where: str, value, lo: int, hi: int) -> int:
    """``value`` must be a JSON integer (not a bool, not a float) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f'config.json: {where} must be an integer, got {value!r}')
    if not lo <= value <= hi:
        raise CheckpointError(f'config.json: {where} = {value} is outside the sane range {lo}..{hi}')
    return value


def check_positive_float(where: str, value, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= hi:
        raise CheckpointError(f'config.json: {where} must be a finite number in (0, {hi}], '
                              f'got {value!r}')
    return float(value)


OPENVLA_7B_TIMM_IDS = ['vit_large_patch14_reg4_dinov2.lvd142m', 'vit_so400m_patch14_siglip_224']
FUSED_ARCH = 'no-align+fused-gelu-mlp'
NON_FUSED_ARCH = 'no-align+gelu-mlp'


@dataclass
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    hidden_act: str
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    attention_bias: bool
    tie_word_embeddings: bool
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int | None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: dict) -> 'TextConfig':
        merged = dict(TEXT_CONFIG_DEFAULTS)
        merged.update({k: v for k, v in raw.items() if k in TEXT_CONFIG_DEFAULTS})
        if merged['num_key_value_heads'] is None:
            merged['num_key_value_heads'] = merged['num_attention_heads']
        if merged['hidden_act'] != 'silu':
            raise CheckpointError(f"text_config.hidden_act {merged['hidden_act']!r} is not supported "
                                  "(OpenVLA's Llama uses 'silu')")
        for name, (lo, hi) in TEXT_BOUNDS.items():
            check_int(f'text_config.{name}', merged[name], lo, hi)
        if merged['pad_token_id'] is not None:
            check_int('text_config.pad_token_id', merged['pad_token_id'], 0, merged['vocab_size'] - 1)
        check_positive_float('text_config.rms_norm_eps', merged['rms_norm_eps'], 1.0)
        check_positive_float('text_config.rope_theta', merged['rope_theta'])
        heads, kv_heads = merged['num_attention_heads'], merged['num_key_value_heads']
        if merged['hidden_size'] % heads or (merged['hidden_size'] // heads) % 2:
            raise CheckpointError(f"config.json: text_config.hidden_size {merged['hidden_size']} "
                                  f'must be a multiple of num_attention_heads {heads} with an even '
                                  'head dimension')
        if heads % kv_heads:
            raise CheckpointError(f'config.json: text_config.num_attention_heads {heads} must be a '
                                  f'multiple of num_key_value_heads {kv_heads}')
        return cls(**merged)


@dataclass
class OpenVLAConfig:
    timm_model_ids: list[str]
    timm_model_kwargs: list[dict]
    timm_override_act_layers: list[str | None]
    image_sizes: list[int]
    use_fused_vision_backbone: bool
    arch_specifier: str
    text: TextConfig
    pad_to_multiple_of: int
    n_action_bins: int
    norm_stats: dict
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def action_vocab_size(self) -> int:
        """The tokenizer's base vocabulary: action ids count down from here (upstream quirk)."""
        return self.text.vocab_size - self.pad_to_multiple_of

    @classmethod
    def from_dict(cls, raw: dict) -> 'OpenVLAConfig':
        if not isinstance(raw, dict):
            raise CheckpointError('config.json must hold a JSON object')
        try:
            ids = list(raw['timm_model_ids'])
            fused = bool(raw.get('use_fused_vision_backbone', len(ids) == 2))
            n_backbones = 2 if fused else 1
            if len(ids) != n_backbones:
                raise CheckpointError(f'config.json: timm_model_ids has {len(ids)} entries, '
                                      f'expected {n_backbones} (use_fused_vision_backbone={fused})')
            kwargs = raw.get('timm_model_kwargs') or [{} for _ in ids]
            acts = raw.get('timm_override_act_layers') or [None for _ in ids]
            if len(kwargs) != n_backbones or len(acts) != n_backbones:
                raise CheckpointError('config.json: timm_model_kwargs / timm_override_act_layers '
                                      'must have one entry per backbone')
            arch = raw.get('arch_specifier', FUSED_ARCH if fused else NON_FUSED_ARCH)
            if arch not in (FUSED_ARCH, NON_FUSED_ARCH):
                raise CheckpointError(f'config.json: arch_specifier {arch!r} is not supported')
            for i, timm_id in enumerate(ids):
                if not isinstance(timm_id, str):
                    raise CheckpointError(f'config.json: timm_model_ids[{i}] must be a string')
            for i, entry in enumerate(kwargs):
                _check_timm_kwargs(i, entry)
            image_sizes = raw.get('image_sizes', [224, 224])
            if not isinstance(image_sizes, list) or not image_sizes:
                raise CheckpointError('config.json: image_sizes must be a non-empty list')
            for i, size in enumerate(image_sizes):
                check_int(f'image_sizes[{i}]', size, *IMAGE_SIZE_BOUNDS)
            text = TextConfig.from_dict(raw.get('text_config', {}))
            pad = check_int('pad_to_multiple_of', raw.get('pad_to_multiple_of', 64),
                            *PAD_TO_MULTIPLE_BOUNDS)
            if pad >= text.vocab_size:
                raise CheckpointError(f'config.json: pad_to_multiple_of {pad} leaves no base '
                                      f'vocabulary of text_config.vocab_size {text.vocab_size}')
            # action ids count down from the base vocabulary: every bin needs its own token
            check_int('n_action_bins', raw.get('n_action_bins', 256), 2, text.vocab_size - pad)
            return cls(
                timm_model_ids=ids,
                timm_model_kwargs=[dict(k) for k in kwargs],
                timm_override_act_layers=list(acts),
                image_sizes=list(image_sizes),
                use_fused_vision_backbone=fused,
                arch_specifier=arch,
                text=text,
                pad_to_multiple_of=pad,
                n_action_bins=int(raw.get('n_action_bins', 256)),
                norm_stats=dict(raw.get('norm_stats') or {}),
                raw=raw,
            )
        except KeyError as exc:
            raise CheckpointError(f'config.json is missing the field {exc.args[0]!r}') from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f'config.json is malformed: {exc}') from None


def _check_timm_kwargs(index: int, kwargs) -> None:
    if not isinstance(kwargs, dict):
        raise CheckpointError(f'config.json: timm_model_kwargs[{index}] must be an object')
    for name, value in kwargs.items():
        where = f'timm_model_kwargs[{index}].{name}'
        if name in TIMM_BOUNDS:
            check_int(where, value, *TIMM_BOUNDS[name])
        elif isinstance(value, float) or name.endswith('ratio'):
            check_positive_float(where, value, MAX_MLP_RATIO)
        elif isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 65_536:
            raise CheckpointError(f'config.json: {where} = {value} is outside the sane range '
                                  '0..65536')
    dim, heads = kwargs.get('embed_dim'), kwargs.get('num_heads')
    if dim is not None and heads is not None and dim % heads:
        raise CheckpointError(f'config.json: timm_model_kwargs[{index}].embed_dim {dim} must be '
                              f'a multiple of num_heads {heads}')


def _bridge_orig_stats() -> dict:
    """The real ``bridge_orig`` statistics of openvla-7b (action part; computed by upstream's
    ``get_dataset_statistics`` in ``prismatic/vla/datasets/rlds/utils/data_utils.py``)."""
    return {
        'action': {
            'mask': [True, True, True, True, True, True, False],
            'q01': [-0.02872725307941437, -0.04170349963009357, -0.026093858778476715,
                    -0.08092105075716972, -0.09288699507713317, -0.20718276381492615, 0.0],
            'q99': [0.028309678435325586, 0.040855254605412394, 0.040161586627364146,
                    0.08192047759890528, 0.07792850524187081, 0.20382574498653397, 1.0],
            'mean': [0.0002334194869035855, 0.00013004911306779832, -0.00012762474943883717,
                     -0.0001556558854645118, -0.0004039328487124294, 0.00023557482927571982,
                     0.5764579176902771],
            'std': [0.009765930473804474, 0.013689135201275349, 0.012667362578213215,
                    0.028534092009067535, 0.030637972056865692, 0.07691419124603271,
                    0.4973701536655426],
            'min': [-0.4007510244846344, -0.13874775171279907, -0.22553899884223938,
                    -3.2010786533355713, -1.8618112802505493, -6.279075622558594, 0.0],
            'max': [0.41691166162490845, 0.25864794850349426, 0.21218234300613403,
                    3.122201919555664, 1.8618112802505493, 6.280478477478027, 1.0],
        },
        'num_trajectories': 60064,
    }


BRIDGE_ORIG_STATS = _bridge_orig_stats()


def openvla_7b_config() -> dict:
    """The openvla-7b ``config.json`` (as upstream's ``convert_openvla_weights_to_hf.py`` writes
    it): real timm ids, no kwargs, LlamaConfig defaults."""
    return {
        'model_type': 'openvla',
        'architectures': ['OpenVLAForActionPrediction'],
        'vision_backbone_id': 'dinosiglip-vit-so-224px',
        'llm_backbone_id': 'llama2-7b-pure',
        'arch_specifier': FUSED_ARCH,
        'use_fused_vision_backbone': True,
        'image_resize_strategy': 'resize-naive',
        'timm_model_ids': list(OPENVLA_7B_TIMM_IDS),
        'timm_override_act_layers': [None, None],
        'image_sizes': [224, 224],
        'hf_llm_id': 'meta-llama/Llama-2-7b-hf',
        'llm_max_length': 2048,
        'pad_token_id': 32000,
        'pad_to_multiple_of': 64,
        'n_action_bins': 256,
        'output_projector_states': False,
        'torch_dtype': 'bfloat16',
        'norm_stats': {'bridge_orig': copy.deepcopy(BRIDGE_ORIG_STATS)},
        'text_config': {
            'model_type': 'llama',
            'vocab_size': 32064,
            'pad_token_id': 32000,
            'torch_dtype': 'bfloat16',
            'use_cache': True,
        },
        'transformers_version': '4.40.1',
    }


def mid_config() -> dict:
    """A mid-size preset for CPU numbers: real ViT widths shrunk in depth, a 1024-wide 8-layer Llama."""
    cfg = openvla_7b_config()
    cfg['timm_model_kwargs'] = [
        {'embed_dim': 384, 'depth': 6, 'num_heads': 6},
        {'embed_dim': 384, 'depth': 6, 'num_heads': 6},
    ]
    cfg['text_config'].update({'hidden_size': 1024, 'intermediate_size': 2816,
                               'num_hidden_layers': 8, 'num_attention_heads': 8})
    return cfg


def tiny_config(vit_dim: int = 48, vit_depth: int = 3, vit_heads: int = 3, llm_dim: int = 64,
                llm_layers: int = 2, llm_heads: int = 4, llm_mlp: int = 128) -> dict:
    """The layout of the parity fixture with adjustable sizes (used by :mod:`.tiny`)."""
    cfg = openvla_7b_config()
    cfg['timm_model_kwargs'] = [
        {'embed_dim': vit_dim, 'depth': vit_depth, 'num_heads': vit_heads},
        {'embed_dim': vit_dim, 'depth': vit_depth, 'num_heads': vit_heads},
    ]
    cfg['text_config'].update({'hidden_size': llm_dim, 'intermediate_size': llm_mlp,
                               'num_hidden_layers': llm_layers, 'num_attention_heads': llm_heads,
                               'num_key_value_heads': llm_heads})
    return cfg


def v01_tiny_config(vit_dim: int = 48, vit_depth: int = 3, vit_heads: int = 3, llm_dim: int = 64,
                    llm_layers: int = 2, llm_heads: int = 4, llm_mlp: int = 128) -> dict:
    """openvla-v01 layout (upstream ``prismatic/conf/vla.py`` and ``conf/models.py``): SigLIP only,
    2-layer projector, letterbox, shrunk."""
    cfg = tiny_config(vit_dim, vit_depth, vit_heads, llm_dim, llm_layers, llm_heads, llm_mlp)
    cfg.update({'vision_backbone_id': 'siglip-vit-so400m', 'llm_backbone_id': 'vicuna-v15-7b',
                'arch_specifier': NON_FUSED_ARCH, 'use_fused_vision_backbone': False,
                'image_resize_strategy': 'letterbox',
                'timm_model_ids': [OPENVLA_7B_TIMM_IDS[1]],
                'timm_model_kwargs': [cfg['timm_model_kwargs'][1]],
                'timm_override_act_layers': [None]})
    return cfg


SYNTHETIC_PRESETS = {'full': openvla_7b_config, 'mid': mid_config, 'tiny': tiny_config}


def openvla_7b_preprocessor_config() -> dict:
    """openvla-7b's ``preprocessor_config.json`` (upstream's PrismaticImageProcessor,
    ``processing_prismatic.py``)."""
    # float32-rounded ImageNet constants, exactly as serialised by the upstream conversion
    dino_mean = [0.48500001430511475, 0.4560000002384186, 0.4059999883174896]
    dino_std = [0.2290000021457672, 0.2240000069141388, 0.22499999403953552]
    resize = {'antialias': True, 'interpolation': 3, 'max_size': None, 'size': [224, 224]}
    return {
        'image_processor_type': 'PrismaticImageProcessor',
        'image_resize_strategy': 'resize-naive',
        'use_fused_vision_backbone': True,
        'input_sizes': [[3, 224, 224], [3, 224, 224]],
        'interpolations': ['bicubic', 'bicubic'],
        'means': [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]],
        'stds': [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],
        'tvf_resize_params': [dict(resize), dict(resize)],
        'tvf_crop_params': [{'output_size': [224, 224]}, {'output_size': [224, 224]}],
        'tvf_normalize_params': [{'inplace': False, 'mean': dino_mean, 'std': dino_std},
                                 {'inplace': False, 'mean': [0.5] * 3, 'std': [0.5] * 3}],
        'tvf_do_letterbox': False,
        'tvf_letterbox_fill': None,
    }


def v01_preprocessor_config() -> dict:
    """openvla-v01's image processor (derived from upstream ``prismatic/conf/models.py``):
    letterbox with fill 127, then timm's
    Resize(shorter side 224) + CenterCrop(224), SigLIP normalisation, 3 channels."""
    return {
        'image_processor_type': 'PrismaticImageProcessor',
        'image_resize_strategy': 'letterbox',
        'use_fused_vision_backbone': False,
        'input_sizes': [[3, 224, 224]],
        'interpolations': ['bicubic'],
        'means': [[0.5, 0.5, 0.5]],
        'stds': [[0.5, 0.5, 0.5]],
        'tvf_resize_params': [{'antialias': True, 'interpolation': 3, 'max_size': None, 'size': 224}],
        'tvf_crop_params': [{'output_size': [224, 224]}],
        'tvf_normalize_params': [{'inplace': False, 'mean': [0.5] * 3, 'std': [0.5] * 3}],
        'tvf_do_letterbox': True,
        'tvf_letterbox_fill': [127, 127, 127],
    }
