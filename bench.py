"""
Benchmarks: measure and print (never asserted; the tests check correctness).

    python bench.py --what=corpus        # prepare_corpus.py: tokens/s for 1 vs 2 workers, peak RSS at 1x and 4x size
    python bench.py --what=corpus --corpus_format=xml   # the same for PMC JATS XML in a bulk .tar.gz (parsing too)
    python bench.py --what=eval          # eval_qa.py loglik scoring vs the harness' per-choice loop, questions/s
    python bench.py --what=model         # ours vs transformers.LlamaForCausalLM: training step, generation, memory
    python bench.py --what=model --compile=True     # the same with torch.compile on both
    python bench.py --what=fsdp          # GPU: bf16 FSDP2 training step of a ~1B LLaMA, tokens/s and MFU

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
corpus_format = "jsonl"  # --what=corpus: 'jsonl' (biomedical texts as JSON lines) or 'xml' (PMC articles, .tar.gz)
corpus_runs = 1  # --what=corpus: runs of each configuration, interleaved; the fastest is kept (a shared CPU is noisy)
eval_questions = 200  # --what=eval: MedMCQA questions (and half as many PubMedQA ones)
# --what=model: the shapes of the comparison (fp32 on CPU), repetitions, and torch.compile on both sides
dim = 512
n_layers = 8
n_heads = 8
n_kv_heads = 2
intermediate_size = 1536
vocab_size = 32000
seq_len = 512
micro_batch = 4
prompt_len = 128
new_tokens = 128
reps = 10
compile = False
device = ""  # --what=fsdp: '' = cuda if available
fsdp_preset = "1b"  # --what=fsdp: '1b' (dim 2048, 16 layers, 16 heads, 8 KV heads) or 'tiny' (a CPU smoke run)
part = ""  # internal: one measurement in a child process ('time', 'mem:ours', 'mem:hf')


def print_table(rows, cols):
    """rows: dicts; cols: (header, key, format) triples. Right-aligned columns, as wide as their widest cell."""
    cells = [[fmt.format(r[k]) for _, k, fmt in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(cols)]
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(cols, widths)))
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))


def run_measured(cmd):
    """Run cmd as a child; return (seconds, peak RSS in MiB over it and the children it waited for)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.read().decode()[-2000:]}")
    return dt, usage.ru_maxrss / 1024


def _xml_package(path, data_root, copies):
    """A bulk package as NCBI ships them (.tar.gz of .xml members): the shared PMC articles repeated `copies` times,
    each copy under new PMC ids (the same id twice would be skipped as a duplicate)."""
    import glob
    import gzip
    import io
    import re
    import tarfile
    articles = [open(f, "rb").read() for f in sorted(glob.glob(os.path.join(data_root, "pmc_oa_xml", "*.*xml")))]
    ident = re.compile(rb'(pub-id-type="pmc(?:id)?">)\s*(?:PMC)?\d+')
    n = 0
    with gzip.open(path, "wb", compresslevel=6) as f, tarfile.open(fileobj=f, mode="w|") as tar:
        for c in range(copies):
            for a in articles:
                n += 1
                data = ident.sub(lambda m: m.group(1) + b"PMC%d" % (10_000_000 + n), a)
                info = tarfile.TarInfo(f"PMC0xxxxxxx/PMC{10_000_000 + n}.xml")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return n


def bench_corpus(cfg):
    import prepare_corpus as pc
    bio = os.path.join(cfg["data_root"], "biomed_corpus")
    tokenizer = os.path.join(cfg["data_root"], "tokenizer", "llama_tokenizer.model")
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    print(f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} when starting")
    xml = cfg["corpus_format"] == "xml"
    with tempfile.TemporaryDirectory() as tmp:
        inputs, ndocs = {}, {}
        if xml:  # the shared PMC articles repeated to 2,002 documents (x1), then 4 times that
            for reps in (1, 4):
                inputs[reps] = os.path.join(tmp, f"oa_x{reps}.tar.gz")
                ndocs[reps] = _xml_package(inputs[reps], cfg["data_root"], 182 * reps)
        else:  # the biomedical corpus as one JSON-lines file, then the same repeated 4 times
            skips = pc.Skips()
            texts = [t for _, t, _ in pc.read_text(os.path.join(bio, "craft_pmc_oa_fulltext", "txt"), skips)]
            for sub in ("bc5cdr", "ncbi_disease"):
                texts += [t for _, t, _ in pc.read_pubtator(os.path.join(bio, sub), skips)]
            lines = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts))
            for reps in (1, 4):
                inputs[reps], ndocs[reps] = os.path.join(tmp, f"x{reps}.jsonl"), len(texts) * reps
                with open(inputs[reps], "w") as f:
                    for r in range(reps):
                        f.write(lines)
        runs, tokens = {}, {}  # (reps, workers) -> [(seconds, peak RSS)]: runs interleaved, so drift hits all alike
        for _ in range(cfg["corpus_runs"]):
            for reps, workers in ((1, 1), (1, 2), (4, 1), (4, 2)):
                out_dir = os.path.join(tmp, f"out{reps}_{workers}")
                cmd = [sys.executable, "prepare_corpus.py", f"--source={'pmc_xml' if xml else 'jsonl'}",
                       f"--input={inputs[reps]}", f"--tokenizer={tokenizer}", f"--out_dir={out_dir}",
                       f"--workers={workers}", "--quiet"]
                runs.setdefault((reps, workers), []).append(run_measured(cmd))
                with open(os.path.join(out_dir, "meta.json")) as f:
                    meta = json.load(f)
                docs = sum(s["documents"] for s in meta["splits"].values())
                assert docs == ndocs[reps], (docs, ndocs[reps], meta["skipped"])
                tokens[reps] = sum(s["tokens"] for s in meta["splits"].values())
        rows = []
        for (reps, workers), r in runs.items():  # the fastest run's time, the largest run's memory
            dt, rss = min(s for s, _ in r), max(m for _, m in r)
            rows.append(dict(corpus=f"{'PMC XML' if xml else 'biomed'} x{reps}", workers=workers,
                             documents=ndocs[reps], tokens=tokens[reps], seconds=round(dt, 2),
                             docs_per_s=round(ndocs[reps] / dt, 1), tokens_per_s=round(tokens[reps] / dt),
                             peak_rss_mib=round(rss, 1)))
    print_table(rows, [("corpus", "corpus", "{}"), ("workers", "workers", "{}"), ("docs", "documents", "{:,}"),
                       ("tokens", "tokens", "{:,}"), ("wall s", "seconds", "{}"), ("docs/s", "docs_per_s", "{:,}"),
                       ("tokens/s", "tokens_per_s", "{:,}"), ("peak RSS MiB", "peak_rss_mib", "{}")])
    for reps in (1, 4):
        one, two = (r["seconds"] for r in rows if r["corpus"].endswith(f"x{reps}"))
        print(f"x{reps}: 2 workers run {one / two:.2f}x as fast as 1")
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
        items, _ = eval_qa.encode_items(tok, [ex.prompt for ex in examples], examples, model.args.max_seq_len)
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
    print_table(rows, [("bench", "bench", "{}"), ("questions", "questions", "{}"), ("naive q/s", "naive_q_per_s", "{}"),
                       ("ours q/s", "ours_q_per_s", "{}"), ("speed-up", "speedup", "{}x"),
                       ("same preds", "identical_predictions", "{}"), ("max |diff|", "max_score_diff", "{:.2e}")])
    return rows


def _models(cfg):
    """HF's LlamaForCausalLM (sdpa) and ours with identical weights (ours loads HF's tensors by name)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from model import args_from_hf_config, Transformer
    torch.manual_seed(0)
    hcfg = LlamaConfig(hidden_size=cfg["dim"], num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"],
                       num_key_value_heads=cfg["n_kv_heads"], intermediate_size=cfg["intermediate_size"],
                       vocab_size=cfg["vocab_size"], max_position_embeddings=2048, attn_implementation="sdpa",
                       tie_word_embeddings=False)
    hf = LlamaForCausalLM(hcfg)
    ours = Transformer(args_from_hf_config(hcfg.to_dict()))
    ours.load_state_dict(hf.state_dict(), strict=True)
    return ours, hf


def _train_step(side, model, cfg, x):
    """One full training step as each stack runs it by default: forward, loss, backward, fused AdamW (train.py's,
    and HF Trainer's default optimizer since torch 2.8). Returns the loss."""
    import torch
    fwd = torch.compile(model) if cfg["compile"] else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    targets = torch.cat([x[:, 1:], torch.full((x.size(0), 1), -100)], 1)

    def step():
        if side == "ours":
            loss = fwd(x, targets, return_logits=False)[1]
        else:
            loss = fwd(input_ids=x, labels=x).loss  # HF shifts the labels itself
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def _generate(side, model, cfg, prompt):
    """Greedy decoding of new_tokens after prompt; with --compile=True each stack's own compiled decoding."""
    n = cfg["new_tokens"]
    if side == "ours":
        return lambda: model.generate(prompt, n, temperature=0.0, compile=cfg["compile"])[0].tolist()
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    if cfg["compile"]:  # HF's compiled decoding: a static cache, forward compiled by generate (CPU must opt in)
        from transformers import CompileConfig
        cc = CompileConfig(mode="default")  # its default, reduce-overhead, means CUDA graphs
        cc._compile_all_devices = True
        kw.update(cache_implementation="static", compile_config=cc)
    return lambda: model.generate(prompt, **kw)[0].tolist()


def _interleaved(fns, warmup, reps):
    """Median seconds of each fn, run in turn rep by rep so that a drift in the machine's speed hits all alike."""
    import statistics
    times, last = {k: [] for k in fns}, {}
    for i in range(warmup + reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            last[k] = f()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, last


def _measure_part(cfg):
    """In a child process, so that resources are its own: 'time' (both models, interleaved) or 'mem:ours'/'mem:hf'
    (peak RSS of training steps of one model). Prints one JSON line."""
    import resource
    import torch
    ours, hf = _models(cfg)
    models = {"ours": ours, "hf": hf}
    torch.manual_seed(1)
    x = torch.randint(0, cfg["vocab_size"], (cfg["micro_batch"], cfg["seq_len"]))
    if cfg["part"].startswith("mem:"):
        side = cfg["part"][4:]
        model, models, ours, hf = models[side], None, None, None  # keep only the measured model alive
        step = _train_step(side, model, cfg, x)
        for _ in range(3):
            step()
        print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    train_s, losses = _interleaved({k: _train_step(k, m, cfg, x) for k, m in models.items()}, 2, cfg["reps"])
    with torch.inference_mode():
        prompt = x[:1, :cfg["prompt_len"]].clamp(min=1)  # HF masks pad_token_id=0 in a prompt as padding
        gen_s, tokens = _interleaved({k: _generate(k, m, cfg, prompt) for k, m in models.items()}, 1, cfg["reps"])
    print(json.dumps({"train_tokens_per_s": {k: x.numel() / t for k, t in train_s.items()},
                      "gen_tokens_per_s": {k: cfg["new_tokens"] / t for k, t in gen_s.items()},
                      "last_loss": losses, "identical_greedy_tokens": tokens["ours"] == tokens["hf"]}))


def bench_model(cfg):
    """Timings in one process (both models, interleaved reps); peak training RSS in one fresh process per model."""
    keys = ["dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "vocab_size", "seq_len", "micro_batch",
            "prompt_len", "new_tokens", "reps", "compile"]
    res = {}
    for part in ("time", "mem:ours", "mem:hf"):
        cmd = [sys.executable, "bench.py", "--what=model", f"--part={part}", *[f"--{k}={cfg[k]}" for k in keys]]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{part} failed: {r.stderr[-3000:]}")
        res[part] = json.loads(r.stdout.strip().splitlines()[-1])
    t = res["time"]
    rows = [dict(metric="training step tokens/s", **t["train_tokens_per_s"]),
            dict(metric="greedy generation tokens/s", **t["gen_tokens_per_s"]),
            dict(metric="training peak RSS MiB", ours=res["mem:ours"]["peak_rss_mib"], hf=res["mem:hf"]["peak_rss_mib"])]
    for r in rows:
        r["ratio"] = r["ours"] / r["hf"]
    mode = "torch.compile" if cfg["compile"] else "eager"
    print(f"fp32 CPU, {mode} on both sides: dim {cfg['dim']}, {cfg['n_layers']} layers, {cfg['n_heads']} heads / "
          f"{cfg['n_kv_heads']} KV, vocab {cfg['vocab_size']}, seq {cfg['seq_len']} x {cfg['micro_batch']}; "
          f"generation {cfg['prompt_len']} + {cfg['new_tokens']}; median of {cfg['reps']} interleaved reps")
    print_table(rows, [("metric", "metric", "{}"), ("ours", "ours", "{:.1f}"), ("HF", "hf", "{:.1f}"),
                       ("ours/HF", "ratio", "{:.2f}")])
    same_loss = abs(t["last_loss"]["ours"] - t["last_loss"]["hf"]) < 1e-3
    print(f"same loss after {cfg['reps'] + 2} steps: {same_loss}; identical greedy tokens: "
          f"{t['identical_greedy_tokens']}")
    return {"mode": mode, "rows": rows, "identical_greedy_tokens": t["identical_greedy_tokens"],
            "last_loss": t["last_loss"]}


def bench_fsdp(cfg):
    """train.py's own model setup (FSDP2, bf16 mixed precision, optional compile) timing full training steps of a
    ~1B LLaMA at seq 512: tokens/s and MFU (6N + 12 L H Q T FLOPs per token against the GPU's bf16 peak)."""
    from types import SimpleNamespace
    import torch
    import train
    from model import ModelArgs
    shapes = {"1b": dict(dim=2048, n_layers=16, n_heads=16, n_kv_heads=8, intermediate_size=5632, micro=8),
              "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128, micro=2)}[cfg["fsdp_preset"]]
    ctx = train.setup_distributed(cfg["device"])
    rows = []
    for compiled in (False, True) if ctx.device.type == "cuda" else (False,):
        c = SimpleNamespace(dtype="bfloat16", compile=compiled, activation_checkpointing=False, seed=0)
        args = ModelArgs(dim=shapes["dim"], n_layers=shapes["n_layers"], n_heads=shapes["n_heads"],
                         n_kv_heads=shapes["n_kv_heads"], intermediate_size=shapes["intermediate_size"],
                         vocab_size=32000, max_seq_len=512)
        model = train.build_model(c, ctx.device, model_args=args)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as train.py
        x = torch.randint(0, 32000, (shapes["micro"], 512), device=ctx.device)
        y = torch.roll(x, -1, 1)
        times = []
        for i in range(cfg["reps"] + 3):
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            _, loss = model(x, y, return_logits=False)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        n_params = sum(p.numel() for p in model.parameters())
        tps = x.numel() / sorted(times)[len(times) // 2]
        peak = train.peak_flops(ctx.device)
        mfu = tps * train.flops_per_token(args, n_params, 512) / peak if peak else None
        rows.append(dict(compile=compiled, params=n_params, tokens_per_s=round(tps), mfu=mfu,
                         peak_mem_mib=round(train.peak_memory_mib(ctx.device)), loss=loss.item(),
                         device=torch.cuda.get_device_name() if ctx.device.type == "cuda" else "cpu"))
        print(f"{rows[-1]['device']}: {n_params / 1e9:.2f}B params, bf16 FSDP2, compile={compiled}: "
              f"{tps:,.0f} tokens/s, MFU {f'{mfu:.1%}' if mfu is not None else 'n/a'}, "
              f"peak memory {rows[-1]['peak_mem_mib']:,} MiB")
    torch.distributed.destroy_process_group()
    return rows


def main(argv=None):
    cfg = configure(dict(globals()), argv)  # a copy: the defaults stay untouched
    if cfg["part"]:
        return _measure_part(cfg)
    benches = {"corpus": bench_corpus, "eval": bench_eval, "model": bench_model, "fsdp": bench_fsdp}
    if cfg["what"] not in benches:
        raise SystemExit(f"--what={cfg['what']}: known: {', '.join(benches)}")
    results = {"what": cfg["what"], "results": benches[cfg["what"]](cfg)}
    path = cfg["out"] or f"bench_{cfg['what']}{'_compile' if cfg['compile'] else ''}.json"
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
