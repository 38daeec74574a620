"""
Benchmarks: measure and print (never asserted; the tests check correctness).

    python bench.py --what=corpus        # prepare_corpus.py: tokens/s for 1 vs 2 workers, peak RSS at 1x and 4x size
    python bench.py --what=eval          # eval_qa.py loglik scoring vs the harness' per-choice loop, questions/s

Results are printed as a table and written as JSON (--out).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from configurator import configure

what = "corpus"
data_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data")
out = ""  # JSON results file; default bench_{what}.json in the current folder
eval_questions = 200  # --what=eval: MedMCQA questions (and half as many PubMedQA ones)


def run_measured(cmd):
    """Run cmd as a child; return (seconds, peak RSS in MiB over it and the children it waited for)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.read().decode()[-2000:]}")
    return dt, usage.ru_maxrss / 1024


def bench_corpus(cfg):
    import prepare_corpus as pc
    bio = os.path.join(cfg["data_root"], "biomed_corpus")
    tokenizer = os.path.join(cfg["data_root"], "tokenizer", "llama_tokenizer.model")
    with tempfile.TemporaryDirectory() as tmp:
        # the biomedical corpus as one JSON-lines file, then the same repeated 4 times
        skips = pc.Skips()
        texts = [t for _, t, _ in pc.read_text(os.path.join(bio, "craft_pmc_oa_fulltext", "txt"), skips)]
        for sub in ("bc5cdr", "ncbi_disease"):
            texts += [t for _, t, _ in pc.read_pubtator(os.path.join(bio, sub), skips)]
        lines = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts))
        for reps in (1, 4):
            with open(os.path.join(tmp, f"x{reps}.jsonl"), "w") as f:
                for r in range(reps):
                    f.write(lines)
        rows = []
        for reps, workers in ((1, 1), (1, 2), (4, 1), (4, 2)):
            out_dir = os.path.join(tmp, f"out{reps}_{workers}")
            cmd = [sys.executable, "prepare_corpus.py", "--source=jsonl", f"--input={tmp}/x{reps}.jsonl",
                   f"--tokenizer={tokenizer}", f"--out_dir={out_dir}", f"--workers={workers}", "--quiet"]
            dt, rss = run_measured(cmd)
            with open(os.path.join(out_dir, "meta.json")) as f:
                meta = json.load(f)
            ntok = sum(s["tokens"] for s in meta["splits"].values())
            rows.append(dict(corpus=f"biomed x{reps}", workers=workers, documents=len(texts) * reps, tokens=ntok,
                             seconds=round(dt, 2), tokens_per_s=round(ntok / dt), peak_rss_mib=round(rss, 1)))
    print(f"{'corpus':<12} {'workers':>7} {'docs':>7} {'tokens':>10} {'wall s':>7} {'tokens/s':>10} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['corpus']:<12} {r['workers']:>7} {r['documents']:>7} {r['tokens']:>10,} {r['seconds']:>7} "
              f"{r['tokens_per_s']:>10,} {r['peak_rss_mib']:>13}")
    return rows


def bench_eval(cfg):
    """Our loglik scoring against the harness' method (one forward per question-choice pair) on the same random
    LLaMA and the same real questions; predictions must be identical."""
    import torch
    import eval_qa
    import qa_data
    from model import ModelArgs, Transformer
    from tokenizer import Tokenizer
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=32000,
                                  intermediate_size=688, max_seq_len=2048)).eval()
    model.init_weights(seed=0)
    tok = Tokenizer(os.path.join(cfg["data_root"], "tokenizer", "llama_tokenizer.model"))
    rows = []
    for bench, path, n in (("medmcqa", ("medmcqa", "dev.json"), cfg["eval_questions"]),
                           ("pubmedqa", ("pubmedqa", "ori_pqal.json"), cfg["eval_questions"] // 2)):
        examples = qa_data.load(bench, os.path.join(cfg["data_root"], *path), split="test", cop_base=1)[:n]
        items = []
        for ex in examples:
            pairs = [eval_qa.encode_pair(tok, ex.prompt, ch) for ch in ex.choices]
            items.append((pairs[0][0], [c for _, c in pairs]))
        timings = {}
        for name, kw in (("naive per-choice", dict(naive=True)), ("ours", dict())):
            t0 = time.perf_counter()
            scores = eval_qa.score_loglik(model, items, 16, "cpu", progress=False, **kw)
            timings[name] = (time.perf_counter() - t0, [max(range(len(s)), key=s.__getitem__) for s in scores], scores)
        (tn, pn, sn), (to, po, so) = timings["naive per-choice"], timings["ours"]
        diff = max(abs(a - b) for x, y in zip(sn, so) for a, b in zip(x, y))
        rows.append(dict(bench=bench, questions=len(items), naive_q_per_s=round(len(items) / tn, 2),
                         ours_q_per_s=round(len(items) / to, 2), speedup=round(tn / to, 2),
                         identical_predictions=pn == po, max_score_diff=diff))
    print(f"{'bench':<9} {'questions':>9} {'naive q/s':>10} {'ours q/s':>9} {'speed-up':>9} {'same preds':>10} {'max |diff|':>11}")
    for r in rows:
        print(f"{r['bench']:<9} {r['questions']:>9} {r['naive_q_per_s']:>10} {r['ours_q_per_s']:>9} "
              f"{r['speedup']:>8}x {str(r['identical_predictions']):>10} {r['max_score_diff']:>11.2e}")
    return rows


def main(argv=None):
    cfg = configure(dict(globals()), argv)  # a copy: the defaults stay untouched
    benches = {"corpus": bench_corpus, "eval": bench_eval}
    if cfg["what"] not in benches:
        raise SystemExit(f"--what={cfg['what']}: known: {', '.join(benches)}")
    results = {"what": cfg["what"], "results": benches[cfg["what"]](cfg)}
    path = cfg["out"] or f"bench_{cfg['what']}.json"
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
