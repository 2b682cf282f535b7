"""Configuration of a VesperLM exported by `vesper export --format hf` (loaded with trust_remote_code)."""

from transformers import PretrainedConfig


class VesperConfig(PretrainedConfig):
    model_type = "vesper"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(self, vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=4096, flylora_rank=16, flylora_alpha=32.0,
                 era_gamma=0.1, layer_norm_eps=1e-6, rope_theta=10000.0, moe_enabled=False, moe_num_experts=8,
                 moe_top_k=2, use_cache=True, tie_word_embeddings=True, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.flylora_rank = flylora_rank
        self.flylora_alpha = flylora_alpha
        self.era_gamma = era_gamma
        self.layer_norm_eps = layer_norm_eps
        self.rope_theta = rope_theta
        self.moe_enabled = moe_enabled
        self.moe_num_experts = moe_num_experts
        self.moe_top_k = moe_top_k
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads
