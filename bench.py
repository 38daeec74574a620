"""
Benchmarks: measure and print (never asserted; the tests check correctness).

    python bench.py --what=corpus        # prepare_corpus.py: tokens/s for 1 vs 2 workers, peak RSS at 1x and 4x size
    python bench.py --what=corpus --corpus_format=xml   # the same for PMC JATS XML in a bulk .tar.gz (parsing too)
    python bench.py --what=shards                        # --shard=K/N: 1 vs 2 shards side by side, merge, projection
    python bench.py --what=eval          # eval_qa.py loglik scoring vs the harness' per-choice loop, questions/s
    python bench.py --what=model         # ours vs transformers.LlamaForCausalLM: training step, generation, memory
    python bench.py --what=model --compile=True     # the same with torch.compile on both
    python bench.py --what=model --device=cuda      # the same on a GPU, bf16 on both sides (GPU peak memory)
    python bench.py --what=fsdp          # GPU: bf16 FSDP2 training step of a ~1B LLaMA, tokens/s, MFU, peak memory
    python bench.py --what=memplan       # LLaMA-7B per-GPU memory (configs/pmc.py) from the shapes (memplan.py), in
                                         # both gradient-sync modes; on a GPU also measured on a 7B-wide model with
                                         # fewer layers

Results are printed as a table and written as JSON (--out).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from configurator import configure
from memplan import GiB, OVERHEAD_GIB, largest_micro_batch, memory_plan, param_counts

what = "corpus"
data_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data")
out = ""  # JSON results file; default bench_{what}.json in the current folder
corpus_format = "jsonl"  # --what=corpus: 'jsonl' (biomedical texts as JSON lines) or 'xml' (PMC articles, .tar.gz)
corpus_runs = 1  # --what=corpus: runs of each configuration, interleaved; the fastest is kept (a shared CPU is noisy)
eval_questions = 200  # --what=eval: MedMCQA questions (and half as many PubMedQA ones)
# --what=model: the shapes of the comparison, repetitions, and torch.compile on both sides
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
device = ""  # --what=model/fsdp/memplan: '' = cuda if available, else cpu
dtype = ""  # --what=model: '' = bfloat16 on CUDA, float32 on CPU (parameters in this dtype on both sides)
fsdp_preset = "1b"  # --what=fsdp: '1b' (dim 2048, 16 layers, 16 heads, 8 KV heads) or 'tiny' (a CPU smoke run)
memplan_layers = 4  # --what=memplan on a GPU: LLaMA-7B's layer shapes with this many layers, measured on 1 GPU


def print_table(rows, cols):
    """rows: dicts; cols: (header, key, format) triples. Right-aligned columns, as wide as their widest cell."""
    cells = [[fmt.format(r[k]) for _, k, fmt in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(cols)]
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(cols, widths)))
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))


def machine():
    """The CPU (vendor tuning does not travel: every figure must name it), torch's build and its math libraries."""
    import platform
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    libs = [line.strip(" -") for line in torch.__config__.show().splitlines()
            if any(k in line for k in ("Math Kernel", "MKL-DNN", "oneDNN", "OpenBLAS", "CPU capability"))]
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": round(os.getloadavg()[0], 1),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "math_libraries": libs, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def run_measured(cmd):
    """Run cmd as a child; return (seconds, peak RSS in MiB over it and the children it waited for)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.read().decode()[-2000:]}")
    return dt, usage.ru_maxrss / 1024


def _xml_package(path, data_root, copies, first=10_000_000):
    """A bulk package as NCBI ships them (.tar.gz of .xml members): the shared PMC articles repeated `copies` times,
    each copy under new PMC ids from `first` on (the same id twice would be skipped as a duplicate)."""
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
                data = ident.sub(lambda m: m.group(1) + b"PMC%d" % (first + n), a)
                info = tarfile.TarInfo(f"PMC0xxxxxxx/PMC{first + n}.xml")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return n


def bench_corpus(cfg):
    import corpus_sources as cs
    bio = os.path.join(cfg["data_root"], "biomed_corpus")
    tokenizer = os.path.join(cfg["data_root"], "tokenizer", "llama_tokenizer.model")
    xml = cfg["corpus_format"] == "xml"
    with tempfile.TemporaryDirectory() as tmp:
        inputs, ndocs = {}, {}
        if xml:  # the shared PMC articles repeated to 2,002 documents (x1), then 4 times that
            for reps in (1, 4):
                inputs[reps] = os.path.join(tmp, f"oa_x{reps}.tar.gz")
                ndocs[reps] = _xml_package(inputs[reps], cfg["data_root"], 182 * reps)
        else:  # the biomedical corpus as one JSON-lines file, then the same repeated 4 times
            skips = cs.QueuedSkips()
            texts = [t for _, (_, t), _ in cs.read_text(os.path.join(bio, "craft_pmc_oa_fulltext", "txt"), skips)]
            for sub in ("bc5cdr", "ncbi_disease"):
                texts += [t for _, (_, t), _ in cs.read_pubtator(os.path.join(bio, sub), skips)]
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


def _run_parallel(cmds):
    """Start every command at once; -> the wall time until the last one ends."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    for p, c in zip(procs, cmds):
        if p.wait() != 0:
            raise RuntimeError(f"{' '.join(c)} failed: {p.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - t0


def bench_shards(cfg):
    """Corpus preparation sharded (prepare_corpus.py --shard=K/N): PMC XML packages as one shard, then as 2 shards
    side by side (one process each, this machine's 2 cores), the merge's throughput, and from the measured rates the
    projected time of PMC-LLaMA's 75B-token corpus on 64 cores and on 8 such nodes."""
    tokenizer = os.path.join(cfg["data_root"], "tokenizer", "llama_tokenizer.model")
    with tempfile.TemporaryDirectory() as tmp:
        packages = [os.path.join(tmp, f"oa_{i}.tar.gz") for i in range(4)]
        for i, p in enumerate(packages):  # 4 packages of ~1,000 articles, every PMC id its own
            _xml_package(p, cfg["data_root"], 91, first=10_000_000 + 1_000_000 * i)
        base = [sys.executable, "prepare_corpus.py", "--source=pmc_xml", "--input", *packages,
                f"--tokenizer={tokenizer}", "--workers=1", "--quiet"]
        one = min(_run_parallel([base + [f"--out_dir={tmp}/one_{r}", "--shard=0/1"]])
                  for r in range(cfg["corpus_runs"]))
        two = min(_run_parallel([base + [f"--out_dir={tmp}/two_{r}", f"--shard={k}/2"] for k in range(2)])
                  for r in range(cfg["corpus_runs"]))
        import prepare_corpus
        t0 = time.perf_counter()
        prepare_corpus.main(["--merge", f"--out_dir={tmp}/two_0", "--quiet"])  # in this process: the merge alone
        merge_s = time.perf_counter() - t0
        with open(os.path.join(tmp, "two_0", "meta.json")) as f:
            meta = json.load(f)
        tokens = sum(s["tokens"] for s in meta["splits"].values())
        merged_bytes = sum(os.path.getsize(os.path.join(tmp, "two_0", f"{s}.{e}")) for s in ("train", "val")
                           for e in ("bin", "idx"))
    rate = tokens / one  # tokens/s of one process (reader, parser and tokenizer in one)
    corpus, bytes_per_token = 75e9, merged_bytes / tokens
    merge_rate = merged_bytes / merge_s
    node = corpus / (rate * 64)
    nodes8 = corpus / (rate * 64 * 8) + corpus * bytes_per_token / merge_rate
    result = dict(tokens=tokens, one_shard_s=round(one, 2), two_shards_s=round(two, 2), speedup=round(one / two, 2),
                  tokens_per_s_per_process=round(rate), merge_s=round(merge_s, 2), merge_gb_per_s=merge_rate / 1e9,
                  projected_75b_64_cores_h=node / 3600, projected_75b_8_nodes_h=nodes8 / 3600)
    print(f"{tokens:,} tokens of PMC XML: 1 shard {one:.2f} s, 2 shards side by side {two:.2f} s: "
          f"{one / two:.2f}x; one process {rate:,.0f} tokens/s")
    print(f"merge: {merged_bytes / 1e6:.1f} MB in {merge_s:.2f} s ({merge_rate / 1e9:.2f} GB/s)")
    print(f"projected (a projection from these rates, not a measurement): 75B tokens on 64 cores (64 one-process "
          f"shards) {node / 3600:.2f} h; on 8 such nodes {nodes8 / 3600:.2f} h, the merge of "
          f"{corpus * bytes_per_token / 1e9:.0f} GB included")
    return result


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


def _device_dtype(cfg):
    """--device and --dtype resolved: CUDA when there is one; bf16 on CUDA, fp32 on CPU unless given."""
    import torch
    device = cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, cfg["dtype"] or ("bfloat16" if device.startswith("cuda") else "float32")


def _models(cfg):
    """HF's LlamaForCausalLM (sdpa) and ours with identical weights (ours loads HF's tensors by name), both built on
    --device in --dtype: HF's the way from_pretrained(dtype=...) builds it (its rotary frequencies stay fp32), ours
    with its rotary tables rebuilt in fp32 after the cast, as loading a checkpoint does."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from model import Transformer
    from weights import args_from_hf_config
    device, dtype = _device_dtype(cfg)
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    hcfg = LlamaConfig(hidden_size=cfg["dim"], num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"],
                       num_key_value_heads=cfg["n_kv_heads"], intermediate_size=cfg["intermediate_size"],
                       vocab_size=cfg["vocab_size"], max_position_embeddings=2048, attn_implementation="sdpa",
                       tie_word_embeddings=False)
    with torch.device(device):  # drawn where they run: a 1B model's init on a GPU takes no time
        hf = LlamaForCausalLM._from_config(hcfg, dtype=dtype)
        ours = Transformer(args_from_hf_config(hcfg.to_dict()))
    ours.to(dtype)
    ours.init_rope()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return ours, hf


def _train_step(side, model, cfg, x):
    """One full training step as each stack runs it by default: forward, loss, backward, fused AdamW (train.py's,
    and HF Trainer's default optimizer since torch 2.8). Returns the loss."""
    import torch
    from kernels import linear_cross_entropy
    fwd = torch.compile(model) if cfg["compile"] else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    targets = torch.cat([x[:, 1:], torch.full((x.size(0), 1), -100, device=x.device)], 1)

    def step():
        if side == "ours":
            loss = fwd(x, targets, loss_fn=linear_cross_entropy)[1]
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


def _interleaved(fns, warmup, reps, sync=lambda: None):
    """Median seconds of each fn, run in turn rep by rep so that a drift in the machine's speed hits all alike.
    sync() waits for the GPU's queued work, so that each timing holds its own fn's kernels and no other's."""
    import statistics
    times, last = {k: [] for k in fns}, {}
    for i in range(warmup + reps):
        for k, f in fns.items():
            sync()
            t0 = time.perf_counter()
            last[k] = f()
            sync()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, last


def measure_model_part(cfg, part):
    """Run by bench_model in a child process (so that resources are its own), through `python -c`: part 'time' (both
    models, interleaved) or 'mem:ours'/'mem:hf' (peak memory of training steps of one model: RSS on CPU, allocated GPU
    memory on CUDA). cfg: the --what=model settings. Prints one JSON line."""
    import resource
    import torch
    device, _ = _device_dtype(cfg)
    cuda = device.startswith("cuda")
    ours, hf = _models(cfg)
    models = {"ours": ours, "hf": hf}
    torch.manual_seed(1)
    x = torch.randint(0, cfg["vocab_size"], (cfg["micro_batch"], cfg["seq_len"])).to(device)
    if part.startswith("mem:"):
        side = part[4:]
        model, models, ours, hf = models[side], None, None, None  # keep only the measured model alive
        if cuda:  # the other model is freed: count from here, its weights excluded
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step = _train_step(side, model, cfg, x)
        for _ in range(3):
            step()
        peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"peak_mib": peak / 2**20}))
        return
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    train_s, losses = _interleaved({k: _train_step(k, m, cfg, x) for k, m in models.items()}, 2, cfg["reps"], sync)
    with torch.inference_mode():
        prompt = x[:1, :cfg["prompt_len"]].clamp(min=1)  # HF masks pad_token_id=0 in a prompt as padding
        gen_s, tokens = _interleaved({k: _generate(k, m, cfg, prompt) for k, m in models.items()}, 1, cfg["reps"],
                                     sync)
    print(json.dumps({"train_tokens_per_s": {k: x.numel() / t for k, t in train_s.items()},
                      "gen_tokens_per_s": {k: cfg["new_tokens"] / t for k, t in gen_s.items()},
                      "last_loss": losses, "identical_greedy_tokens": tokens["ours"] == tokens["hf"],
                      "gpu": torch.cuda.get_device_name() if cuda else None}))


def bench_model(cfg):
    """Timings in one process (both models, interleaved reps); peak training memory in one fresh process per model."""
    device, dtype = _device_dtype(cfg)
    cfg = {**cfg, "device": device, "dtype": dtype}
    keys = ["dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "vocab_size", "seq_len", "micro_batch",
            "prompt_len", "new_tokens", "reps", "compile", "device", "dtype"]
    res = {}
    child = "import json, sys, bench; bench.measure_model_part(json.loads(sys.argv[1]), sys.argv[2])"
    for part in ("time", "mem:ours", "mem:hf"):
        cmd = [sys.executable, "-c", child, json.dumps({k: cfg[k] for k in keys}), part]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        if r.returncode != 0:
            raise RuntimeError(f"{part} failed: {r.stderr[-3000:]}")
        res[part] = json.loads(r.stdout.strip().splitlines()[-1])
    t = res["time"]
    cuda = device.startswith("cuda")
    rows = [dict(metric="training step tokens/s", **t["train_tokens_per_s"]),
            dict(metric="greedy generation tokens/s", **t["gen_tokens_per_s"]),
            dict(metric="training peak GPU memory MiB" if cuda else "training peak RSS MiB",
                 ours=res["mem:ours"]["peak_mib"], hf=res["mem:hf"]["peak_mib"])]
    for r in rows:
        r["ratio"] = r["ours"] / r["hf"]
    mode = "torch.compile" if cfg["compile"] else "eager"
    where = f"CUDA ({t['gpu']})" if cuda else "CPU"
    print(f"{'fp32' if dtype == 'float32' else dtype} {where}, {mode} on both sides: dim {cfg['dim']}, "
          f"{cfg['n_layers']} layers, {cfg['n_heads']} heads / {cfg['n_kv_heads']} KV, vocab {cfg['vocab_size']}, "
          f"seq {cfg['seq_len']} x {cfg['micro_batch']}; generation {cfg['prompt_len']} + {cfg['new_tokens']}; "
          f"median of {cfg['reps']} interleaved reps")
    print_table(rows, [("metric", "metric", "{}"), ("ours", "ours", "{:.1f}"), ("HF", "hf", "{:.1f}"),
                       ("ours/HF", "ratio", "{:.2f}")])
    # both sides take the same AdamW steps from the same weights: fp32 agrees closely, bf16 to its rounding
    tol = 1e-3 if dtype == "float32" else 5e-2
    diff = abs(t["last_loss"]["ours"] - t["last_loss"]["hf"])
    print(f"same loss after {cfg['reps'] + 2} steps (|diff| {diff:.1e} < {tol:g}): {diff < tol}; identical greedy "
          f"tokens: {t['identical_greedy_tokens']}")
    return {"mode": mode, "device": device, "dtype": dtype, "gpu": t["gpu"], "rows": rows,
            "identical_greedy_tokens": t["identical_greedy_tokens"], "last_loss": t["last_loss"]}


def _time_train_steps(model, opt, x, y, reps, cuda):
    """3 warm-up steps (compilation, when compiled), then reps timed training steps: (step times, warm-up s, loss)."""
    import torch
    from kernels import linear_cross_entropy
    times, t_first = [], time.perf_counter()
    for i in range(reps + 3):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, loss = model(x, y, loss_fn=linear_cross_entropy)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i == 2:
            warmup_s = time.perf_counter() - t_first
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return times, warmup_s, loss


def bench_fsdp(cfg):
    """train.py's own model setup (FSDP2, bf16 mixed precision, optional compile) timing full training steps of a
    ~1B LLaMA at seq 512: tokens/s, MFU and peak memory, compile off then on (on a GPU; CPU: eager only).

    MFU counts 6 FLOPs per token per parameter of the matrix products (the input embedding is a lookup, not a
    product, so it is left out) plus attention's 12 * layers * heads * head_dim * seq, against the GPU's dense bf16
    peak (train.PEAK_FLOPS). train.py's log counts every parameter: ~7% higher at this size, ~2% at 7B."""
    from types import SimpleNamespace
    import torch
    import train
    from model import ModelArgs
    shapes = {"1b": dict(dim=2048, n_layers=16, n_heads=16, n_kv_heads=8, intermediate_size=5632, micro=8),
              "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128, micro=2)}[cfg["fsdp_preset"]]
    ctx = train.setup_distributed(cfg["device"])
    cuda = ctx.device.type == "cuda"
    rows = []
    for compiled in (False, True) if cuda else (False,):
        c = SimpleNamespace(dtype="bfloat16", compile=compiled, activation_checkpointing=False, seed=0)
        args = ModelArgs(dim=shapes["dim"], n_layers=shapes["n_layers"], n_heads=shapes["n_heads"],
                         n_kv_heads=shapes["n_kv_heads"], intermediate_size=shapes["intermediate_size"],
                         vocab_size=32000, max_seq_len=512)
        if cuda:  # each round's peak is its own
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = train.build_model(c, ctx.device, model_args=args)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as train.py
        x = torch.randint(0, 32000, (shapes["micro"], 512), device=ctx.device)
        y = torch.roll(x, -1, 1)
        times, warmup_s, loss = _time_train_steps(model, opt, x, y, cfg["reps"], cuda)
        n_params = sum(p.numel() for p in model.parameters())
        n_matmul = n_params - (0 if args.tie_word_embeddings else model.model.embed_tokens.weight.numel())
        tps = x.numel() / sorted(times)[len(times) // 2]
        peak = train.peak_flops(ctx.device)
        mfu = tps * train.flops_per_token(args, n_matmul, 512) / peak if peak else None
        rows.append(dict(compile=compiled, params=n_params, tokens_per_s=round(tps), mfu=mfu,
                         peak_mem_mib=round(train.peak_memory_mib(ctx.device)), loss=loss.item(),
                         warmup_s=round(warmup_s, 1),
                         device=torch.cuda.get_device_name() if cuda else "cpu"))
        print(f"{rows[-1]['device']}: {n_params / 1e9:.2f}B params, bf16 FSDP2, compile={compiled}: "
              f"{tps:,.0f} tokens/s, MFU {f'{mfu:.1%}' if mfu is not None else 'n/a'}, "
              f"peak memory {rows[-1]['peak_mem_mib']:,} MiB (first 3 steps {warmup_s:.1f} s)")
        del model, opt, loss
    torch.distributed.destroy_process_group()
    return rows


# -----------------------------------------------------------------------------
# the memory plan (memplan.py) of configs/pmc.py, and on a GPU measured (docs/training.md, "Memory plan for LLaMA-7B")

MODES = {"reduce-scatter every micro-step": False, "deferred sync": True}  # train.py's defer_grad_sync


def _measure_memplan(cfg, args):
    """LLaMA-7B's layers, memplan_layers of them, on this one GPU (world 1): bf16 FSDP2, activation checkpointing,
    micro-batch 4 x 512, grad_accum 2, two of train.py's own train_step in each gradient-sync mode; peak allocated
    memory of each against the plan's figure."""
    from dataclasses import replace
    from types import SimpleNamespace
    import torch
    import train
    from model import Transformer
    from weights import materialize
    small = replace(args, n_layers=cfg["memplan_layers"])
    micro, seq, ga = 4, 512, 2
    ctx = train.setup_distributed(cfg["device"])
    c = SimpleNamespace(dtype="bfloat16", compile=False, activation_checkpointing=True, seed=0, grad_clip=1.0)
    with torch.device("meta"):
        model = Transformer(small)
    train.shard_model(model, c, ctx.device)
    materialize(model, ctx.device)
    with torch.no_grad():  # the values do not matter for memory: drawn on the GPU, no 16 GB CPU init
        for p in model.parameters():
            (p.to_local() if hasattr(p, "to_local") else p).normal_(0.0, 0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    rows = []
    for mode, defer in MODES.items():
        c.defer_grad_sync = defer
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):  # the second step holds AdamW's states from the start
            xs = [torch.randint(0, small.vocab_size, (micro, seq), device=ctx.device) for _ in range(ga)]
            train.train_step(model, opt, [(x, torch.roll(x, -1, 1)) for x in xs], c, ctx)
        torch.cuda.synchronize()
        measured, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        planned = memory_plan(small, 1, micro, seq, ga, defer_grad_sync=defer)[1]
        rows.append(dict(mode=mode, layers=small.n_layers, params=param_counts(small)[0], micro=micro, grad_accum=ga,
                         planned_gib=planned / GiB, measured_gib=measured / GiB, reserved_gib=reserved / GiB,
                         measured_over_planned=measured / planned, gpu=torch.cuda.get_device_name()))
    torch.distributed.destroy_process_group()
    return rows


def _plan_rows(args, world, seq, gbs):
    """The micro-batches that divide the paper's global batch, in both gradient-sync modes."""
    rows = []
    for mode, defer in MODES.items():
        for micro in (1, 2, 4, 8, 16):
            ga = gbs // (micro * world)
            p = memory_plan(args, world, micro, seq, ga, defer_grad_sync=defer)[1] / GiB
            rows.append(dict(mode=mode, micro=micro, grad_accum=ga, peak_gib=p, card_gib=p + OVERHEAD_GIB,
                             fits_40=p + OVERHEAD_GIB <= 40, fits_80=p + OVERHEAD_GIB <= 80))
    return rows


def bench_memplan(cfg):
    """configs/pmc.py's per-GPU memory (LLaMA-7B, 8 GPUs, micro-batch 4 x 512, grad_accum 4, activation
    checkpointing) from the shapes in both gradient-sync modes, the other micro-batches of its global batch, and the
    largest micro-batch that fits 40 and 80 GiB cards; on a GPU also measured on LLaMA-7B's layers with fewer of
    them."""
    import torch
    from model import preset
    args, world, seq, gbs = preset("llama-7b"), 8, 512, 128
    ga = gbs // (4 * world)
    plans = {mode: memory_plan(args, world, 4, seq, ga, defer_grad_sync=defer) for mode, defer in MODES.items()}
    print(f"LLaMA-7B ({param_counts(args)[0]:,} parameters), FSDP2 over {world} GPUs, bf16, activation "
          f"checkpointing, micro-batch 4 x {seq}, grad_accum {ga}: per-GPU memory by term (GiB)")
    (terms, peak), (terms_d, peak_d) = plans.values()
    print_table([dict(what=w, gib=b / GiB, gib_d=bd / GiB, when=when, when_d=wd)
                 for (w, b, when), (_, bd, wd) in zip(terms, terms_d)] +
                [dict(what="peak allocated", gib=peak / GiB, gib_d=peak_d / GiB, when="", when_d="")],
                [("term", "what", "{}"), ("every micro-step", "gib", "{:.2f}"), ("held", "when", "{}"),
                 ("deferred", "gib_d", "{:.2f}"), ("held", "when_d", "{}")])
    rows = _plan_rows(args, world, seq, gbs)
    print(f"\nthe paper's global batch {gbs} on {world} GPUs (card = allocated peak + {OVERHEAD_GIB:g} GiB overhead)")
    print_table(rows, [("gradient sync", "mode", "{}"), ("micro-batch", "micro", "{}"),
                       ("grad_accum", "grad_accum", "{}"),
                       ("peak GiB", "peak_gib", "{:.1f}"), ("card GiB", "card_gib", "{:.1f}"),
                       ("fits 40", "fits_40", "{}"), ("fits 80", "fits_80", "{}")])
    largest = {f"{card}GiB_grad_accum_{'gt1' if ga > 1 else '1'}{'_deferred' if defer else ''}":
               largest_micro_batch(args, world, seq, ga, card, defer_grad_sync=defer)
               for defer in (False, True) for card in (40, 80) for ga in (2, 1)}
    print("\nlargest micro-batch (memory alone, any global batch): "
          + ", ".join(f"{k}: {v}" for k, v in largest.items()))
    result = {mode: {"terms": [dict(what=w, bytes=b, when=when) for w, b, when in t], "peak_bytes": p}
              for mode, (t, p) in plans.items()}
    result.update(peak_bytes=peak, peak_bytes_deferred=peak_d, global_batch_rows=rows, largest_micro_batch=largest)
    if (cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        result["measured"] = _measure_memplan(cfg, args)
        for m in result["measured"]:
            print(f"\nmeasured on {m['gpu']}, {m['mode']}: LLaMA-7B layers x {m['layers']} ({m['params'] / 1e9:.2f}B "
                  f"parameters), 1 GPU, micro-batch {m['micro']} x {seq}, grad_accum {m['grad_accum']}: peak allocated "
                  f"{m['measured_gib']:.2f} GiB (reserved {m['reserved_gib']:.2f}), plan {m['planned_gib']:.2f} GiB: "
                  f"measured/plan {m['measured_over_planned']:.2f}")
    return result


def main(argv=None):
    cfg = configure(dict(globals()), argv)  # a copy: the defaults stay untouched
    benches = {"corpus": bench_corpus, "shards": bench_shards, "eval": bench_eval, "model": bench_model,
               "fsdp": bench_fsdp, "memplan": bench_memplan}
    if cfg["what"] not in benches:
        raise SystemExit(f"--what={cfg['what']}: known: {', '.join(benches)}")
    info = machine()
    print(f"{info['cpu']} ({info['cores']} cores, load average {info['load_average']} when starting), "
          f"torch {info['torch']}, {info['threads']} threads"
          + (f", GPU {info['gpu']}" if info["gpu"] else "") + "".join(f"\n  {lib}" for lib in info["math_libraries"]))
    results = {"what": cfg["what"], "machine": info, "results": benches[cfg["what"]](cfg)}
    path = cfg["out"] or f"bench_{cfg['what']}{'_compile' if cfg['compile'] else ''}.json"
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
