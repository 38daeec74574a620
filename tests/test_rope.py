"""Rotary inverse frequencies with context scaling (default, linear, Llama-3.x's llama3), against transformers'."""
import pytest
import torch

from model import ModelArgs, preset, rope_inv_freq

CASES = {
    "llama-7b": preset("llama-7b"),
    "linear_x4": ModelArgs(dim=512, n_heads=4, rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "llama3.1-8b": preset("llama3.1-8b"),  # factor 8 over 8192 positions: every band (high, ramp, low) is used
    "llama3.2-1b": preset("llama3.2-1b"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rope_inv_freq_matches_transformers(name):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    a = CASES[name]
    rope = {"rope_type": "default", **(a.rope_scaling or {}), "rope_theta": a.rope_theta}
    cfg = LlamaConfig(hidden_size=a.dim, num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
                      head_dim=a.head_dim, max_position_embeddings=a.max_seq_len, rope_parameters=rope)
    ref = LlamaRotaryEmbedding(cfg).inv_freq.float()
    ours = rope_inv_freq(a)
    assert ours.shape == ref.shape and torch.allclose(ours, ref, rtol=1e-6, atol=0), (ours - ref).abs().max()
    if a.rope_scaling and a.rope_scaling["rope_type"] == "llama3":  # the test sees all three bands
        plain = rope_inv_freq(ModelArgs(dim=a.dim, n_heads=a.n_heads, rope_theta=a.rope_theta))
        ratio = plain / ours
        f = a.rope_scaling["factor"]
        assert (ratio == 1).any() and torch.isclose(ratio, torch.tensor(f)).any()
        assert ((ratio > 1.01) & (ratio < f * 0.99)).any()
