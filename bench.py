"""
Benchmarks: measure and print (never asserted; the tests check correctness).

    python bench.py --what=corpus        # prepare_corpus.py: tokens/s for 1 vs 2 workers, peak RSS at 1x and 4x size

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


def main(argv=None):
    cfg = configure(dict(globals()), argv)  # a copy: the defaults stay untouched
    benches = {"corpus": bench_corpus}
    if cfg["what"] not in benches:
        raise SystemExit(f"--what={cfg['what']}: known: {', '.join(benches)}")
    results = {"what": cfg["what"], "results": benches[cfg["what"]](cfg)}
    path = cfg["out"] or f"bench_{cfg['what']}.json"
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
