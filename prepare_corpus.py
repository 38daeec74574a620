"""
Biomedical papers -> flat token memmaps that keep paper boundaries, for train.py's per-paper windows.

    python prepare_corpus.py --source=s2orc --input=s2orc_root --tokenizer=llama/tokenizer.model --out_dir=data/pmc
    python prepare_corpus.py --source=pmc_xml --input newer.tar.gz older.tar.gz --tokenizer=tok.model --out_dir=data/pmc
    python prepare_corpus.py --source text pubtator pubtator --input craft/txt bc5cdr ncbi_disease \
        --tokenizer=tokenizer.model --out_dir=data/biomed

Writes in out_dir: train.bin / val.bin (each document = BOS + tokens + EOS, uint16, or uint32 for a vocabulary over
65,536 ids), train.idx / val.idx (int64 offsets, n_docs + 1 of them: document i is bin[idx[i]:idx[i+1]]) and
meta.json (sizes, tokenizer sha256, sources, and every skipped record counted by reason with its first locations);
corpus_data.py writes that layout and reads it back for train.py (load_split).

Sources (one --source for all inputs, or one per input):
  s2orc     S2ORC, either schema, told apart by the input's layout:
            - the 2020 release: metadata/metadata_N.jsonl[.gz] + pdf_parses/pdf_parses_N.jsonl[.gz], joined by
              paper_id shard by shard; kept when the metadata has a pmc_id;
            - the Semantic Scholar Datasets API (2023+): s2orc shards (*.jsonl[.gz], or any .gz), one record per
              paper, text rebuilt from content.text and its annotation spans; kept when externalids.pubmedcentral is
              set. PMC-LLaMA's filter; --require_pmc_id=False keeps all.
            Text = title, abstract, then body paragraphs under their section headings.
  pmc_xml   PMC Open Access JATS/NLM XML: .xml/.nxml files (single articles, EFetch <pmc-articleset>, OAI-PMH
            GetRecord), and bulk packages (.tar.gz, streamed member by member, never extracted); a folder is walked.
            Text = title, abstracts, body sections with their titles; no tables, figures, formulas, references or
            supplementary material. Article types in --skip_article_types are skipped (counted by type).
  bioc      PMC BioC JSON (BioC API, PubTator): title, abstract, body passages with section titles.
  jsonl     one JSON object per line with a text field (--text_field)
  text      a folder of .txt files, one document per file
  pubtator  PubTator files (PMID|t|title, PMID|a|abstract; annotation lines ignored); a repeated PMID is skipped
  pubmedqa  PubMedQA ori_pqal.json / ori_pqaa.json contexts + conclusion (it is also a test set: --exclude_ids=
            test_ground_truth.json leaves the test questions out, or leave the source out altogether)
  wikiextractor  WikiExtractor's output from a Wikipedia dump (text/AA/wiki_00, ...): one document per page, the
            <doc> lines stripped; title-only pages (redirects) skipped and counted. General text, for replay

A document's key is its PMC id ("PMC1234567") where it has one, so that one paper lands in the same split from any
source; a PMC id seen again (NCBI re-issues updated articles in later packages) is skipped and counted: the first
occurrence is kept, so list newer packages first. The split is by document, from a hash of (seed, key):
deterministic, independent of order and of the number of workers.

This process only streams bytes (files, .gz lines, tar members) in input order (corpus_sources.py, which maps each
source to its reader and parser); a pool of --workers processes parses them (XML, JSON; corpus_formats.py) and
tokenizes, with a bounded number of chunks in flight; results are written in input order as they arrive, so memory
stays flat however large the corpus and the output is byte-identical for any worker count.
"""
import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
from array import array
from collections import Counter, deque
from itertools import chain
from multiprocessing import get_context

import numpy as np
from tqdm import tqdm

import corpus_formats as cf
import corpus_sources as cs
from corpus_data import SPLITS, CorpusWriter, load_split, token_dtype
from download import DOWNLOADS, download, sha256_file
from tokenizer import Tokenizer

N_EXAMPLES = 5  # first locations kept per skip reason


class Skips:
    """Counts skipped records by reason, keeping the first few locations (file:line) of each."""

    def __init__(self):
        self.counts, self.examples = Counter(), {}

    def add(self, reason, where, detail=""):
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < N_EXAMPLES:
            ex.append(f"{where}{': ' + detail if detail else ''}")


# -----------------------------------------------------------------------------
# parsing and tokenizing in a pool, in input order

_tok, _dtype, _filters = None, None, None


def _init_worker(tokenizer_path, dtype, filters):
    global _tok, _dtype, _filters
    _tok, _dtype, _filters = Tokenizer(tokenizer_path), dtype, filters


def _encode_chunk(texts):
    """-> (all documents' ids concatenated, per-document lengths): numpy pickles far faster than lists of ints."""
    # BOS as the tokenizer's convention has it (LLaMA yes, SmolLM2 no); EOS always ends a document
    ids = _tok.encode_batch(texts, bos=_tok.add_bos, eos=True, num_threads=1)  # parallelism comes from the processes
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    return np.fromiter(chain.from_iterable(ids), dtype=_dtype, count=int(lengths.sum())), lengths


def _work_chunk(units):
    """Parse and tokenize a chunk of units -> (events without texts, ids concatenated, lengths), in unit order."""
    events, texts = [], []
    for unit in units:
        for ev in cs.parse_unit(*unit, _filters):
            if ev[0] == "doc" and not ev[2].strip():
                ev = ("skip", "empty", ev[3], "")
            if ev[0] == "doc":
                texts.append(ev[2])
                ev = ("doc", ev[1], ev[3])
            events.append(ev)
    return (events, *_encode_chunk(texts))


def chunked(units, n, max_bytes=4 << 20):
    """Chunks of n units, or fewer when their payloads reach max_bytes (tar members, JSON lines)."""
    buf, size = [], 0
    for u in units:
        buf.append(u)
        size += len(u[1]) if isinstance(u[1], bytes) else 0
        if len(buf) == n or size >= max_bytes:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


def processed_chunks(units, tokenizer_path, dtype, workers, filters, chunk_units=64):
    """Yield _work_chunk's results in input order, at most 4 * workers chunks in flight (the units themselves are
    not kept here once sent)."""
    if workers <= 1:
        _init_worker(tokenizer_path, dtype, filters)
        for chunk in chunked(units, chunk_units):
            yield _work_chunk(chunk)
        return
    with get_context("spawn").Pool(workers, _init_worker, (tokenizer_path, dtype, filters)) as pool:
        inflight = deque()
        for chunk in chunked(units, chunk_units):
            inflight.append(pool.apply_async(_work_chunk, (chunk,)))
            if len(inflight) >= 4 * workers:
                yield inflight.popleft().get()
        while inflight:
            yield inflight.popleft().get()


# -----------------------------------------------------------------------------
# keeping, splitting and writing documents

def split_of(key, seed, val_fraction):
    """'val' for a deterministic val_fraction of document keys, from a hash of (seed, key)."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return "val" if int.from_bytes(h, "little") / 2**64 < val_fraction else "train"


PMC_KEY = re.compile(r"PMC[1-9]\d{0,8}")  # cf.pmc_id's normal form


class SeenPMC:
    """PMC ids already written, one bit each: PMC ids are dense numbers (under 13M in 2026: 1.6 MB)."""

    def __init__(self):
        self.bits = bytearray()

    def add(self, key):
        """False when key is a PMC id seen before; True (and remembered) otherwise, and for keys of other kinds."""
        if not PMC_KEY.fullmatch(key):
            return True
        n = int(key[3:])
        i, bit = n >> 3, 1 << (n & 7)
        if i >= len(self.bits):
            self.bits.extend(bytes(i + 1 - len(self.bits) + (1 << 16)))
        if self.bits[i] & bit:
            return False
        self.bits[i] |= bit
        return True


def with_ids(events, ids, lengths):
    """A processed chunk's events in order, each document with its token ids: ("doc", key, where, ids)."""
    ends = np.cumsum(lengths).tolist()
    j = 0
    for ev in events:
        if ev[0] == "doc":
            ev = (*ev, ids[ends[j] - int(lengths[j]):ends[j]])
            j += 1
        yield ev


class ShardLog:
    """What a merge needs of a shard (--shard=K/N): each input file's documents per split, in order, and each
    document's PMC number (0: none), for the duplicate rule across shards."""

    def __init__(self):
        self.files, self.keys = [], {s: array("q") for s in SPLITS}

    def file(self, input_and_file):
        self.files.append([*input_and_file, 0, 0])  # input number, file number, train documents, val documents

    def add(self, split, key):
        self.files[-1][2 + SPLITS.index(split)] += 1
        self.keys[split].append(int(key[3:]) if PMC_KEY.fullmatch(key) else 0)

    def write(self, folder):
        for s in SPLITS:
            np.frombuffer(self.keys[s], dtype=np.int64).tofile(os.path.join(folder, f"{s}.keys"))
        with open(os.path.join(folder, "files.json"), "w") as f:
            json.dump(self.files, f)


def write_documents(chunks, writer, skips, tok, args, log=None):
    """Every processed chunk's documents into the writer's splits; the too short and the PMC ids seen before are
    counted in skips instead, like the records the readers and parsers skipped. log: a ShardLog to keep."""
    seen = SeenPMC()
    bar = tqdm(unit="doc", desc="parsing + tokenizing", dynamic_ncols=True, disable=args.quiet)
    for chunk in chunks:
        for ev in with_ids(*chunk):
            if ev[0] == "skip":
                skips.add(*ev[1:])
                continue
            if ev[0] == "file":
                if log is not None:
                    log.file(ev[1])
                continue
            _, key, where, ids = ev
            n = len(ids)
            bar.update(1)
            if n - 1 - tok.add_bos < args.min_tokens:  # text tokens: not BOS (if any) or EOS
                skips.add("too_short", where, f"{n - 2} tokens")
            elif not seen.add(key):  # after the check above: the first occurrence that is a document wins
                skips.add("duplicate_pmc_id", where, key)
            else:
                split = split_of(key, args.seed, args.val_fraction)
                writer.add(split, ids)
                if log is not None:
                    log.add(split, key)
        bar.set_postfix(tokens=f"{sum(writer.tokens.values()):,}", refresh=False)
    bar.close()


# -----------------------------------------------------------------------------
# the run

def check_args(args):
    """The source of each input, once every --source, --input and --tokenizer is known to be usable."""
    sources = args.source if len(args.source) > 1 else args.source * len(args.input)
    if len(sources) != len(args.input):
        raise SystemExit(f"--source: give one kind for all inputs or one per input ({len(args.input)} inputs)")
    for kind, path in zip(sources, args.input):
        if kind not in cs.SOURCES:
            raise SystemExit(f"--source={kind}: unknown; known: {', '.join(cs.SOURCES)}")
        if not os.path.exists(path):
            raise SystemExit(f"--input {path}: no such file or folder")
    if not os.path.exists(args.tokenizer):
        raise SystemExit(f"--tokenizer {args.tokenizer}: no such file or folder (a tokenizer.model, a tokenizer.json, "
                         "an HF model folder holding one, or a .gguf model file)")
    return sources


def source_options(args):
    filters = cf.Filters(args.require_pmc_id, frozenset(args.skip_article_types))
    return cs.Options(filters, args.text_field, args.doc_chars, args.exclude_ids)


def corpus_meta(tok, writer, sources, args, skips, elapsed):
    meta = {
        "vocab_size": tok.vocab_size, "dtype": np.dtype(writer.dtype).name, "bos_id": tok.bos_id,
        "eos_id": tok.eos_id, "add_bos": tok.add_bos,
        "splits": {s: {"documents": writer.documents[s], "tokens": writer.tokens[s]} for s in writer.paths},
        "tokenizer": os.path.abspath(tok.path), "tokenizer_sha256": sha256_file(tok.path),
        "sources": [{"kind": k, "path": os.path.abspath(p)} for k, p in zip(sources, args.input)],
        "skipped": dict(sorted(skips.counts.items())), "skipped_examples": skips.examples,
        "val_fraction": args.val_fraction, "seed": args.seed, "min_tokens": args.min_tokens,
        "require_pmc_id": args.require_pmc_id, "skip_article_types": sorted(args.skip_article_types),
        "elapsed_s": round(elapsed, 2),
    }
    if writer.dtype == np.uint32:
        meta["note"] = f"vocab_size {tok.vocab_size} > 65,536: token ids stored as uint32"
    return meta


def report(meta, skips, out_dir):
    for reason, n in sorted(skips.counts.items()):
        print(f"skipped {n} ({reason}), first: {'; '.join(skips.examples[reason][:3])}", file=sys.stderr)
    ndocs = {s: v["documents"] for s, v in meta["splits"].items()}
    ntok = sum(v["tokens"] for v in meta["splits"].values())
    print(f"done: {ndocs['train']:,} train + {ndocs['val']:,} val documents, {ntok:,} tokens, "
          f"{sum(skips.counts.values()):,} skipped, {ntok / max(meta['elapsed_s'], 1e-9):,.0f} tokens/s -> {out_dir}")


def prepare(args):
    sources = check_args(args)
    tok = Tokenizer(args.tokenizer)  # a bad tokenizer fails here, before any work
    shard = parse_shard(args.shard)
    out_dir = shard_dir(args.out_dir, *shard) if shard else args.out_dir
    if shard and os.path.isfile(os.path.join(out_dir, "meta.json")):
        print(f"shard {shard[0]}/{shard[1]} is done already ({out_dir}): nothing to do")
        return json.load(open(os.path.join(out_dir, "meta.json")))
    work_dir = out_dir + ".tmp" if shard else out_dir  # a shard is a whole folder, renamed when complete
    if shard:
        shutil.rmtree(work_dir, ignore_errors=True)  # what a killed run of this shard left: it starts over
    writer = CorpusWriter(work_dir, token_dtype(tok.vocab_size))
    skips, t0, log = Skips(), time.time(), ShardLog() if shard else None
    opts = source_options(args)
    units = cs.read_units(sources, args.input, opts, shard or (0, 1))
    chunks = processed_chunks(units, tok.path, writer.dtype, args.workers, opts.filters)
    write_documents(chunks, writer, skips, tok, args, log)
    meta = corpus_meta(tok, writer, sources, args, skips, time.time() - t0)
    if shard:
        meta["shard"] = list(shard)
        log.write(work_dir)
    writer.publish(meta)  # renamed only when everything is written
    if shard:
        os.replace(work_dir, out_dir)
    report(meta, skips, out_dir)
    return meta


# -----------------------------------------------------------------------------
# shards: --shard=K/N prepares every N-th input file from the K-th; --merge joins the N shards as one run over all

def parse_shard(spec):
    """'K/N' -> (K, N); '' -> SLURM's array task (relative to its first id) when in an array job, else None."""
    if not spec and "SLURM_ARRAY_TASK_ID" in os.environ:
        first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0))
        spec = f"{int(os.environ['SLURM_ARRAY_TASK_ID']) - first}/{os.environ['SLURM_ARRAY_TASK_COUNT']}"
    if not spec:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise SystemExit(f"--shard={spec}: expected K/N with 0 <= K < N")
    return int(m.group(1)), int(m.group(2))


def shard_dir(out_dir, k, n):
    return os.path.join(out_dir, f"shard-{k:05d}-of-{n:05d}")


SAME_IN_EVERY_SHARD = ("tokenizer_sha256", "dtype", "sources", "seed", "val_fraction", "min_tokens", "require_pmc_id",
                       "skip_article_types", "vocab_size", "bos_id", "eos_id", "add_bos")


def shard_metas(out_dir):
    """The N complete shards of out_dir, checked to be one run's: -> [meta], in shard order."""
    folders = sorted(f for f in glob.glob(os.path.join(out_dir, "shard-*-of-*")) if not f.endswith(".tmp"))
    if not folders:
        raise SystemExit(f"--merge: no shard-K-of-N folders in {out_dir} (prepare_corpus.py --shard=K/N writes them)")
    metas = []
    for f in folders:
        if not os.path.isfile(os.path.join(f, "meta.json")):
            raise SystemExit(f"--merge: {f} is not complete (no meta.json): rerun its --shard")
        metas.append(json.load(open(os.path.join(f, "meta.json"))))
    n = metas[0]["shard"][1]
    for f, m in zip(folders, metas):
        if m["shard"][1] != n:
            raise SystemExit(f"--merge: {f} is one of {m['shard'][1]} shards, {folders[0]} one of {n}: one N per run")
        bad = [k for k in SAME_IN_EVERY_SHARD if m[k] != metas[0][k]]
        if bad:
            raise SystemExit(f"--merge: {f} differs from {folders[0]} in {', '.join(bad)} (another tokenizer or "
                             "other settings): prepare every shard with the same command")
    missing = sorted(set(range(n)) - {m["shard"][0] for m in metas})
    if missing:
        raise SystemExit(f"--merge: shard(s) {', '.join(map(str, missing))} of {n} missing in {out_dir}: run them")
    return metas


def merged_documents(out_dir, n):
    """Every shard's documents in one run's order -> (split, token ids, PMC number or 0), streamed: input files in
    order (file j of an input is shard j % N's), each file's documents as its shard wrote them."""
    shards = []
    for k in range(n):
        d = shard_dir(out_dir, k, n)
        files = json.load(open(os.path.join(d, "files.json")))
        splits = {s: (*load_split(d, s), np.fromfile(os.path.join(d, f"{s}.keys"), dtype=np.int64)) for s in SPLITS}
        shards.append((files, splits))
    order = sorted((f[0], f[1], k, f[2:]) for k, (files, _) in enumerate(shards) for f in files)
    cursor = [dict.fromkeys(SPLITS, 0) for _ in range(n)]
    for _, _, k, counts in order:
        for s, count in zip(SPLITS, counts):
            tokens, idx, keys = shards[k][1][s]
            for c in range(cursor[k][s], cursor[k][s] + count):
                yield s, tokens[idx[c]:idx[c + 1]], int(keys[c])
            cursor[k][s] += count


def merge(args):
    """The N shards of out_dir as one corpus in out_dir, byte for byte what one run over all inputs writes: the
    duplicate rule applied across shards (the first occurrence in input order kept), the skips of all summed."""
    t0 = time.time()
    metas = shard_metas(args.out_dir)
    writer = CorpusWriter(args.out_dir, np.dtype(metas[0]["dtype"]).type)
    seen, dups = SeenPMC(), 0
    for split, ids, pmc in tqdm(merged_documents(args.out_dir, len(metas)), unit="doc", desc="merging",
                                disable=args.quiet):
        if pmc and not seen.add(f"PMC{pmc}"):
            dups += 1  # a later copy of a paper that another shard's earlier file holds
            continue
        writer.add(split, ids)
    skipped = Counter()
    for m in metas:
        skipped.update(m["skipped"])
    skipped["duplicate_pmc_id"] += dups
    meta = {**{k: metas[0][k] for k in SAME_IN_EVERY_SHARD}, "tokenizer": metas[0]["tokenizer"],
            "splits": {s: {"documents": writer.documents[s], "tokens": writer.tokens[s]} for s in SPLITS},
            "skipped": dict(sorted((k, v) for k, v in skipped.items() if v)),
            "skipped_examples": {r: [e for m in metas for e in m["skipped_examples"].get(r, [])][:N_EXAMPLES]
                                 for r in skipped if skipped[r]},
            "merged_shards": len(metas), "merge_duplicates": dups, "elapsed_s": round(time.time() - t0, 2),
            "shard_elapsed_s": [m["elapsed_s"] for m in metas]}
    writer.publish(meta)
    print(f"merged {len(metas)} shards: {writer.documents['train']:,} train + {writer.documents['val']:,} val "
          f"documents, {sum(writer.tokens.values()):,} tokens, {dups:,} duplicates across shards -> {args.out_dir}")
    return meta


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", nargs="+", help=f"one of {', '.join(cs.SOURCES)} (or one per input)")
    p.add_argument("--input", nargs="+", help="files or folders, per source")
    p.add_argument("--tokenizer", help="tokenizer.model file or a folder holding one")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--val_fraction", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 1))
    p.add_argument("--min_tokens", type=int, default=1, help="skip documents with fewer tokens (counted)")
    p.add_argument("--text_field", default="text", help="jsonl: the field holding the text")
    p.add_argument("--doc_chars", type=int, default=0,
                   help="text: cut each file into documents of about this many characters at blank lines (0: whole)")
    p.add_argument("--require_pmc_id", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                   help="s2orc, pmc_xml, bioc: keep only papers with a PubMed Central id (the paper's filter)")
    p.add_argument("--skip_article_types", type=lambda s: [t.strip().lower() for t in s.split(",") if t.strip()],
                   default=list(cf.NOT_PAPERS),
                   help=f"pmc_xml: article-type values that are not papers, comma-separated ('' keeps all); "
                        f"default {','.join(cf.NOT_PAPERS)}")
    p.add_argument("--exclude_ids", help="pubmedqa: JSON file whose keys are ids to leave out (test_ground_truth.json)")
    p.add_argument("--download", help=f"first fetch a public set into the first --input folder: {', '.join(DOWNLOADS)}")
    p.add_argument("--shard", default="", help="K/N: prepare every N-th input file from the K-th into "
                   "out_dir/shard-K-of-N (default: SLURM's array task when in an array job)")
    p.add_argument("--merge", action="store_true", help="join out_dir's N shards into out_dir (no inputs needed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not args.merge and not (args.source and args.input and args.tokenizer):
        p.error("--source, --input and --tokenizer are required (but for --merge)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    if args.download:
        download(args.download, args.input[0])
    return prepare(args)


if __name__ == "__main__":
    main()
