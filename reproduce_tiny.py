"""
PMC-LLaMA's whole study in miniature, on CPU, on the real data in ../shared/data:

    python reproduce_tiny.py                 # ~16 minutes on 2 cores
    python reproduce_tiny.py --quick         # ~1 minute: a smoke test of every step (CI runs it)

1. prepare a general corpus (WikiText-2 test + Tiny Shakespeare) and a biomedical one (91 CRAFT PMC papers +
   BC5CDR + NCBI-disease abstracts; never PubMedQA, which is test data) with the LLaMA tokenizer;
2. train a tiny LLaMA "base" on the general corpus, then continue pre-training a copy on the biomedical corpus
   ("tiny PMC-LLaMA"): per-paper windows, AdamW, warmup + cosine, as train.py does for the paper;
3. held-out perplexity of both on biomedical and on general text;
4. fine-tune both, full and LoRA, on the 500 non-test PubMedQA PQA-L questions; evaluate on the official 500
   PubMedQA test ids, plus MedMCQA dev and USMLE zero-shot (loglik);
5. write out/table.md (Table 1's layout, accuracy with 95% CI and the majority-class baseline) and out/curves.png
   (Fig. 2: fine-tuning loss, EMA 0.6) with the numbers in curves.csv.
Every step is one of the project's scripts, called through its main(argv) with the arguments printed; this file
only chains them.
"""
import csv
import json
import os
import sys
import time
from collections import Counter

import eval_qa
import finetune_qa
import prepare_corpus
import qa_data
import train
from configurator import configure

data_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data")
out = "runs/tiny"
quick = False
seed = 1337

MODELS = {"base": "TinyLLaMA", "pmc": "TinyPMC-LLaMA"}  # display names, as in the paper's table and figure


def run(name, fn, argv):
    print(f"\n=== {name}: {fn.__module__}.py {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    result = fn(argv)
    print(f"=== {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    return result


def sizes(quick):
    """Model and schedule, scaled so the default run takes ~16 minutes on 2 CPU cores and --quick ~1."""
    if quick:
        return dict(model=["--dim=64", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--intermediate_size=176"],
                    block=128, base_iters=15, pmc_iters=15, ft_select="0:48", ft_epochs=1.0, eval_limit=60)
    return dict(model=["--dim=128", "--n_layers=4", "--n_heads=4", "--n_kv_heads=2", "--intermediate_size=352"],
                block=256, base_iters=220, pmc_iters=180, ft_select="", ft_epochs=2.0, eval_limit=0)


def ema(xs, alpha=0.6):
    out, s = [], None
    for x in xs:
        s = x if s is None else alpha * s + (1 - alpha) * x
        out.append(s)
    return out


def majority_baseline(examples, train_examples=None):
    """Accuracy of always answering the most frequent label: of the train split where we have one, else of the
    evaluated questions themselves (no MedMCQA/USMLE train file offline; an optimistic baseline)."""
    ref = train_examples or examples
    label = Counter(e.gold for e in ref).most_common(1)[0][0]
    return sum(e.gold == label for e in examples) / len(examples), "train split" if train_examples else "test labels"


def main(argv=None):
    c = configure(dict(globals()), argv)
    S = sizes(c["quick"])
    o, d = c["out"], c["data_root"]
    tok = os.path.join(d, "tokenizer", "llama_tokenizer.model")
    bio = os.path.join(d, "biomed_corpus")
    os.makedirs(o, exist_ok=True)
    t_start = time.perf_counter()

    # 1. corpora
    common = ["--tokenizer", tok, "--val_fraction", "0.05", "--seed", str(c["seed"]), "--quiet"]
    run("general corpus", prepare_corpus.main,
        ["--source", "text", "--doc_chars", "8000", "--input", os.path.join(d, "general", "wikitext2_test_raw",
         "wikitext-test.txt"), os.path.join(d, "general", "tinyshakespeare", "input.txt"),
         "--out_dir", f"{o}/data/general", *common])
    run("biomedical corpus", prepare_corpus.main,
        ["--source", "text", "pubtator", "pubtator", "--input", os.path.join(bio, "craft_pmc_oa_fulltext", "txt"),
         os.path.join(bio, "bc5cdr"), os.path.join(bio, "ncbi_disease"), "--out_dir", f"{o}/data/biomed", *common])

    # 2. pre-training, then continued pre-training on papers
    pre = ["configs/tiny_pmc.py", *S["model"], f"--block_size={S['block']}", "--device=cpu", f"--seed={c['seed']}",
           "--ckpt_interval=0", "--eval_interval=0", "--keep_checkpoints=1"]
    run("base pre-training", train.main, [*pre, "--init_from=scratch", f"--data_dir={o}/data/general",
                                          f"--out_dir={o}/base", f"--max_iters={S['base_iters']}"])
    run("continued pre-training", train.main, [*pre, f"--init_from={o}/base/hf", f"--data_dir={o}/data/biomed",
                                               f"--out_dir={o}/pmc", f"--max_iters={S['pmc_iters']}",
                                               "--learning_rate=5e-4", "--min_lr=5e-5", "--warmup_iters=10"])

    # 3. held-out perplexity
    ppl = {}
    for m in MODELS:
        for corpus in ("biomed", "general"):
            r = run(f"perplexity {m} / {corpus}", train.main,
                    [*pre, "--eval_only=True", f"--init_from={o}/{m}/hf", f"--data_dir={o}/data/{corpus}",
                     f"--out_dir={o}/ppl_{m}_{corpus}", "--eval_batches=8", "--micro_batch_size=8"])
            ppl[(m, corpus)] = r["val_ppl"]

    # 4. fine-tuning (full and LoRA) and evaluation
    pqal = os.path.join(d, "pubmedqa", "ori_pqal.json")
    ft = ["configs/ft_id_cpu.py", f"--pubmedqa_train={pqal}", f"--epochs={S['ft_epochs']}", "--device=cpu",
          f"--block_size={S['block']}",  # the tiny models' context: long abstracts lose their beginning
          f"--select={S['ft_select']}", f"--seed={c['seed']}", "--log_interval=1"]
    limit = [f"--limit={S['eval_limit']}"] if S["eval_limit"] else []
    ev = ["--device=cpu", "--dtype=float32", "--batch_size=32", *limit]
    files = {"pubmedqa": pqal, "medmcqa": os.path.join(d, "medmcqa", "dev.json"),
             "usmle": os.path.join(d, "medqa_usmle", "sample_200.jsonl")}
    acc = {}
    for m in MODELS:
        for b in files:
            res = run(f"zero-shot {m} / {b}", eval_qa.main,
                      [f"--bench={b}", f"--data={files[b]}", f"--init_from={o}/{m}/hf", f"--out={o}/eval/{m}_zs_{b}", *ev])
            acc[(m, "zero-shot", b)] = res[b]
        for setting in ("full", "lora"):
            run_dir = f"{o}/ft_{m}_{setting}"
            run(f"fine-tune {m} / {setting}", finetune_qa.main,
                [*ft, f"--init_from={o}/{m}/hf", f"--out_dir={run_dir}", f"--lora={setting == 'lora'}"])
            model = [f"--init_from={run_dir}/hf"] if setting == "full" else [f"--init_from={o}/{m}/hf",
                                                                             f"--lora={run_dir}/adapter"]
            res = run(f"evaluate {m} / {setting} / pubmedqa", eval_qa.main,
                      ["--bench=pubmedqa", f"--data={pqal}", *model, f"--out={o}/eval/{m}_{setting}_pubmedqa", *ev])
            acc[(m, setting, "pubmedqa")] = res["pubmedqa"]

    # 5. the table and the curves
    write_table(o, acc, ppl, files, S, time.perf_counter() - t_start)
    write_curves(o)
    print(f"\ndone in {time.perf_counter() - t_start:.0f}s: {o}/table.md, {o}/curves.csv" +
          (f", {o}/curves.png" if os.path.exists(f"{o}/curves.png") else ""))


def write_table(o, acc, ppl, files, S, elapsed):
    lines = ["# nanoPMC in miniature: PMC-LLaMA's Table 1 at toy scale", "",
             "Accuracy (95% Wilson CI), loglik scoring (lm-evaluation-harness prompts). Fine-tuning: the 500 non-test "
             "PubMedQA PQA-L questions; PubMedQA is evaluated on the official 500 test ids"
             + (f" (first {S['eval_limit']} here: --quick)" if S["eval_limit"] else "") + ".", "",
             "| Model | Setting | PubMedQA | MedMCQA (dev) | USMLE (200-question sample) |", "|---|---|---|---|---|"]

    def cell(r):
        return f"{r['acc']:.3f} [{r['acc_ci95'][0]:.3f}, {r['acc_ci95'][1]:.3f}] (n={r['n']})" if r else "-"
    for m, name in MODELS.items():
        for setting in ("zero-shot", "full", "lora"):
            label = {"zero-shot": "zero-shot", "full": "full fine-tuning", "lora": "LoRA (r=8, q/v)"}[setting]
            lines.append(f"| {name} | {label} | " + " | ".join(cell(acc.get((m, setting, b))) for b in files) + " |")
    base = []
    for b, path in files.items():
        ex = qa_data.load(b, path, split="test", cop_base=1)
        if S["eval_limit"]:
            ex = ex[:S["eval_limit"]]
        tr = qa_data.load(b, path, split="train") if b == "pubmedqa" else None
        a, src = majority_baseline(ex, tr)
        base.append(f"{a:.3f} ({src})")
    lines.append("| majority class | - | " + " | ".join(base) + " |")
    lines += ["", "Held-out perplexity (5% of documents of each corpus, fixed windows):", "",
              "| Model | biomedical | general |", "|---|---|---|"]
    for m, name in MODELS.items():
        lines.append(f"| {name} | {ppl[(m, 'biomed')]:.2f} | {ppl[(m, 'general')]:.2f} |")
    lines += ["", f"Run time: {elapsed / 60:.1f} minutes."]
    with open(os.path.join(o, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(o, "results.json"), "w") as f:
        json.dump({"accuracy": {"/".join(k): v["acc"] for k, v in acc.items()},
                   "perplexity": {"/".join(k): v for k, v in ppl.items()}}, f, indent=2)
    print("\n".join(lines))


def write_curves(o):
    """Fig. 2: fine-tuning loss per step, EMA-smoothed (0.6), named {Model}-{Setting}-{Dataset}."""
    curves = {}
    for m, name in MODELS.items():
        for setting in ("full", "lora"):
            log = os.path.join(o, f"ft_{m}_{setting}", "log.jsonl")
            recs = [json.loads(line) for line in open(log)]
            curves[f"{name}-{'Full' if setting == 'full' else 'LoRA'}-PubMedQA"] = (
                [r["iter"] for r in recs if "loss" in r], ema([r["loss"] for r in recs if "loss" in r]))
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
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (its, ls) in curves.items():
        ax.plot(its, ls, label=k, linestyle="-" if "PMC" in k else "--")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("training loss (EMA 0.6)")
    ax.set_title("Fine-tuning on PubMedQA (cf. PMC-LLaMA Fig. 2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(o, "curves.png"), dpi=120)


if __name__ == "__main__":
    main()
