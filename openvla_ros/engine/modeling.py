"""The OpenVLA network: timm ViT featurizers, the projector and a Llama decoder.

Module and parameter names match the Hugging Face checkpoint keys one to one (``vision_backbone.
featurizer.*``, ``projector.fc1.*``, ``language_model.model.layers.N.self_attn.q_proj.weight``, ...),
except timm 1.x's LayerScale parameter ``gamma``, which upstream stores as ``scale_factor``
(see :func:`checkpoint_key_to_module_key`).

The Llama decoder is written here rather than taken from transformers so that decoding can run
with a static, pre-allocated KV cache and no per-step framework overhead (the gpt-fast idea),
and so batched prompts of different lengths can be left-padded with exact masks and positions.
Numerics follow transformers 4.40.1's Llama (what the checkpoints were exported with): RMSNorm
in float32 then cast back before the weight multiply, RoPE angles in float32 with cos/sin cast to
the activation dtype, float32 logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import FUSED_ARCH, OpenVLAConfig, TextConfig

# timm 1.x names LayerScale's parameter ``gamma``; upstream OpenVLA checkpoints say ``scale_factor``
# (HF's from_pretrained used to rename any "gamma", so upstream patched timm).
_LS_CHECKPOINT = '.scale_factor'
_LS_TIMM = '.gamma'


def checkpoint_key_to_module_key(key: str) -> str:
    if key.startswith('vision_backbone.') and key.endswith(_LS_CHECKPOINT):
        return key[: -len(_LS_CHECKPOINT)] + _LS_TIMM
    return key


def module_key_to_checkpoint_key(key: str) -> str:
    if key.startswith('vision_backbone.') and key.endswith(_LS_TIMM):
        return key[: -len(_LS_TIMM)] + _LS_CHECKPOINT
    return key


# ----------------------------------------------------------------------------------------------
# Vision
# ----------------------------------------------------------------------------------------------
def create_featurizer(timm_id: str, kwargs: dict, act_layer: str | None, img_size: int) -> nn.Module:
    import timm

    return timm.create_model(timm_id, pretrained=False, num_classes=0, img_size=img_size,
                             act_layer=act_layer, **kwargs)


def featurize(vit: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Patch features after the second-to-last block, no final norm, prefix tokens dropped.

    This is what upstream's ``get_intermediate_layers(x, n={depth - 2})`` returns on timm 0.9.x;
    the last block is not run because its output is never used.
    """
    x = vit.patch_embed(pixels)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    for block in vit.blocks[:-1]:
        x = block(x)
    return x[:, vit.num_prefix_tokens:]


class VisionBackbone(nn.Module):
    def __init__(self, cfg: OpenVLAConfig):
        super().__init__()
        size = cfg.image_sizes[0]
        self.use_fused = cfg.use_fused_vision_backbone
        self.featurizer = create_featurizer(cfg.timm_model_ids[0], cfg.timm_model_kwargs[0],
                                            cfg.timm_override_act_layers[0], size)
        if self.use_fused:
            self.fused_featurizer = create_featurizer(cfg.timm_model_ids[1], cfg.timm_model_kwargs[1],
                                                      cfg.timm_override_act_layers[1], size)

    @property
    def embed_dim(self) -> int:
        dim = self.featurizer.embed_dim
        return dim + self.fused_featurizer.embed_dim if self.use_fused else dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.use_fused:
            return featurize(self.featurizer, pixel_values)
        # 6-channel input: [DINOv2 normalisation | SigLIP normalisation]; features concatenated.
        first, second = pixel_values[:, :3], pixel_values[:, 3:]
        return torch.cat([featurize(self.featurizer, first),
                          featurize(self.fused_featurizer, second)], dim=2)


class Projector(nn.Module):
    """Fused (3-layer, exact GELU) for DINOv2+SigLIP; 2-layer for single-backbone (v01) models."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool):
        super().__init__()
        self.fused = fused
        if fused:
            initial = 4 * vision_dim
            self.fc1 = nn.Linear(vision_dim, initial, bias=True)
            self.fc2 = nn.Linear(initial, llm_dim, bias=True)
            self.fc3 = nn.Linear(llm_dim, llm_dim, bias=True)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim, bias=True)
            self.fc2 = nn.Linear(llm_dim, llm_dim, bias=True)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(x)))
        if self.fused:
            x = self.fc3(self.act(x))
        return x


# ----------------------------------------------------------------------------------------------
# Llama
# ----------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVCache(nn.Module):
    """Static per-layer key/value buffers [batch, kv_heads, capacity, head_dim], allocated once.

    Registered (non-persistent) buffers rather than plain tensors: torch.compile then treats them
    as static inputs whose addresses never change, which is what lets CUDA graphs capture the
    in-place cache writes of the decode step. Rows ``[:b]`` serve any batch up to ``batch``.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        shape = (batch, n_kv_heads, capacity, head_dim)
        for i in range(n_layers):
            self.register_buffer(f'k{i}', torch.zeros(shape, dtype=dtype, device=device),
                                 persistent=False)
            self.register_buffer(f'v{i}', torch.zeros(shape, dtype=dtype, device=device),
                                 persistent=False)
        self.n_layers = n_layers
        self.batch = batch
        self.capacity = capacity

    @property
    def k(self) -> list[torch.Tensor]:
        return [getattr(self, f'k{i}') for i in range(self.n_layers)]

    @property
    def v(self) -> list[torch.Tensor]:
        return [getattr(self, f'v{i}') for i in range(self.n_layers)]

    def fits(self, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> bool:
        return (self.batch >= batch and self.capacity >= length and self.k0.dtype == dtype
                and self.k0.device == device)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)

    def forward(self, x, cos, sin, k_cache, v_cache, start, mask):
        """``start`` is the cache slot of the first new token: an int (keys sliced to what is
        filled), or a 1-element tensor for the static-shape decode step, which writes with
        index_copy_ and attends over the whole cache under ``mask`` so every step has the same
        shapes (torch.compile / CUDA graphs)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if isinstance(start, torch.Tensor):
            k_cache.index_copy_(2, start, k)
            v_cache.index_copy_(2, start, v)
            keys, values = k_cache, v_cache
        else:
            end = start + t
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            keys, values = k_cache[:, :, :end], v_cache[:, :, :end]
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            keys = keys.repeat_interleave(rep, dim=1)
            values = values.repeat_interleave(rep, dim=1)
        if mask is None:
            # No padding: a fresh prompt is purely causal; a single new token sees everything.
            out = F.scaled_dot_product_attention(q, keys, values,
                                                 is_causal=(isinstance(start, int) and start == 0
                                                            and t > 1))
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, k_cache, v_cache, start, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, start, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._rope_cos: torch.Tensor | None = None
        self._rope_sin: torch.Tensor | None = None

    def init_rope(self, device: torch.device) -> None:
        """float32 cos/sin tables for every position (not parameters, never saved)."""
        cfg = self.config
        dim = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64,
                                                          device=device).float() / dim))
        positions = torch.arange(cfg.max_position_embeddings, device=device).float()
        angles = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        self._rope_cos, self._rope_sin = emb.cos(), emb.sin()

    def new_cache(self, batch: int, capacity: int, dtype, device) -> KVCache:
        cfg = self.config
        return KVCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, capacity,
                       cfg.head_dim, dtype, device)

    def forward_embeds(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: KVCache,
                       start, mask: torch.Tensor | None, last: int = 1) -> torch.Tensor:
        """Run the decoder on ``embeds`` [B, T, D] written at cache slots ``start..start+T-1``
        of cache rows ``[:B]`` (positions must be below ``max_position_embeddings``; the caller
        checks).

        Returns float32 logits of the last position [B, V], or of the last ``last`` positions
        [B, last, V] when ``last`` > 1 (speculative verification).
        """
        b = embeds.shape[0]
        cos = self._rope_cos[position_ids].to(embeds.dtype).unsqueeze(1)
        sin = self._rope_sin[position_ids].to(embeds.dtype).unsqueeze(1)
        x = embeds
        keys, values = cache.k, cache.v
        for i, layer in enumerate(self.model.layers):
            k_rows = keys[i] if keys[i].shape[0] == b else keys[i][:b]
            v_rows = values[i] if values[i].shape[0] == b else values[i][:b]
            x = layer(x, cos, sin, k_rows, v_rows, start, mask)
        x = self.model.norm(x[:, -last:])
        logits = self.lm_head(x).float()
        return logits[:, -1] if last == 1 else logits

    def decode_step(self, token_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache,
                    slot: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """One token per row with static shapes: ``token_ids`` [B] written at cache slot ``slot``
        (a 1-element tensor), attending over the whole cache under ``key_mask`` [B, 1, 1, S].
        This is the function compiled under ``compile=True``."""
        embeds = self.model.embed_tokens(token_ids)[:, None]
        return self.forward_embeds(embeds, position_ids, cache, slot, key_mask)


# ----------------------------------------------------------------------------------------------
# Whole model
# ----------------------------------------------------------------------------------------------
class OpenVLAModel(nn.Module):
    def __init__(self, cfg: OpenVLAConfig):
        super().__init__()
        self.config = cfg
        self.vision_backbone = VisionBackbone(cfg)
        self.projector = Projector(self.vision_backbone.embed_dim, cfg.text.hidden_size,
                                   fused=cfg.arch_specifier == FUSED_ARCH)
        self.language_model = LlamaForCausalLM(cfg.text)

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """Checkpoint key -> shape of every tensor this architecture expects (works on meta)."""
        return {module_key_to_checkpoint_key(k): tuple(v.shape)
                for k, v in self.state_dict().items()}


def splice_image(text_embeds: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
    """[BOS, patches, rest of the prompt]: upstream puts the image right after BOS."""
    return torch.cat([text_embeds[:, :1], patch_embeds, text_embeds[:, 1:]], dim=1)
