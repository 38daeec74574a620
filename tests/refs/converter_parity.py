"""
Outside CI: gguf_export.py against llama.cpp's own converters, file for file. For each case it writes an HF folder
(or a PEFT adapter), converts it with llama.cpp's convert_hf_to_gguf.py / convert_lora_to_gguf.py and with ours,
and compares every metadata key and every tensor's type, shape and bytes.

    # llama.cpp's source tree (the one llama-cpp-python vendors, or a git checkout); its gguf-py is used by its scripts
    python tests/refs/converter_parity.py --llama_cpp=/work/refs/llamacpp-src [--work=/tmp/converter_parity]

Runs in this repository's venv (the converters need torch, transformers, sentencepiece, numpy: all there).
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def read(path):
    from gguf import GGUFReader
    import numpy as np
    r = GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    ts = {t.name: (t.tensor_type.name, t.shape.tolist(), np.asarray(t.data).tobytes()) for t in r.tensors}
    return kv, ts


def compare(theirs, ours):
    """-> (metadata keys that differ: {key: (theirs, ours)}, tensors that differ: [name: why])."""
    (ka, ta), (kb, tb) = read(theirs), read(ours)
    short = lambda v: f"{v[:3]}... ({len(v)})" if isinstance(v, list) and len(v) > 6 else v  # noqa: E731
    keys = {k: (short(ka.get(k, "<absent>")), short(kb.get(k, "<absent>")))
            for k in sorted(set(ka) | set(kb)) if ka.get(k, "<absent>") != kb.get(k, "<absent>")}
    def why(n):
        if n not in ta or n not in tb:
            return "absent in " + ("ours" if n not in tb else "theirs")
        return f"type/shape {ta[n][:2]} vs {tb[n][:2]}" if ta[n][:2] != tb[n][:2] else "bytes differ"
    tensors = [f"{n}: {why(n)}" for n in sorted(set(ta) | set(tb)) if ta.get(n) != tb.get(n)]
    return keys, tensors, len(ta)


def convert(script, llama_cpp, *args):
    r = subprocess.run([sys.executable, os.path.join(llama_cpp, script), *map(str, args)], capture_output=True,
                       text=True, cwd=llama_cpp)
    if r.returncode:
        raise SystemExit(f"{script} failed:\n{r.stderr[-3000:]}")


def model_cases(work):
    """(name, HF folder, outtypes): tiny LLaMAs with the LLaMA tokenizer, and SmolLM2 as an HF folder."""
    import torch
    from conftest import make_hf_with_tokenizer
    from tokenizer import Tokenizer
    from weights import find_smollm2_gguf, load_model, save_hf
    cases = [("tiny GQA, LLaMA sentencepiece", make_hf_with_tokenizer(os.path.join(work, "tiny")),
              ["f32", "f16", "bf16", "q8_0"]),
             ("tiny tied", make_hf_with_tokenizer(os.path.join(work, "tied"), tie_word_embeddings=True), ["f16"])]
    for kind, s in (("linear", {"rope_type": "linear", "factor": 4.0}),
                    ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 1024})):
        p = make_hf_with_tokenizer(os.path.join(work, kind), num_attention_heads=2, num_key_value_heads=1,
                                   rope_scaling=s, max_position_embeddings=4096)
        cases.append((f"tiny, {kind} rope scaling", p, ["f32"]))
    smol = find_smollm2_gguf()
    if smol:
        folder = os.path.join(work, "SmolLM2-135M-Instruct")
        if not os.path.isdir(folder):
            m = load_model(smol)
            save_hf(m, m.args, folder, dtype=torch.float32, tokenizer=Tokenizer(smol))
        cases.append(("SmolLM2-135M-Instruct (HF folder: tokenizer.json, byte-level BPE)", folder, ["f16", "q8_0"]))
    return cases


def lora_case(work, base):
    """A PEFT adapter (ours, saved in PEFT's format) with nonzero B on q, k, v and down_proj of the tiny base."""
    import torch
    from lora import adapter_config, apply_lora, save_adapter
    from weights import load_model
    model = load_model(base)
    apply_lora(model, r=8, alpha=16, targets=("q_proj", "k_proj", "v_proj", "down_proj"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    out = os.path.join(work, "adapter")
    cfg = adapter_config(model, base_model_name_or_path=base)
    save_adapter(model, out, cfg)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama_cpp", required=True, help="llama.cpp source tree (convert_hf_to_gguf.py, gguf-py)")
    ap.add_argument("--work", default="/tmp/converter_parity")
    a = ap.parse_args()
    import gguf_export
    os.makedirs(a.work, exist_ok=True)
    results = []
    for name, folder, outtypes in model_cases(a.work):
        for t in outtypes:
            theirs, ours = os.path.join(a.work, f"theirs-{os.path.basename(folder)}-{t}.gguf"), \
                os.path.join(a.work, f"ours-{os.path.basename(folder)}-{t}.gguf")
            convert("convert_hf_to_gguf.py", a.llama_cpp, folder, "--outfile", theirs, "--outtype", t)
            gguf_export.main([f"--init_from={folder}", f"--out={ours}", f"--outtype={t}"])
            results.append((f"{name}, {t}", *compare(theirs, ours)))
    base = os.path.join(a.work, "tiny")
    adapter = lora_case(a.work, base)
    for t in ("f32", "f16"):
        theirs, ours = os.path.join(a.work, f"theirs-lora-{t}.gguf"), os.path.join(a.work, f"ours-lora-{t}.gguf")
        convert("convert_lora_to_gguf.py", a.llama_cpp, adapter, "--base", base, "--outfile", theirs, "--outtype", t)
        gguf_export.main([f"--init_from={base}", f"--lora={adapter}", f"--out={ours}", f"--outtype={t}"])
        results.append((f"LoRA adapter (r=8, alpha=16; q, k, v, down_proj), {t}", *compare(theirs, ours)))
    for name, keys, tensors, n in results:
        print(f"\n== {name}: {n} tensors, {'all byte-identical' if not tensors else f'{len(tensors)} differ'}")
        for line in tensors:
            print("   tensor", line)
        for k, (x, y) in keys.items():
            print(f"   key {k}: llama.cpp {x!r}  ours {y!r}")
    with open(os.path.join(a.work, "results.json"), "w") as f:
        json.dump([{"case": c, "metadata_differences": {k: list(map(repr, v)) for k, v in keys.items()},
                    "tensor_differences": t, "tensors": n} for c, keys, t, n in results], f, indent=2)


if __name__ == "__main__":
    main()
