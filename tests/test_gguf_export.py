"""GGUF out (gguf_export.py): our files read back by transformers' GGUF loader and by our own reader, their
vocabulary tokenizing as sentencepiece and as the real SmolLM2 GGUF do, the lossy types within stated bounds, LoRA
merged and as a llama.cpp adapter, and every bad input a one-line error that leaves no file behind.
(llama.cpp itself, and byte-parity with llama.cpp's converter, are checked outside CI: tests/refs/.)"""
import json
import os
import sys

import numpy as np
import pytest
import torch

from conftest import data_path, make_hf_llama, make_hf_with_tokenizer
from weights import load_model, unpermute_rope_rows

gguf = pytest.importorskip("gguf", reason="GGUF export needs llama.cpp's gguf package: pip install gguf")
from gguf_export import main as export_main, save_gguf, save_gguf_lora  # noqa: E402
from tokenizer import Tokenizer, gguf_reader  # noqa: E402
from test_gguf import FIG3_TOPICS, llama3_rope_divisors, llama_cpp_permute  # noqa: E402  the converter's formulas


GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "llamacpp_smollm2.json")


def llama_cpp_golden():
    """llama.cpp's own token ids and greedy tokens on SmolLM2 re-exported as F16 (tests/refs/llamacpp_check.py)."""
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)


def ids(seed, n=40, vocab=256):
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


def logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


def fields(path):
    return {k: f.contents() for k, f in gguf_reader(str(path)).fields.items()}


def tensor_types(path):
    return {t.name: t.tensor_type.name for t in gguf_reader(str(path)).tensors}


def real_texts(n=12):
    """PubMedQA questions and contexts: real biomedical text with numbers, units and punctuation."""
    with open(data_path("pubmedqa", "ori_pqal.json")) as f:
        recs = list(json.load(f).values())[:n]
    return [r["QUESTION"] + " " + " ".join(r["CONTEXTS"]) for r in recs] + [
        " leading space", "two  spaces\tand\ttabs\n\nnewlines", "Serum K+ 5.9 mEq/L (×2) — naïve 😀", "<s> x </s>"]


# -----------------------------------------------------------------------------
# F32: transformers and our reader

@pytest.mark.parametrize("tied", [False, True])
def test_f32_gguf_gives_transformers_and_our_logits(tmp_path, tied):
    """A tiny LLaMA (GQA) in F32: transformers' GGUF loader within 1e-4 of our model, our reader bit-identical;
    the tied head is token_embd alone, as llama.cpp expects. (No vocabulary: transformers' model loader needs none,
    and the vocabulary is tested below.)"""
    from transformers import LlamaForCausalLM
    make_hf_llama(tmp_path / "hf", num_key_value_heads=2, tie_word_embeddings=tied)
    ours = load_model(str(tmp_path / "hf"))
    path = save_gguf(ours, ours.args, tmp_path / "m.gguf", "f32")
    assert ("output.weight" in tensor_types(path)) == (not tied)
    back = load_model(path)
    idx = ids(0)
    assert torch.equal(logits(back, idx), logits(ours, idx))
    assert back.args.tie_word_embeddings == tied and back.args.n_kv_heads == 2
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (hf(idx).logits - logits(ours, idx)).abs().max().item() <= 1e-4


def test_metadata_is_the_converters(tmp_path):
    """The llama.* keys llama.cpp's converter writes, with the values of an HF config (its names, not ours)."""
    hf = make_hf_llama(tmp_path / "hf", num_key_value_heads=2, rope_theta=50000.0, max_position_embeddings=96)
    ours = load_model(str(tmp_path / "hf"))
    f = fields(save_gguf(ours, ours.args, tmp_path / "m.gguf", "q8_0", name="tiny-pmc"))
    c = hf.config
    want = {"general.architecture": "llama", "general.type": "model", "general.name": "tiny-pmc",
            "general.file_type": 7, "general.quantization_version": 2, "llama.block_count": c.num_hidden_layers,
            "llama.context_length": 96, "llama.embedding_length": c.hidden_size,
            "llama.feed_forward_length": c.intermediate_size, "llama.attention.head_count": c.num_attention_heads,
            "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 50000.0, "llama.vocab_size": 256,
            "llama.rope.dimension_count": c.head_dim, "llama.attention.key_length": c.head_dim,
            "llama.attention.value_length": c.head_dim}
    assert {k: f[k] for k in want} == want
    assert f["llama.attention.layer_norm_rms_epsilon"] == np.float32(c.rms_norm_eps)
    assert "llama.rope.scaling.type" not in f and not any(k.startswith("tokenizer.") for k in f)


@pytest.mark.parametrize("rope", ["linear", "llama3"])
def test_rope_scaling_as_llama_cpp_writes_it(tmp_path, rope):
    """linear: rope.scaling.type/factor keys; llama3: a rope_freqs tensor equal to the converter's divisors
    (its formula, in test_gguf). Our reader gives back the model's logits: exactly for linear, within 1e-5 for
    llama3, whose parameters the reader recovers from the divisors by least squares."""
    s = ({"rope_type": "linear", "factor": 4.0} if rope == "linear" else
         {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256})
    make_hf_llama(tmp_path / "hf", num_attention_heads=2, num_key_value_heads=1, rope_scaling=s)
    ours = load_model(str(tmp_path / "hf"))
    path = save_gguf(ours, ours.args, tmp_path / "m.gguf", "f32")
    f = fields(path)
    if rope == "linear":
        assert f["llama.rope.scaling.type"] == "linear" and f["llama.rope.scaling.factor"] == 4.0
    else:
        t = next(t for t in gguf_reader(path).tensors if t.name == "rope_freqs.weight")
        np.testing.assert_allclose(t.data, llama3_rope_divisors(32, 10000.0, s), rtol=1e-6)
    idx = ids(1)
    err = (logits(load_model(path), idx) - logits(ours, idx)).abs().max().item()
    assert err == 0 if rope == "linear" else err <= 1e-5


# -----------------------------------------------------------------------------
# the lossy types: exact roundings for F16/BF16, Q8_0's closed-form bound, and the logits they give

def test_f16_bf16_q8_0_tensors_and_logits(tmp_path):
    make_hf_llama(tmp_path / "hf", num_key_value_heads=2)
    ours = load_model(str(tmp_path / "hf"))
    sd, idx = ours.state_dict(), ids(2)
    ref = logits(ours, idx)
    errs = {}
    for outtype, rnd in (("f16", torch.float16), ("bf16", torch.bfloat16), ("q8_0", None)):
        path = save_gguf(ours, ours.args, tmp_path / f"m-{outtype}.gguf", outtype)
        types = tensor_types(path)
        assert {ty for n, ty in types.items() if n.endswith("norm.weight")} == {"F32"}
        assert {ty for n, ty in types.items() if not n.endswith("norm.weight")} == {outtype.upper()}
        back = load_model(path)
        for name, w in back.state_dict().items():
            if w.ndim == 1:
                assert torch.equal(w, sd[name]), name
            elif rnd is not None:  # torch's own round-to-nearest-even
                assert torch.equal(w, sd[name].to(rnd).float()), name
            else:  # Q8_0: blocks of 32 share d = max|x| / 127 (stored F16): |error| <= d/2 + 127 |d - fp16(d)|
                blocks = sd[name].reshape(-1, 32)
                d = blocks.abs().amax(1, keepdim=True) / 127
                bound = d / 2 + 127 * (d - d.half().float()).abs() + 1e-7
                assert ((w.reshape(-1, 32) - blocks).abs() <= bound).all(), name
                assert not torch.equal(w, sd[name])
        errs[outtype] = (logits(back, idx) - ref).abs().max().item()
    # max |logit| 3.3 here; measured (these seeds): f16 2.8e-3, bf16 2.6e-2, q8_0 8.5e-2
    assert errs["f16"] <= 1e-2 and errs["bf16"] <= 1e-1 and errs["q8_0"] <= 1.5e-1, errs


# -----------------------------------------------------------------------------
# the tokenizer in the file

def test_llama_sentencepiece_vocab_tokenizes_as_sentencepiece(tmp_path, tokenizer_path):
    """tokenizer.ggml.model llama from tokenizer.model, and from an HF folder (tokenizer.json + tokenizer.model, as
    save_hf writes): the file alone gives sentencepiece's ids, BOS/EOS/UNK and the add-BOS flag."""
    import sentencepiece as spm
    from weights import save_hf
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    hf_dir = make_hf_with_tokenizer(tmp_path / "hf")
    ours = load_model(hf_dir)
    save_hf(ours, ours.args, tmp_path / "export", dtype=torch.float32, tokenizer=tokenizer_path)
    for src in (tokenizer_path, str(tmp_path / "export")):
        assert Tokenizer(src).kind == ("sentencepiece" if src == tokenizer_path else "tokenizer.json")
        path = save_gguf(ours, ours.args, tmp_path / "m.gguf", "q8_0", tokenizer=src)
        f = fields(path)
        assert (f["tokenizer.ggml.model"], f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"],
                f["tokenizer.ggml.unknown_token_id"], f["tokenizer.ggml.add_bos_token"]) == ("llama", 1, 2, 0, True)
        assert "tokenizer.ggml.padding_token_id" not in f  # LLaMA has none
        assert f["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"] and len(f["tokenizer.ggml.tokens"]) == 32000
        assert f["tokenizer.ggml.scores"][300] == sp.get_score(300) and f["tokenizer.ggml.token_type"][3] == 6  # <0x00>
        tok = Tokenizer(path)
        assert tok.kind == "gguf" and tok.add_bos
        for text in real_texts():
            assert tok.encode(text, bos=tok.add_bos) == [1] + sp.encode(text), text


def test_vocabulary_padded_to_the_model_and_too_large_refused(tmp_path, tokenizer_path):
    """A model vocabulary larger than the tokenizer's (e.g. rounded up for speed): [PADi] unused tokens, as the
    converter pads; a tokenizer larger than the model's vocabulary is an error."""
    hf_dir = make_hf_with_tokenizer(tmp_path / "hf", vocab_size=32064)
    ours = load_model(hf_dir)
    f = fields(save_gguf(ours, ours.args, tmp_path / "m.gguf", "q8_0", tokenizer=tokenizer_path))
    assert len(f["tokenizer.ggml.tokens"]) == 32064 and f["tokenizer.ggml.tokens"][32063] == "[PAD32063]"
    assert f["tokenizer.ggml.token_type"][32000:] == [5] * 64 and f["tokenizer.ggml.scores"][32000] == -10000.0
    small = load_model(str(make_hf_llama(tmp_path / "small") and tmp_path / "small"))
    with pytest.raises(ValueError, match=r"llama_tokenizer.model: the tokenizer has 32000 tokens but the model's "
                                         r"vocab_size is 256"):
        save_gguf(small, small.args, tmp_path / "s.gguf", "f32", tokenizer=tokenizer_path)
    assert not os.path.exists(tmp_path / "s.gguf")


# -----------------------------------------------------------------------------
# the real SmolLM2-135M-Instruct GGUF (Q4_1): byte-level BPE, no BOS, tied head, 9 heads / 3 KV heads

@pytest.fixture(scope="module")
def smollm2_f32(smollm2_gguf, tmp_path_factory):
    """SmolLM2 GGUF -> ours -> F32 GGUF with its vocabulary -> ours."""
    ours = load_model(smollm2_gguf)
    path = save_gguf(ours, ours.args, tmp_path_factory.mktemp("smol") / "smol-f32.gguf", "f32",
                     tokenizer=smollm2_gguf, name="SmolLM2-135M-Instruct")
    return ours, path


def test_smollm2_round_trip_is_exact(smollm2_f32, smollm2_gguf):
    ours, path = smollm2_f32
    back = load_model(path)
    assert back.args == ours.args
    tok = Tokenizer(smollm2_gguf)
    idx = torch.tensor([tok.encode(real_texts(1)[0])[:96]])
    assert torch.equal(logits(back, idx), logits(ours, idx))
    src, f = fields(smollm2_gguf), fields(path)
    same = [k for k in src if k.startswith("tokenizer.")]
    assert len(same) == 12 and {k: f[k] for k in same} == {k: src[k] for k in same}  # the vocabulary, verbatim
    assert {k: f[k] for k in src if k.startswith("llama.")} == {k: src[k] for k in src if k.startswith("llama.")}


def test_smollm2_bpe_vocab_tokenizes_as_the_real_gguf(smollm2_f32, smollm2_gguf, tmp_path):
    """From the GGUF (its fields copied) and from an HF tokenizer.json of it (tokens, merges and the pre-tokenizer
    found by splitting text: smollm): the written file gives the real GGUF's ids, no BOS, and llama.cpp's own ids
    for our exported file (golden)."""
    from model import ModelArgs, Transformer
    ref = Tokenizer(smollm2_gguf)
    ref.save_pretrained(tmp_path / "tok")
    _, path = smollm2_f32
    small = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=1, intermediate_size=32, vocab_size=49152))  # the
    f16 = save_gguf(small, small.args, tmp_path / "m.gguf", "f16", tokenizer=str(tmp_path / "tok"))  # vocab matters
    f = fields(f16)
    assert (f["tokenizer.ggml.model"], f["tokenizer.ggml.pre"], f["tokenizer.ggml.add_bos_token"]) == \
        ("gpt2", "smollm", False)
    assert f["tokenizer.ggml.merges"] == fields(smollm2_gguf)["tokenizer.ggml.merges"]
    for p in (path, f16):
        tok = Tokenizer(p)
        assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (ref.bos_id, ref.eos_id, ref.pad_id, False)
        for text in real_texts():
            assert tok.encode(text) == ref.encode(text), text
        golden = llama_cpp_golden()
        for text, want in zip(golden["texts"], golden["token_ids"]):
            assert tok.encode(text, bos=tok.add_bos) == want, text


def test_smollm2_f16_same_greedy_tokens_on_fig3_prompts(smollm2_f32, smollm2_gguf, tmp_path, one_thread):
    """F16 (no vocabulary needed for this): 40 greedy tokens on each Fig. 3 prompt equal llama.cpp's on the same F16
    file (golden, with its F32 and its default F16 KV cache; recorded where they also equalled our F32 model's), and
    the F32 model's on the first prompt. (One thread: token-by-token decoding is many small ops, which a second
    thread on a busy core only delays.)"""
    ours, _ = smollm2_f32
    half = load_model(save_gguf(ours, ours.args, tmp_path / "smol-f16.gguf", "f16"))
    tok, golden = Tokenizer(smollm2_gguf), llama_cpp_golden()
    for k, prompt in enumerate(FIG3_TOPICS):
        idx = torch.tensor([tok.encode(prompt)])
        assert idx[0].tolist() == golden["prompt_ids"][k]
        with torch.no_grad():
            new = half.generate(idx, 40, temperature=0.0)[0, idx.shape[1]:].tolist()
            if k == 0:
                assert new == ours.generate(idx, 40, temperature=0.0)[0, idx.shape[1]:].tolist(), prompt
        assert new == golden["greedy"]["f32"][k] == golden["greedy"]["f16"][k], prompt


def test_smollm2_q8_0_with_llama_cpps_arithmetic_gives_its_tokens(smollm2_f32, tmp_path, one_thread):
    """Q8_0: llama.cpp rounds activations to 8 bits and sums in its own order, so our fp32 model of the Q8_0 file
    leaves llama.cpp's greedy tokens (golden, F32 KV cache) at the second token of the second Fig. 3 prompt. Our
    file, read by our reader and run with llama.cpp's CPU arithmetic (tests/refs/ggml_cpu.py), gives its first 8: what
    differs is arithmetic, not the file. (The full check, bit-identical logits included: docs/gguf.md.)"""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "refs"))
    from ggml_cpu import GgmlQ8Model
    ours, _ = smollm2_f32
    q8 = load_model(save_gguf(ours, ours.args, tmp_path / "smol-q8_0.gguf", "q8_0"))
    golden = llama_cpp_golden()
    assert GgmlQ8Model(q8).generate(golden["prompt_ids"][1], 8) == golden["greedy_q8_0_f32_cache"][1][:8]


# -----------------------------------------------------------------------------
# LoRA: merged, and the adapter alone as llama.cpp reads it

def lora_model(tmp_path, r=4, alpha=8, vocab=False):
    from lora import apply_lora
    (make_hf_with_tokenizer if vocab else make_hf_llama)(tmp_path / "hf", num_key_value_heads=2)
    model = load_model(str(tmp_path / "hf"))
    apply_lora(model, r=r, alpha=alpha, targets=("q_proj", "k_proj", "v_proj", "down_proj"))
    with torch.no_grad():  # a trained adapter: B no longer zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(n)))
    return model


def llama_cpp_apply(base_gguf, adapter_gguf):
    """Our model of the base file with the adapter file applied the way llama.cpp does (llama-adapter.cpp):
    W + alpha / rank * B A, rank from lora_b, on the base's (permuted) rows, then un-permuted by our reader's code."""
    model = load_model(base_gguf)
    r = gguf_reader(adapter_gguf)
    f = {k: v.contents() for k, v in r.fields.items()}
    assert (f["general.type"], f["adapter.type"], f["general.architecture"]) == ("adapter", "lora", "llama")
    t = {x.name: torch.from_numpy(np.array(x.data)) for x in r.tensors}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in [n for n in t if n.endswith(".lora_a")]:
            a, b = t[name], t[name.replace(".lora_a", ".lora_b")]
            delta = f["adapter.lora.alpha"] / b.shape[1] * (b @ a)
            blk, layer, kind = name.split(".")[:3]
            ours = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                    "ffn_down": "mlp.down_proj"}[kind]
            heads = {"attn_q": model.args.n_heads, "attn_k": model.args.n_kv_heads}.get(kind)
            params[f"model.layers.{layer}.{ours}.weight"] += unpermute_rope_rows(delta, heads) if heads else delta
    return model


def test_lora_merged_and_adapter_gguf(tmp_path):
    from lora import lora_state_dict, merge_lora
    model = lora_model(tmp_path)
    idx = ids(3)
    ref = logits(model, idx)  # base + scale * B A, unmerged
    base = save_gguf({k: v for k, v in model.state_dict().items() if ".lora_" not in k}, model.args,
                     tmp_path / "base.gguf", "f32")
    adapter = save_gguf_lora(lora_state_dict(model.state_dict()), model.args, tmp_path / "adapter.gguf", scaling=2.0)
    ad = gguf_reader(adapter)
    assert fields(adapter)["adapter.lora.alpha"] == 8.0  # llama.cpp scales by alpha / r = 8 / 4
    lb = next(x for x in ad.tensors if x.name == "blk.1.attn_k.weight.lora_b")
    b_k = model.model.layers[1].self_attn.k_proj.lora_B.weight.detach()
    assert np.array_equal(np.array(lb.data), llama_cpp_permute(b_k.numpy(), 2))  # the converter's permutation
    assert (logits(llama_cpp_apply(base, adapter), idx) - ref).abs().max().item() <= 1e-5
    merge_lora(model)
    sd = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    merged = save_gguf(sd, model.args, tmp_path / "merged.gguf", "f32")
    assert (logits(load_model(merged), idx) - ref).abs().max().item() <= 1e-5


def test_command_converts_hf_gguf_and_lora(tmp_path, tokenizer_path):
    """python gguf_export.py: an HF folder; a GGUF (its vocabulary kept); a PEFT adapter merged, or alone."""
    from lora import adapter_config, save_adapter
    hf_dir = make_hf_with_tokenizer(tmp_path / "hf")
    a = export_main([f"--init_from={hf_dir}", f"--out={tmp_path / 'a.gguf'}", "--outtype=f32"])
    b = export_main([f"--init_from={a}", f"--out={tmp_path / 'b.gguf'}", "--outtype=f32"])
    idx = ids(4, vocab=32000)
    assert torch.equal(logits(load_model(b), idx), logits(load_model(hf_dir), idx))
    assert fields(b)["general.name"] == "a"
    assert Tokenizer(b).encode("Metformin 500 mg") == Tokenizer(tokenizer_path).encode("Metformin 500 mg")
    model = lora_model(tmp_path / "l", r=8, alpha=16, vocab=True)
    save_adapter(model, tmp_path / "adapter", adapter_config(model))
    base, lora = tmp_path / "l" / "hf", f"--lora={tmp_path / 'adapter'}"
    merged = export_main([f"--init_from={base}", lora, "--merge", f"--out={tmp_path / 'm.gguf'}", "--outtype=f32"])
    alone = export_main([f"--init_from={base}", lora, f"--out={tmp_path / 'ad.gguf'}", "--outtype=f32"])
    base_gguf = export_main([f"--init_from={base}", f"--out={tmp_path / 'base.gguf'}", "--outtype=f32"])
    ref = logits(model, idx)
    assert (logits(load_model(merged), idx) - ref).abs().max().item() <= 1e-5
    assert (logits(llama_cpp_apply(base_gguf, alone), idx) - ref).abs().max().item() <= 1e-5
    with pytest.raises(SystemExit, match=r"init_from=.*nope: not found"):
        export_main([f"--init_from={tmp_path / 'nope'}", f"--out={tmp_path / 'x.gguf'}"])


# -----------------------------------------------------------------------------
# bad input: one line, nothing written

def test_errors_before_anything_is_written(tmp_path, monkeypatch):
    from dataclasses import replace
    make_hf_llama(tmp_path / "hf", hidden_size=48, intermediate_size=96)  # rows of 48: not whole Q8_0 blocks
    ours = load_model(str(tmp_path / "hf"))
    out = tmp_path / "m.gguf"
    sd = ours.state_dict()
    cases = [
        (dict(outtype="q8_0"), r"m\.gguf: tensor model.embed_tokens.weight has rows of 48 values, not whole Q8_0"),
        (dict(outtype="q4_k"), r"outtype='q4_k': not a GGUF type we write \(f32, f16, bf16, q8_0\)"),
        (dict(args=replace(ours.args, rope_scaling={"rope_type": "yarn", "factor": 4.0})),
         r"m\.gguf: rope scaling type 'yarn' has no llama.cpp form"),
        (dict(sd={**sd, "model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 48)}),
         r"lora_A.weight has no llama.cpp name \(a LoRA tensor: merge the adapter first\)"),
        (dict(sd={**sd, "model.norm.weight": torch.full((48,), 7e4)}),
         r"tensor model.norm.weight has values beyond F16"),  # norms stay F32 ...
    ]
    for kw, msg in cases[:4]:
        with pytest.raises(ValueError, match=msg):
            save_gguf(kw.get("sd", sd), kw.get("args", ours.args), out, kw.get("outtype", "f16"))
        assert not os.path.exists(out) and not os.path.exists(str(out) + ".tmp")
    save_gguf(cases[4][0]["sd"], ours.args, out, "f16")  # ... so 7e4 in a norm is fine in an F16 file
    before = open(out, "rb").read()
    big = {**sd, "model.layers.1.mlp.up_proj.weight": torch.full((96, 48), -7e4)}
    with pytest.raises(ValueError, match=r"m\.gguf: tensor model.layers.1.mlp.up_proj.weight has values beyond F16"):
        save_gguf(big, ours.args, out, "f16")
    # a crash half-way through the tensors: no half-written file under either name, the earlier file kept
    real, calls = gguf.quants.quantize, []

    def crash(data, qtype):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(data, qtype)
    monkeypatch.setattr(gguf.quants, "quantize", crash)
    with pytest.raises(OSError, match="disk full"):
        save_gguf(sd, ours.args, out, "f32")
    assert len(calls) == 5 and open(out, "rb").read() == before and not os.path.exists(str(out) + ".tmp")


def test_lora_errors(tmp_path):
    from lora import lora_state_dict
    model = lora_model(tmp_path)
    lsd = lora_state_dict(model.state_dict())
    out = tmp_path / "a.gguf"
    with pytest.raises(ValueError, match=r"a\.gguf: tensor model.layers.0.mlp.down_proj.lora_B.weight has rows of "
                                         r"4 values, not whole Q8_0 blocks"):
        save_gguf_lora(lsd, model.args, out, scaling=2.0, outtype="q8_0")
    from dataclasses import replace
    with pytest.raises(ValueError, match=r"LoRA pair model.layers.0.mlp.down_proj is \(64, 4\) @ \(4, 160\) but "
                                         r"the model's model.layers.0.mlp.down_proj is \(32, 160\)"):
        save_gguf_lora(lsd, replace(model.args, dim=32), out, scaling=2.0)
    with pytest.raises(ValueError, match=r"holds 15 tensors, 14 of them in LoRA A/B pairs"):  # a B without its A
        save_gguf_lora({k: v for k, v in lsd.items() if "0.self_attn.v_proj.lora_A" not in k}, model.args, out, 2.0)
    with pytest.raises(ValueError, match=r"LoRA tensor model.layers.0.self_attn.v_proj.lora_A.weight has no B"):
        save_gguf_lora({k: v for k, v in lsd.items() if "0.self_attn.v_proj.lora_B" not in k}, model.args, out, 2.0)
    assert not os.path.exists(out)


def test_finetune_qa_exports_gguf(tmp_path, tokenizer_path):
    """finetune_qa.py --lora=True --export_gguf=f32: model-f32.gguf is the merged model (its HF export's logits),
    adapter.gguf applied as llama.cpp applies it to the base gives them too; a bad type stops it before training."""
    import subprocess
    import sys
    from conftest import ROOT
    from test_train import ENV
    base = make_hf_with_tokenizer(tmp_path / "base", max_position_embeddings=512)
    out = tmp_path / "ft"
    cmd = [sys.executable, "finetune_qa.py", "configs/ft_id_cpu.py", f"--init_from={base}", f"--out_dir={out}",
           "--device=cpu", "--lora=True", "--select=0:16", "--epochs=1.0", "--global_batch_size=8",
           "--micro_batch_size=8", "--learning_rate=3e-2", "--export_merged=True", "--lora_alpha=16"]
    bad = subprocess.run(cmd + ["--export_gguf=q4_k"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().endswith("export_gguf='q4_k': not a GGUF type we write "
                                                               "(f32, f16, bf16, q8_0)") and not out.exists()
    data_path("pubmedqa", "ori_pqal.json")
    r = subprocess.run(cmd + ["--export_gguf=f32"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    idx = ids(6, vocab=32000)
    ref = logits(load_model(str(out / "hf")), idx)
    assert torch.equal(logits(load_model(str(out / "model-f32.gguf")), idx), ref)
    assert not torch.equal(logits(load_model(base), idx), ref)  # the fine-tune moved it
    base_gguf = save_gguf(load_model(base), load_model(base).args, tmp_path / "base.gguf", "f32")
    assert (logits(llama_cpp_apply(base_gguf, str(out / "adapter.gguf")), idx) - ref).abs().max().item() <= 1e-5
    assert Tokenizer(str(out / "model-f32.gguf")).encode("Metformin", bos=True) == \
        Tokenizer(tokenizer_path).encode("Metformin", bos=True)
    full = [a for a in cmd if a not in ("--lora=True", "--export_merged=True")] + ["--export_gguf=f16", "--epochs=0.5"]
    r = subprocess.run(full + [f"--out_dir={tmp_path / 'full'}"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=600)  # full fine-tuning: the gathered weights, F16
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    hf = logits(load_model(str(tmp_path / "full" / "hf")), idx)
    assert (logits(load_model(str(tmp_path / "full" / "model-f16.gguf")), idx) - hf).abs().max().item() <= 1e-2
