import json
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import make_hf_llama
from kernels import linear_cross_entropy
from model import ModelArgs, Transformer, preset
from weights import load_model, save_hf

CONFIGS = {
    "mha": dict(num_key_value_heads=4),
    "gqa": dict(num_key_value_heads=2),
    "tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "llama3_rope": dict(num_key_value_heads=1, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                        rope_theta=500000.0),
}


@pytest.fixture(params=list(CONFIGS))
def hf_pair(request, tmp_path):
    hf = make_hf_llama(tmp_path / "hf", **CONFIGS[request.param])
    ours = load_model(str(tmp_path / "hf"))
    return hf, ours, tmp_path


def test_7b_preset_parameter_count():
    with torch.device("meta"):
        assert Transformer(preset("llama-7b")).num_params() == 6_738_415_616
        assert Transformer(preset("llama2-7b")).num_params() == 6_738_415_616
        assert Transformer(preset("llama-13b")).num_params() == 13_015_864_320
        assert Transformer(preset("llama2-70b")).num_params() == 68_976_648_192
        # Meta's model cards: Llama-3-8B 8.03B; Llama-3.2-1B 1.24B with tied embeddings
        assert Transformer(preset("llama3-8b")).num_params() == 8_030_261_248
        assert Transformer(preset("llama3.1-8b")).num_params() == 8_030_261_248
        assert Transformer(preset("llama3.2-1b")).num_params() == 1_235_814_400


def test_hf_names_are_our_names(tmp_path):
    make_hf_llama(tmp_path / "hf")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        hf_keys = set(f.keys())
    assert hf_keys == set(load_model(str(tmp_path / "hf")).state_dict())


def test_logits_and_loss_match_transformers(hf_pair):
    hf, ours, _ = hf_pair
    torch.manual_seed(1)
    idx = torch.randint(0, 256, (3, 37))
    targets = torch.randint(0, 256, (3, 37))
    targets[0, :10] = -100
    with torch.no_grad():
        ref = hf(idx, labels=None)
        logits, loss = ours(idx, targets)
    assert (logits - ref.logits).abs().max().item() <= 1e-4
    ref_loss = torch.nn.functional.cross_entropy(ref.logits.view(-1, 256), targets.view(-1), ignore_index=-100)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5


def test_greedy_generation_matches_transformers(hf_pair):
    hf, ours, _ = hf_pair
    prompt = torch.tensor([[1, 17, 99, 42, 7, 200, 3]])
    ref = hf.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0,
                      min_new_tokens=40)
    out = ours.generate(prompt, max_new_tokens=40, temperature=0.0)
    assert out.shape == (1, 47)
    assert out.tolist() == ref.tolist()


def test_compiled_decoding_matches_transformers(tmp_path):
    """generate(compile=True): the compiled one-token steps give HF's greedy tokens; one
    graph serves prompts of different lengths (no recompilation), and a batch of 2 is exact too."""
    hf = make_hf_llama(tmp_path / "hf", num_key_value_heads=2)
    ours = load_model(str(tmp_path / "hf"))
    torch._dynamo.reset()
    torch.manual_seed(3)
    prompts = [torch.randint(3, 256, (1, 7)), torch.randint(3, 256, (1, 12)), torch.randint(3, 256, (2, 9))]  # 0 is pad for HF
    for i, prompt in enumerate(prompts):
        ref = hf.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0,
                          min_new_tokens=30)
        with torch._dynamo.config.patch(error_on_recompile=(i == 1)):  # prompt 2: same graph as prompt 1
            out = ours.generate(prompt, max_new_tokens=30, temperature=0.0, compile=True)
        assert out.tolist() == ref.tolist()
    # one decoding step's logits: compiled vs eager, fp32
    idx = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        ours.setup_cache(1, 256)
        ours(idx[:, :19])
        eager, _ = ours(idx[:, 19:], start_pos=19)
        compiled, _ = ours.compiled_decoder()(idx[:, 19:], start_pos=19)
        ours.clear_cache()
    assert (compiled - eager).abs().max().item() <= 1e-5


def test_kv_cache_chunks_equal_full_forward(hf_pair):
    _, ours, _ = hf_pair
    idx = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        full, _ = ours(idx)
        ours.setup_cache(2, 30)
        a, _ = ours(idx[:, :11], start_pos=0)
        b, _ = ours(idx[:, 11:12], start_pos=11)  # one decode step
        c, _ = ours(idx[:, 12:], start_pos=12)  # several tokens after a cached prefix
        ours.clear_cache()
    assert (torch.cat([a, b, c], 1) - full).abs().max().item() <= 1e-5


def test_export_roundtrip_loads_in_transformers(hf_pair):
    from transformers import LlamaForCausalLM
    _, ours, tmp = hf_pair
    out = save_hf(ours, ours.args, tmp / "export", dtype=torch.float32, max_shard_bytes=40_000)
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))  # small limit forces sharding
    assert not os.path.exists(str(out) + ".tmp")
    hf2 = LlamaForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, 256, (2, 25))
    with torch.no_grad():
        assert (hf2(idx).logits - ours(idx)[0]).abs().max().item() <= 1e-5
        assert (load_model(out)(idx)[0] - ours(idx)[0]).abs().max().item() == 0.0


def test_bf16_load_and_export(tmp_path):
    make_hf_llama(tmp_path / "hf")
    m = load_model(str(tmp_path / "hf"), dtype=torch.bfloat16)
    assert m.lm_head.weight.dtype == torch.bfloat16 and m.rope_cos.dtype == torch.float32
    save_hf(m, m.args, tmp_path / "bf16")
    cfg = json.load(open(tmp_path / "bf16" / "config.json"))
    assert cfg["torch_dtype"] == "bfloat16"
    assert torch.equal(load_model(str(tmp_path / "bf16"), dtype=torch.bfloat16).lm_head.weight, m.lm_head.weight)


def test_scratch_init_and_loss_ignores_minus_100():
    torch.manual_seed(0)
    m = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, intermediate_size=64,
                              max_seq_len=16))
    m.init_weights()
    idx = torch.randint(0, 50, (2, 16))
    t = idx.clone()
    _, full = m(idx, t)
    assert abs(full.item() - torch.log(torch.tensor(50.0)).item()) < 0.5  # near-uniform at init
    t2 = t.clone()
    t2[:, :8] = -100
    logits, part = m(idx, t2)
    ref = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 50), t[:, 8:].reshape(-1))
    assert abs(part.item() - ref.item()) < 1e-6
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 17, dtype=torch.long))


# --- bad inputs -----------------------------------------------------------------------------------

def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    make_hf_llama(tmp_path / "hf")
    os.remove(tmp_path / "hf" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(str(tmp_path / "hf"))


def test_missing_shard_named(tmp_path):
    make_hf_llama(tmp_path / "hf")
    m = load_model(str(tmp_path / "hf"))
    save_hf(m, m.args, tmp_path / "sh", dtype=torch.float32, max_shard_bytes=40_000)
    shards = sorted(p for p in os.listdir(tmp_path / "sh") if p.startswith("model-"))
    os.remove(tmp_path / "sh" / shards[0])
    with pytest.raises(FileNotFoundError, match=shards[0]):
        load_model(str(tmp_path / "sh"))


def test_non_llama_architecture(tmp_path):
    make_hf_llama(tmp_path / "hf")
    cfg = json.load(open(tmp_path / "hf" / "config.json"))
    cfg["architectures"], cfg["model_type"] = ["MistralForCausalLM"], "mistral"
    json.dump(cfg, open(tmp_path / "hf" / "config.json", "w"))
    with pytest.raises(ValueError, match="only LlamaForCausalLM"):
        load_model(str(tmp_path / "hf"))


def _rewrite_tensors(path, fn):
    from safetensors.torch import load_file, save_file
    f = os.path.join(path, "model.safetensors")
    save_file(fn(load_file(f)), f)


def test_missing_and_unexpected_tensors(tmp_path):
    make_hf_llama(tmp_path / "hf")
    _rewrite_tensors(tmp_path / "hf", lambda sd: {k: v for k, v in sd.items() if "layers.1.mlp.up_proj" not in k})
    with pytest.raises(ValueError, match=r"missing tensors \(1\): model.layers.1.mlp.up_proj.weight"):
        load_model(str(tmp_path / "hf"))
    make_hf_llama(tmp_path / "hf2")
    _rewrite_tensors(tmp_path / "hf2", lambda sd: {**sd, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)})
    with pytest.raises(ValueError, match=r"unexpected tensors \(1\): model.layers.0.self_attn.q_proj.bias"):
        load_model(str(tmp_path / "hf2"))


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    make_hf_llama(tmp_path / "hf")
    _rewrite_tensors(tmp_path / "hf", lambda sd: {**sd, "model.norm.weight": torch.ones(65)})
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \(65,\) but the model expects \(64,\)"):
        load_model(str(tmp_path / "hf"))


@pytest.mark.parametrize("frozen_head", [False, True])
def test_chunked_linear_cross_entropy_matches_full_logits(frozen_head, monkeypatch):
    import kernels
    monkeypatch.setattr(kernels.LinearCrossEntropy, "chunk_elems", 3000 * 47)  # 47 rows a chunk: 7 chunks, a ragged one
    torch.manual_seed(0)
    m = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=3000, intermediate_size=64, max_seq_len=64))
    m.init_weights()
    m.lm_head.weight.requires_grad_(not frozen_head)
    idx = torch.randint(0, 3000, (5, 64))
    t = torch.randint(0, 3000, (5, 64))
    t[0, :30] = -100
    t[3] = -100
    grads = []
    for fused in (False, True):
        m.zero_grad()
        _, loss = m(idx, t, reduction="sum", loss_fn=linear_cross_entropy if fused else None)
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    assert abs(l0 - l1) <= 1e-5 * abs(l0) and g0.keys() == g1.keys()
    assert ("lm_head.weight" in g1) != frozen_head
    for n in g0:
        assert (g0[n] - g1[n]).abs().max().item() <= 1e-5, n
    _, mean = m(idx, t, loss_fn=linear_cross_entropy)
    assert abs(mean.item() - l0 / (t != -100).sum().item()) <= 1e-5
    small = m(idx[1:2, :10], t[1:2, :10], reduction="sum", loss_fn=linear_cross_entropy)[1]  # fewer rows than a chunk
    full = F.cross_entropy(m(idx[1:2, :10])[0].view(-1, 3000), t[1:2, :10].reshape(-1), reduction="sum")
    assert abs(small.item() - full.item()) <= 1e-5 * abs(full.item())
