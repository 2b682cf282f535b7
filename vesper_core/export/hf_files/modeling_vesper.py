"""VesperLM for transformers, written by `vesper export --format hf` (loaded with trust_remote_code).

A self-contained re-statement of Vesper's forward pass (vesper_core/model.py and layers/): pre-norm
blocks of RoPE multi-head attention (split-half rotation, tables in float32) and a GLU feed-forward
``down(ERA(gate(x)) * up(x))`` whose gate/up projections carry a FlyLoRA branch, or a top-k Mixture of
Experts of such feed-forwards; a final LayerNorm and an LM head tied to the embedding. Parameter names
are Vesper's, so the weights are Vesper's state dict unchanged. The KV cache is transformers' Cache
(DynamicCache by default), so ``model.generate`` works with all its decoding strategies.
"""

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_vesper import VesperConfig

# transformers 5 renamed the ``past_key_values`` argument and output field to ``cache``
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def rotary_tables(positions, head_dim, theta):
    """cos, sin of shape (B, 1, T, D/2), float32, for integer ``positions`` (B, T)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device)
    inv_freq = 1.0 / (theta ** (exponents / head_dim))  # (D/2,)
    angles = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x, cos, sin):
    """Rotate (B, NH, T, D) by split halves, in float32, returned in x's dtype."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def era(x, gamma):
    """ERA(x) = GELU_tanh(x) + gamma * softplus(x), computed in at least float32."""
    xc = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.gelu(xc, approximate="tanh")
    if gamma > 0:
        out = out + gamma * F.softplus(xc)
    return out.to(x.dtype)


class VesperAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        H = config.hidden_size
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = H // self.num_heads
        self.q_proj = nn.Linear(H, H)
        self.k_proj = nn.Linear(H, H)
        self.v_proj = nn.Linear(H, H)
        self.o_proj = nn.Linear(H, H)

    def forward(self, x, cos, sin, mask, cache):
        B, T, H = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, NH, T, D)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, NH, S, D)
        if mask is None:  # no padding, and either a prefill (causal) or one new token (sees everything)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H))  # (B, T, H)


class FlyLoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * lora_up(lora_down(x))``."""

    def __init__(self, in_features, out_features, rank, alpha):
        super().__init__()
        self.base = nn.Linear(in_features, out_features)
        self.scaling = alpha / rank if rank > 0 else 0.0
        if rank > 0:
            self.lora_down = nn.Linear(in_features, rank)
            self.lora_up = nn.Linear(rank, out_features)
        else:
            self.lora_down = self.lora_up = None

    def forward(self, x):
        y = self.base(x)
        if self.lora_up is not None:
            y = y + self.scaling * self.lora_up(self.lora_down(x))
        return y


class VesperFeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        H, I = config.hidden_size, config.intermediate_size
        self.gate_proj = FlyLoRALinear(H, I, config.flylora_rank, config.flylora_alpha)
        self.up_proj = FlyLoRALinear(H, I, config.flylora_rank, config.flylora_alpha)
        self.down_proj = nn.Linear(I, H)
        self.gamma = float(config.era_gamma)

    def forward(self, x):  # (..., H) -> (..., H)
        return self.down_proj(era(self.gate_proj(x), self.gamma) * self.up_proj(x))


class VesperMoE(nn.Module):
    """Softmax routing in float32, top-k experts per token, weights renormalised over the k picks."""

    def __init__(self, config):
        super().__init__()
        self.top_k = config.moe_top_k
        self.router = nn.Linear(config.hidden_size, config.moe_num_experts)
        self.experts = nn.ModuleList(VesperFeedForward(config) for _ in range(config.moe_num_experts))

    def forward(self, x):
        tokens = x.reshape(-1, x.shape[-1])  # (N, H)
        probs = self.router(tokens).float().softmax(dim=-1)  # (N, E)
        top_probs, top_experts = probs.topk(self.top_k, dim=-1)  # (N, K)
        weights = top_probs / top_probs.sum(dim=-1, keepdim=True)
        out = tokens.new_zeros(tokens.shape, dtype=torch.float32)
        for index, expert in enumerate(self.experts):
            rows, slots = (top_experts == index).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            out.index_add_(0, rows, expert(tokens[rows]).float() * weights[rows, slots, None])
        return out.to(x.dtype).view(x.shape)


class VesperBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = VesperAttention(config, layer_idx)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = VesperMoE(config) if config.moe_enabled else VesperFeedForward(config)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return x + self.ffn(self.ffn_norm(x))


class VesperPreTrainedModel(PreTrainedModel):
    config_class = VesperConfig
    base_model_prefix = "vesper"
    _no_split_modules = ["VesperBlock"]
    _supports_cache_class = True
    _supports_sdpa = True

    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class VesperForCausalLM(VesperPreTrainedModel, GenerationMixin):
    if _TRANSFORMERS_MAJOR >= 5:
        _tied_weights_keys = {"lm_head.weight": "embeddings.weight"}
    else:
        _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(VesperBlock(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, cache=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            try:
                cache = DynamicCache(config=self.config)
            except TypeError:  # transformers < 4.56
                cache = DynamicCache()
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        B, T = x.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        if position_ids is None:
            if padded:  # left padding: each row counts its positions from its first real token
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=x.device)[None].expand(B, T)
        cos, sin = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta)
        mask = self._mask(attention_mask if padded else None, past, T, x.device)

        for block in self.layers:
            x = block(x, cos, sin, mask, cache if use_cache else None)
        hidden = self.final_norm(x)  # (B, T, H)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)  # (B, T', V)
        loss = None
        if labels is not None:  # the transformers convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})

    @staticmethod
    def _mask(attention_mask, past, T, device):
        """Boolean (B or 1, 1, T, past + T) mask, or None when plain causal attention is exact."""
        if attention_mask is None and (T == 1 or past == 0):
            return None
        keys = torch.arange(past + T, device=device)
        queries = torch.arange(past, past + T, device=device)
        allowed = (keys[None, :] <= queries[:, None])[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, -(past + T):].bool()
        return allowed | (keys[None, :] == queries[:, None])  # a query always sees itself: no empty row
