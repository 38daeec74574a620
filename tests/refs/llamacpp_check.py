"""
Outside CI: llama.cpp itself runs the GGUF files gguf_export.py writes. llama.cpp comes from PyPI's llama-cpp-python,
built from source in its own venv, never a dependency of this repository:

    python3 -m venv /work/refs/llamacpp-venv && /work/refs/llamacpp-venv/bin/pip install numpy
    CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
        /work/refs/llamacpp-venv/bin/pip install llama-cpp-python==0.3.36        # ~35 min on 2 cores
    python tests/refs/llamacpp_check.py --llama_python=/work/refs/llamacpp-venv/bin/python \
        [--ft=FT_OUT_DIR] [--extra MODEL ...] [--work=DIR] [--golden=tests/golden/llamacpp_smollm2.json]

Run from this repository's venv. It writes the files (a tiny random LLaMA with the LLaMA sentencepiece vocabulary, F32
and Q8_0; SmolLM2-135M-Instruct re-exported from its Q4_1 GGUF as F16 and Q8_0), computes our token ids, greedy
completions and logits on each file (for a Q8_0 file also with llama.cpp's CPU arithmetic, tests/refs/ggml_cpu.py),
runs llama.cpp on the same files in the other venv (this script again, with --llama_side), and compares. --ft: a
finetune_qa.py LoRA run on SmolLM2 made with --export_gguf=f32 (adapter.gguf, model-f32.gguf): llama.cpp applies
adapter.gguf (lora_path=) to the base and is compared with our merged model.
Results go to WORK/results.json and stdout.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_NEW = 40


def llama_side(job_path, result_path):
    """In the llama-cpp-python venv: tokenize, greedy-decode (argmax of llama.cpp's own logits) and keep logits."""
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama
    jobs, out = json.load(open(job_path)), {"llama_cpp_python": llama_cpp.__version__, "jobs": []}
    out["system_info"] = llama_cpp.llama_print_system_info().decode()
    for j in jobs:
        got = {}
        for kv, ggml_type in (("f32", 0), ("f16", None)):  # the KV cache: F32, or llama.cpp's default F16
            llm = Llama(model_path=j["model"], lora_path=j.get("lora"), n_ctx=512, n_batch=512, logits_all=True,
                        n_threads=2, verbose=False, type_k=ggml_type, type_v=ggml_type)
            tokens = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in j["texts"]]
            greedy = []
            for prompt in j["prompts"]:
                llm.reset()
                llm.eval(prompt)
                new = []
                for _ in range(N_NEW):
                    new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                    llm.eval([new[-1]])
                greedy.append(new)
            llm.reset()
            llm.eval(j["logit_ids"])
            np.save(f"{j['llama_out']}-{kv}.npy", np.array(llm.scores[:len(j["logit_ids"])]))
            got[kv] = {"tokens": tokens, "greedy": greedy}
            del llm
        out["jobs"].append(got)
    json.dump(out, open(result_path, "w"))


def texts():
    with open(os.path.join(ROOT, "..", "shared", "data", "pubmedqa", "ori_pqal.json")) as f:
        recs = list(json.load(f).values())[:40]
    from test_gguf import FIG3_TOPICS
    return ([r["QUESTION"] for r in recs] + [" ".join(r["CONTEXTS"]) for r in recs] + FIG3_TOPICS +
            [" leading space", "two  spaces\tand\ttabs\n\nnewlines", "Serum K+ 5.9 mEq/L (×2) — naïve 😀",
             "time  70 min, 3.3 mg, 33333 units", "<s> x </s> <|im_end|>"])


def our_side(job, model_path, tok_path, ggml=False):
    """Our ids, greedy tokens and logits for the same file (its weights dequantized to fp32 by our reader).
    ggml: our model run with llama.cpp's CPU arithmetic for Q8_0 (tests/refs/ggml_cpu.py), to tell the file apart
    from the arithmetic."""
    import numpy as np
    import torch
    from ggml_cpu import GgmlQ8Model
    from test_gguf import FIG3_TOPICS
    from tokenizer import Tokenizer
    from weights import load_model
    model, tok = load_model(model_path), Tokenizer(tok_path)
    job["texts"] = texts()
    job["ours_tokens"] = [tok.encode(t, bos=tok.add_bos) for t in job["texts"]]
    job["prompts"] = [tok.encode(p, bos=tok.add_bos) for p in FIG3_TOPICS]
    job["logit_ids"] = job["ours_tokens"][40][:128]  # the first PubMedQA context
    with torch.no_grad():
        if ggml:
            g = GgmlQ8Model(model)
            job["ours_greedy"] = [g.generate(p, N_NEW) for p in job["prompts"]]
            g.reset()
            logits = g.forward(job["logit_ids"])
        else:
            job["ours_greedy"] = [model.generate(torch.tensor([p]), N_NEW, temperature=0.0)[0, len(p):].tolist()
                                  for p in job["prompts"]]
            logits = model(torch.tensor([job["logit_ids"]]))[0][0]
    np.save(job["logits_out"] + ".ours.npy", logits.numpy())
    return job


def build(work, ft, extra=()):
    """(case name, job) for every file llama.cpp is to run; extra: more models (HF folders, GGUF files), as F16 and
    Q8_0."""
    import gguf_export
    from conftest import make_hf_with_tokenizer
    from weights import find_smollm2_gguf
    smol = find_smollm2_gguf()
    tiny = make_hf_with_tokenizer(os.path.join(work, "tiny-llama"))
    files = []
    for name, src, t in (("tiny LLaMA (random), LLaMA sentencepiece", tiny, "f32"),
                         ("tiny LLaMA (random), LLaMA sentencepiece", tiny, "q8_0"),
                         ("SmolLM2-135M-Instruct re-exported", smol, "f16"),
                         ("SmolLM2-135M-Instruct re-exported", smol, "q8_0"),
                         ("SmolLM2-135M-Instruct re-exported", smol, "f32"),
                         *[(path, path, t) for path in extra for t in ("f16", "q8_0")]):
        stem = os.path.basename(src).split(".")[0] if src in (tiny, smol) else src.strip("/").replace("/", "_")
        out = os.path.join(work, f"{stem}-{t}.gguf")
        if not os.path.isfile(out):
            gguf_export.main([f"--init_from={src}", f"--out={out}", f"--outtype={t}"])
        files.append((f"{name}, {t.upper()}", out, out, None, False))
        if t == "q8_0":  # and ours computing as llama.cpp's CPU kernels do
            files.append((f"{name}, Q8_0, ours with llama.cpp's CPU arithmetic", out, out, None, True))
    if ft:  # llama.cpp: base + adapter.gguf; ours: the merged model finetune_qa.py wrote
        merged, adapter = os.path.join(ft, "model-f32.gguf"), os.path.join(ft, "adapter.gguf")
        base32 = next(f[1] for f in files if f[0] == "SmolLM2-135M-Instruct re-exported, F32")
        files.append(("LoRA fine-tune of SmolLM2: llama.cpp base F32 + adapter.gguf vs our merged", merged, base32,
                      adapter, False))
        files.append(("LoRA fine-tune of SmolLM2: llama.cpp merged model-f32.gguf vs our merged", merged, merged, None,
                      False))
        files.append(("LoRA fine-tune of SmolLM2: llama.cpp original Q4_1 base + adapter.gguf vs our merged", merged,
                      smol, adapter, False))
    jobs, ours = [], {}
    for i, (name, ours_file, llama_file, lora, ggml) in enumerate(files):
        if (ours_file, ggml) not in ours:  # the merged model serves three cases
            ours[ours_file, ggml] = our_side({"logits_out": os.path.join(work, f"logits-{len(ours)}")}, ours_file,
                                             ours_file, ggml)
        jobs.append({**ours[ours_file, ggml], "case": name, "model": llama_file, "lora": lora,
                     "llama_out": os.path.join(work, f"llama-logits-{i}")})
    return jobs


def report(jobs, res):
    import numpy as np
    rows = []
    for job, per_kv in zip(jobs, res["jobs"]):
        for kv, got in per_kv.items():
            same_ids = sum(a == b for a, b in zip(job["ours_tokens"], got["tokens"]))
            diffs = [next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
                     for a, b in zip(job["ours_greedy"], got["greedy"])]
            ours, theirs = np.load(job["logits_out"] + ".ours.npy"), np.load(f"{job['llama_out']}-{kv}.npy")
            rows.append({"case": job["case"], "kv_cache": kv, "model": job["model"], "lora": job["lora"],
                         "token_ids_equal": f"{same_ids}/{len(got['tokens'])}",
                         "texts_differing": [t[:60] for t, a, b in zip(job["texts"], job["ours_tokens"], got["tokens"])
                                             if a != b],
                         "greedy_40_equal": f"{diffs.count(None)}/{len(diffs)}",
                         "greedy_first_difference_at": diffs,
                         "logits_max_abs_diff": float(np.abs(ours - theirs).max()),
                         "logits_scale": float(np.abs(ours).max()),
                         "argmax_equal": f"{int((ours.argmax(-1) == theirs.argmax(-1)).sum())}/{len(ours)}"})
    return rows


def write_golden(jobs, res, path):
    """llama.cpp's own results on SmolLM2 re-exported as F16 (token ids of the texts, 40 greedy tokens per Fig. 3
    prompt, with its F32 and its default F16 KV cache) and as Q8_0 (greedy tokens, F32 KV cache), for
    tests/test_gguf_export.py to hold our code to in CI."""
    i = next(k for k, j in enumerate(jobs) if j["case"] == "SmolLM2-135M-Instruct re-exported, F16")
    q = next(k for k, j in enumerate(jobs) if j["case"] == "SmolLM2-135M-Instruct re-exported, Q8_0")
    got, keep = res["jobs"][i], list(range(50)) + list(range(80, len(jobs[i]["texts"])))
    golden = {"source": f"llama-cpp-python {res['llama_cpp_python']} (tests/refs/llamacpp_check.py)",
              "model": "SmolLM2-135M-Instruct.Q4_1.gguf -> gguf_export.py --outtype=f16",
              "note": "PubMedQA questions (40) and contexts (10) from ori_pqal.json, the Fig. 3 prompts, edge cases; "
                      "token_ids: llama.cpp's tokenize(add_bos=True); greedy: argmax of llama.cpp's logits, 40 tokens, "
                      "with an F32 and with its default F16 KV cache; greedy_q8_0_f32_cache: the same on the Q8_0 "
                      "export, F32 KV cache",
              "texts": [jobs[i]["texts"][k] for k in keep], "token_ids": [got["f32"]["tokens"][k] for k in keep],
              "prompt_ids": jobs[i]["prompts"], "greedy": {kv: got[kv]["greedy"] for kv in got},
              "greedy_q8_0_f32_cache": res["jobs"][q]["f32"]["greedy"]}
    with open(path, "w") as f:
        json.dump(golden, f, ensure_ascii=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama_python", help="python of the llama-cpp-python venv")
    ap.add_argument("--work", default="/tmp/llamacpp_check")
    ap.add_argument("--ft", default="", help="finetune_qa.py --lora=True --export_gguf=f32 output folder")
    ap.add_argument("--extra", nargs="*", default=[], help="more models to check (HF folders, .gguf), as F16 and Q8_0")
    ap.add_argument("--golden", default="", help="also write llama.cpp's SmolLM2 F16 results here (tests/golden/)")
    ap.add_argument("--llama_side", nargs=2, metavar=("JOBS", "RESULT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.llama_side:
        return llama_side(*a.llama_side)
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    import torch
    torch.manual_seed(0)
    torch.set_num_threads(1)  # token-by-token decoding is many small ops; a second thread on a shared CPU delays them
    os.makedirs(a.work, exist_ok=True)
    jobs = build(a.work, a.ft, a.extra)
    jp, rp = os.path.join(a.work, "jobs.json"), os.path.join(a.work, "llama_result.json")
    json.dump(jobs, open(jp, "w"))
    subprocess.run([a.llama_python, os.path.abspath(__file__), "--llama_side", jp, rp], check=True)
    res = json.load(open(rp))
    rows = report(jobs, res)
    summary = {"llama_cpp_python": res["llama_cpp_python"], "system_info": res["system_info"], "results": rows}
    json.dump(summary, open(os.path.join(a.work, "results.json"), "w"), indent=2)
    if a.golden:
        write_golden(jobs, res, a.golden)
    print(f"llama-cpp-python {res['llama_cpp_python']} ({res['system_info'].strip()})")
    for r in rows:
        print(f"\n== {r['case']} (llama.cpp KV cache {r['kv_cache'].upper()})\n"
              f"   token ids equal {r['token_ids_equal']}; greedy 40 tokens equal {r['greedy_40_equal']} (first "
              f"difference at {r['greedy_first_difference_at']}); logits max |diff| {r['logits_max_abs_diff']:.2e} "
              f"(max |logit| {r['logits_scale']:.1f}), argmax equal {r['argmax_equal']}")
        for t in r["texts_differing"]:
            print(f"   ids differ: {t!r}")


if __name__ == "__main__":
    main()
