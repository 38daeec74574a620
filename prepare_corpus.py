"""
Biomedical papers -> flat token memmaps that keep paper boundaries, for train.py's per-paper windows.

    python prepare_corpus.py --source=s2orc --input=s2orc_root --tokenizer=llama/tokenizer.model --out_dir=data/pmc
    python prepare_corpus.py --source=pmc_xml --input newer.tar.gz older.tar.gz --tokenizer=tok.model --out_dir=data/pmc
    python prepare_corpus.py --source text pubtator pubtator --input craft/txt bc5cdr ncbi_disease \
        --tokenizer=tokenizer.model --out_dir=data/biomed

Writes in out_dir: train.bin / val.bin (each document = BOS + tokens + EOS, uint16, or uint32 for a vocabulary over
65,536 ids), train.idx / val.idx (int64 offsets, n_docs + 1 of them: document i is bin[idx[i]:idx[i+1]]) and
meta.json (sizes, tokenizer sha256, sources, and every skipped record counted by reason with its first locations).

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

A document's key is its PMC id ("PMC1234567") where it has one, so that one paper lands in the same split from any
source; a PMC id seen again (NCBI re-issues updated articles in later packages) is skipped and counted: the first
occurrence is kept, so list newer packages first. The split is by document, from a hash of (seed, key):
deterministic, independent of order and of the number of workers.

This process only streams bytes (files, .gz lines, tar members) in input order; a pool of --workers processes
parses them (XML, JSON; corpus_formats.py) and tokenizes, with a bounded number of chunks in flight; results are
written in input order as they arrive, so memory stays flat however large the corpus and the output is
byte-identical for any worker count.
"""
import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import sys
import tarfile
import time
import urllib.request
import zlib
from collections import Counter, deque
from itertools import chain
from multiprocessing import get_context

import numpy as np
from tqdm import tqdm

import corpus_formats as cf
from tokenizer import Tokenizer

SOURCES = ("s2orc", "pmc_xml", "bioc", "jsonl", "text", "pubtator", "pubmedqa")
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
# readers: each yields (key, text, where) for good documents and records bad ones in skips

def read_raw_lines(path, skips):
    """Yield (line_no, bytes) of a .jsonl[.gz] file; a truncated gzip is counted, not raised."""
    opener = gzip.open if path.endswith(".gz") else open
    n = 0
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                yield n, raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        skips.add("truncated_gzip", f"{path}:{n + 1}", f"{type(e).__name__}: {e}")


def read_lines(path, skips):
    """Yield (line_no, str) of a .jsonl[.gz] file; undecodable lines and a truncated gzip are counted, not raised."""
    for n, raw in read_raw_lines(path, skips):
        try:
            yield n, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            skips.add("invalid_utf8", f"{path}:{n}", str(e))


def read_json_lines(path, skips):
    for n, line in read_lines(path, skips):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            skips.add("invalid_json", f"{path}:{n}", str(e))
            continue
        if not isinstance(obj, dict):
            skips.add("invalid_json", f"{path}:{n}", "not a JSON object")
            continue
        yield n, obj


def input_files(path, pattern):
    """The files of an --input: the folder's files matching pattern, sorted, or the file itself."""
    return sorted(glob.glob(os.path.join(path, pattern))) if os.path.isdir(path) else [path]


def read_jsonl(path, skips, text_field="text"):
    for fp in input_files(path, "*.jsonl*"):
        for n, obj in read_json_lines(fp, skips):
            text = obj.get(text_field)
            if not isinstance(text, str):
                skips.add("no_text", f"{fp}:{n}", f"no string field {text_field!r}")
                continue
            yield str(obj.get("id", f"{fp}:{n}")), text, f"{fp}:{n}"


def split_paragraphs(text, doc_chars):
    """Cut a long text into documents of about doc_chars characters, at blank lines (for one-file corpora such as
    WikiText or Tiny Shakespeare, so that each piece gets its own window per epoch like a paper)."""
    docs, cur, size = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        if cur and size + len(para) > doc_chars:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(para)
        size += len(para) + 2
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def read_text(path, skips, doc_chars=0):
    for fp in input_files(path, "*.txt"):
        with open(fp, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            skips.add("invalid_utf8", fp, str(e))
            continue
        stem = os.path.splitext(os.path.basename(fp))[0]
        if doc_chars <= 0:
            yield stem, text.strip(), fp
            continue
        for i, doc in enumerate(split_paragraphs(text.strip(), doc_chars)):
            yield f"{stem}#{i}", doc.strip(), f"{fp}#{i}"


PUBTATOR_LINE = re.compile(r"^(\d+)\|([ta])\|(.*)$")


def read_pubtator(path, skips):
    seen = set()  # PMIDs: one abstract each (NCBI-disease repeats PMID 8528200)

    def flush(doc):
        pmid, title, abstract, where = doc
        if pmid in seen:
            skips.add("duplicate_pmid", where, pmid)
        elif not abstract:
            skips.add("no_abstract", where, pmid)
        else:
            seen.add(pmid)
            return pmid, f"{title}\n{abstract}" if title else abstract, where

    for fp in input_files(path, "*.txt"):
        doc = None  # [pmid, title, abstract, where]
        for n, line in read_lines(fp, skips):
            line = line.rstrip("\r\n")
            m = PUBTATOR_LINE.match(line)
            if m:
                pmid, kind, text = m.groups()
                if doc is not None and doc[0] != pmid:
                    if (out := flush(doc)) is not None:
                        yield out
                    doc = None
                if doc is None:
                    doc = [pmid, "", "", f"{fp}:{n}"]
                doc[1 if kind == "t" else 2] = text.strip()
            elif not line.strip() and doc is not None:  # blank line ends a block
                if (out := flush(doc)) is not None:
                    yield out
                doc = None
        if doc is not None and (out := flush(doc)) is not None:
            yield out


def read_pubmedqa(path, skips, exclude_ids=None):
    with open(path, "rb") as f:
        try:
            records = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: not a PubMedQA JSON file ({e})")
    exclude = set()
    if exclude_ids:
        with open(exclude_ids) as f:
            exclude = set(json.load(f))
    for pmid, r in records.items():
        where = f"{path}:{pmid}"
        if pmid in exclude:
            skips.add("excluded_id", where)
            continue
        contexts = r.get("CONTEXTS") if isinstance(r, dict) else None
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            skips.add("no_text", where, "no CONTEXTS list")
            continue
        parts = contexts + ([r["LONG_ANSWER"]] if isinstance(r.get("LONG_ANSWER"), str) else [])
        yield pmid, "\n".join(parts), where


def s2orc_shards(path):
    """Pair metadata/metadata_N.jsonl[.gz] with pdf_parses/pdf_parses_N.jsonl[.gz] by N."""
    def by_n(pattern):
        out = {}
        for fp in glob.glob(os.path.join(path, pattern)):
            m = re.search(r"_(\d+)\.jsonl(\.gz)?$", os.path.basename(fp))
            if m:
                out[m.group(1)] = fp
        return out
    meta, parses = by_n("metadata/metadata_*.jsonl*"), by_n("pdf_parses/pdf_parses_*.jsonl*")
    if not meta:
        raise SystemExit(f"{path}: no metadata/metadata_N.jsonl[.gz] shards (the S2ORC release layout)")
    missing = sorted(set(meta) - set(parses))
    if missing:
        raise SystemExit(f"{path}: metadata shard(s) {missing} have no pdf_parses/pdf_parses_N.jsonl[.gz] partner")
    return [(meta[k], parses[k]) for k in sorted(meta, key=int)]


def s2orc_text(meta, parse):
    parts = [meta.get("title") or ""]
    abstract = [p.get("text", "") for p in parse.get("abstract") or []]
    if not abstract and meta.get("abstract"):
        abstract = [meta["abstract"]]
    parts += abstract
    section = None
    for p in parse.get("body_text") or []:
        if p.get("section") and p["section"] != section:
            parts.append(p["section"])
        section = p.get("section")
        parts.append(p.get("text", ""))
    return "\n\n".join(s.strip() for s in parts if s and s.strip())


def read_s2orc(path, skips, require_pmc_id=True):
    for meta_fp, parse_fp in s2orc_shards(path):
        keep = {}  # this shard's kept metadata only: memory is per shard, not per corpus
        for n, m in read_json_lines(meta_fp, skips):
            if "paper_id" not in m:
                skips.add("no_paper_id", f"{meta_fp}:{n}")
            elif require_pmc_id and not m.get("pmc_id"):
                skips.add("no_pmc_id", f"{meta_fp}:{n}")
            else:
                keep[str(m["paper_id"])] = (m, n)
        for n, p in read_json_lines(parse_fp, skips):
            pid = str(p.get("paper_id"))
            if pid not in keep:
                continue  # filtered out above (counted there) or a parse without metadata
            m, _ = keep.pop(pid)
            yield cf.pmc_id(m.get("pmc_id")) or pid, s2orc_text(m, p), f"{parse_fp}:{n}"
        for pid, (m, n) in keep.items():
            skips.add("no_pdf_parse", f"{meta_fp}:{n}", pid)


# -----------------------------------------------------------------------------
# the formats of today's downloads: this process only streams their bytes, as units for the worker pool.
# A unit is (kind, payload, where); the workers turn it into documents (see _events).

def tree_files(path, exts):
    """A file itself, or a folder's files ending in exts (any depth), sorted by path."""
    if not os.path.isdir(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files if f.lower().endswith(exts))


NO_PMC = b'"pubmedcentral":null'  # the API's own serialisation; any other spelling is filtered by the workers


def read_s2orc_api(path, skips, require_pmc_id=True):
    files = tree_files(path, (".jsonl", ".gz"))
    if not files:
        raise SystemExit(f"{path}: no S2ORC shards: neither metadata/metadata_N.jsonl[.gz] (the 2020 release) nor "
                         f"*.jsonl[.gz] files (the Datasets API's s2orc shards)")
    for fp in files:
        for n, raw in read_raw_lines(fp, skips):
            if not raw.strip():
                continue
            if require_pmc_id and NO_PMC in raw:  # most records are not PMC papers: not worth a worker's JSON parse
                skips.add("no_pmc_id", f"{fp}:{n}")
                continue
            yield "s2orc_api", raw, f"{fp}:{n}"


TAR_EXT = (".tar.gz", ".tgz", ".tar")
XML_EXT = (".xml", ".nxml", ".xml.gz", ".nxml.gz")


def read_tar(path, skips):
    """The XML members of a .tar[.gz] package, streamed in archive order; a damaged package keeps the members read
    before the damage and counts it, with the member being read."""
    member, last = None, None
    try:
        with (gzip.open if path.lower().endswith("gz") else open)(path, "rb") as f:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    where = f"{path}:{m.name}"
                    if not m.name.lower().endswith((".xml", ".nxml")):
                        skips.add("not_xml_member", where)
                        continue
                    member = m.name
                    data = tar.extractfile(m).read()
                    member, last = None, m.name
                    yield "xml", data, where
            while f.read(1 << 20):  # tar stops at its end blocks: reading on checks the gzip stream is complete
                pass
    except (EOFError, tarfile.TarError, OSError, zlib.error) as e:
        reason = "truncated_tar" if isinstance(e, EOFError) or "unexpected end" in str(e) else "bad_tar"
        where = f"{path}:{member}" if member else f"{path}: after {last}" if last else path
        skips.add(reason, where, f"{type(e).__name__}: {e}")


def read_pmc_xml(path, skips):
    for fp in tree_files(path, XML_EXT + TAR_EXT):
        if fp.lower().endswith(TAR_EXT):
            yield from read_tar(fp, skips)
        else:
            yield "xml_file", fp, fp


def read_bioc(path, skips):
    for fp in tree_files(path, (".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        yield "bioc_file", fp, fp


def read_source(kind, path, skips, args):
    """The units of one --input, in input order."""
    if kind == "s2orc" and not glob.glob(os.path.join(path, "metadata", "metadata_*.jsonl*")):
        return read_s2orc_api(path, skips, args.require_pmc_id)
    if kind == "pmc_xml":
        return read_pmc_xml(path, skips)
    if kind == "bioc":
        return read_bioc(path, skips)
    if kind == "s2orc":
        docs = read_s2orc(path, skips, args.require_pmc_id)
    elif kind == "jsonl":
        docs = read_jsonl(path, skips, args.text_field)
    elif kind == "text":
        docs = read_text(path, skips, args.doc_chars)
    elif kind == "pubtator":
        docs = read_pubtator(path, skips)
    else:
        docs = read_pubmedqa(path, skips, args.exclude_ids)
    return (("doc", (key, text), where) for key, text, where in docs)


class QueuedSkips:
    """The readers' Skips in this process: each skip becomes a unit of the stream, so that it is counted in input
    order with the workers' own (meta.json is then the same for any --workers)."""

    def __init__(self):
        self.queue = deque()

    def add(self, reason, where, detail=""):
        self.queue.append(("skip", (reason, detail), where))


def read_units(sources, inputs, args):
    skips = QueuedSkips()
    for kind, path in zip(sources, inputs):
        for unit in read_source(kind, path, skips, args):
            while skips.queue:
                yield skips.queue.popleft()
            yield unit
        while skips.queue:
            yield skips.queue.popleft()


# -----------------------------------------------------------------------------
# downloads, for users with internet (the small public sets; S2ORC itself needs an API key from AllenAI)

def _gh(repo, commit, path):
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_CDR = "CDR_Data/CDR.Corpus.v010516/"
DOWNLOADS = {
    "bc5cdr": [
        (_gh("cryptoradon/biomedRelExt", "e42e94570138158963ae4696298bf09232071740", _CDR + "CDR_TrainingSet.PubTator.txt"),
         "CDR_TrainingSet.PubTator.txt", "fb00f93b06ca946dac9d909245679493a22ff742c70df2448c4bab2ab1a5140d"),
        (_gh("cryptoradon/biomedRelExt", "c3f40f6f28da6c2f227f487bd3c46a78215a2b2f", _CDR + "CDR_DevelopmentSet.PubTator.txt"),
         "CDR_DevelopmentSet.PubTator.txt", "9e18d8e700168887a7919e62f67ac2ce2357e3f409a48ee992906abdd80fe3e5"),
        (_gh("cryptoradon/biomedRelExt", "c3f40f6f28da6c2f227f487bd3c46a78215a2b2f", _CDR + "CDR_TestSet.PubTator.txt"),
         "CDR_TestSet.PubTator.txt", "a3c48d5f35bdfce20c2371778abedc9fd24d1da092207072e5181ad53c8d0e2f"),
    ],
    "ncbi_disease": [
        (_gh("spyysalo/ncbi-disease", "e5d393083f47e51f81e4ad0da66b8054b7e455e5", "original-data/train/NCBItrainset_corpus.txt"),
         "NCBItrainset_corpus.txt", "f311381b28a6d0f641f57f4a963bb83619c2bdec5cd9caabb1381f894d5db817"),
        (_gh("spyysalo/ncbi-disease", "95a4ae5cca3a34f7715fdc792fc69f851c7b32df", "original-data/devel/NCBIdevelopset_corpus.txt"),
         "NCBIdevelopset_corpus.txt", "02db559974624ae9cbe6cd95d64d953e6926bb63afb6b25b63e53bd8b41a4b55"),
        (_gh("spyysalo/ncbi-disease", "95a4ae5cca3a34f7715fdc792fc69f851c7b32df", "original-data/test/NCBItestset_corpus.txt"),
         "NCBItestset_corpus.txt", "61c8050bf6979ef7b943ec1158dfc03b651ea3367d4c37356f9de4841e85c9a3"),
    ],
    "pubmedqa": [
        (_gh("pubmedqa/pubmedqa", "1f00b98d5cc626844bf8c4ca513b6e62c40071ec", "data/ori_pqal.json"),
         "ori_pqal.json", "8b3276be8942ebbd77f3ddcda12c1749bf0e490045a736fd8438ee40cf37a41d"),
        (_gh("pubmedqa/pubmedqa", "3e7616d288b52edaf38f5fd5c59821c7806bde86", "data/test_ground_truth.json"),
         "test_ground_truth.json", "939fe566f09017d13b1ca64d2ddfee0bc2374b366048152997669cccedc44d51"),
    ],
}


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def download(name, dest, urlopen=urllib.request.urlopen):
    """Fetch a small public set into dest (checked by sha256); offline, say exactly what to fetch and where."""
    if name not in DOWNLOADS:
        raise SystemExit(f"--download={name}: unknown set; known: {', '.join(DOWNLOADS)}")
    os.makedirs(dest, exist_ok=True)
    for url, fname, sha in DOWNLOADS[name]:
        target = os.path.join(dest, fname)
        if os.path.isfile(target) and sha256_file(target) == sha:
            continue
        try:
            with urlopen(url, timeout=60) as r:
                data = r.read()
        except OSError as e:  # URLError, timeouts, no network at all
            todo = "\n".join(f"  {u}\n    -> {os.path.join(dest, f)}" for u, f, _ in DOWNLOADS[name])
            raise SystemExit(f"could not download {name} ({type(e).__name__}: {e}); this machine looks offline.\n"
                             f"Fetch these files by hand and put them here, then run again without --download:\n{todo}")
        if hashlib.sha256(data).hexdigest() != sha:
            raise SystemExit(f"{url}: sha256 mismatch (expected {sha}); not saved")
        with open(target + ".tmp", "wb") as f:
            f.write(data)
        os.replace(target + ".tmp", target)
    print(f"downloaded {name} into {dest}")
    return dest


# -----------------------------------------------------------------------------
# parsing and tokenizing in a pool, writing in order

_tok, _dtype, _opts = None, None, None


def _init_worker(tokenizer_path, dtype, opts):
    global _tok, _dtype, _opts
    _tok, _dtype, _opts = Tokenizer(tokenizer_path), dtype, opts


def _encode_chunk(texts):
    """-> (all documents' ids concatenated, per-document lengths): numpy pickles far faster than lists of ints."""
    # BOS as the tokenizer's convention has it (LLaMA yes, SmolLM2 no); EOS always ends a document
    ids = _tok.encode_batch(texts, bos=_tok.add_bos, eos=True, num_threads=1)  # parallelism comes from the processes
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    return np.fromiter(chain.from_iterable(ids), dtype=_dtype, count=int(lengths.sum())), lengths


def _events(kind, payload, where):
    """One unit -> events ("doc", key, text, where) / ("skip", reason, where, detail)."""
    if kind == "doc":
        return [("doc", *payload, where)]
    if kind == "skip":
        return [("skip", payload[0], where, payload[1])]
    if kind.endswith("_file"):  # loose files are read here, not in the main process
        kind = kind[:-len("_file")]
        try:
            with (gzip.open if payload.endswith(".gz") else open)(payload, "rb") as f:
                payload = f.read()
        except (OSError, EOFError, zlib.error) as e:
            return [("skip", "unreadable_file", where, f"{type(e).__name__}: {e}")]
    try:
        if kind == "xml":
            return list(cf.jats_events(payload, where, _opts["require_pmc_id"], _opts["skip_article_types"]))
        if kind == "s2orc_api":
            return list(cf.s2orc_api_events(payload, where, _opts["require_pmc_id"]))
        return list(cf.bioc_events(payload, where, _opts["require_pmc_id"]))
    except Exception as e:  # pathological input (nesting deeper than the recursion limit...) ends no long run
        return [("skip", "parse_error", where, f"{type(e).__name__}: {e}")]


def _work_chunk(units):
    """Parse and tokenize a chunk of units -> (events without texts, ids concatenated, lengths), in unit order."""
    events, texts = [], []
    for unit in units:
        for ev in _events(*unit):
            if ev[0] == "doc" and not ev[2].strip():
                ev = ("skip", "empty", ev[3], "")
            if ev[0] == "doc":
                texts.append(ev[2])
                ev = ("doc", ev[1], ev[3])
            events.append(ev)
    return (events, *_encode_chunk(texts))


def split_of(key, seed, val_fraction):
    """'val' for a deterministic val_fraction of document keys, from a hash of (seed, key)."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return "val" if int.from_bytes(h, "little") / 2**64 < val_fraction else "train"


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


def processed_chunks(units, tokenizer_path, dtype, workers, opts, chunk_units=64):
    """Yield _work_chunk's results in input order, at most 4 * workers chunks in flight (the units themselves are
    not kept here once sent)."""
    if workers <= 1:
        _init_worker(tokenizer_path, dtype, opts)
        for chunk in chunked(units, chunk_units):
            yield _work_chunk(chunk)
        return
    with get_context("spawn").Pool(workers, _init_worker, (tokenizer_path, dtype, opts)) as pool:
        inflight = deque()
        for chunk in chunked(units, chunk_units):
            inflight.append(pool.apply_async(_work_chunk, (chunk,)))
            if len(inflight) >= 4 * workers:
                yield inflight.popleft().get()
        while inflight:
            yield inflight.popleft().get()


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


def prepare(args):
    sources = args.source if len(args.source) > 1 else args.source * len(args.input)
    if len(sources) != len(args.input):
        raise SystemExit(f"--source: give one kind for all inputs or one per input ({len(args.input)} inputs)")
    for kind, path in zip(sources, args.input):
        if kind not in SOURCES:
            raise SystemExit(f"--source={kind}: unknown; known: {', '.join(SOURCES)}")
        if not os.path.exists(path):
            raise SystemExit(f"--input {path}: no such file or folder")
    if not os.path.exists(args.tokenizer):
        raise SystemExit(f"--tokenizer {args.tokenizer}: no such file or folder (a tokenizer.model, a tokenizer.json, "
                         "an HF model folder holding one, or a .gguf model file)")
    tok = Tokenizer(args.tokenizer)  # a bad tokenizer fails here, before any work
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    os.makedirs(args.out_dir, exist_ok=True)

    skips, seen = Skips(), SeenPMC()
    units = read_units(sources, args.input, args)
    opts = {"require_pmc_id": args.require_pmc_id, "skip_article_types": frozenset(args.skip_article_types)}
    paths = {s: os.path.join(args.out_dir, s) for s in ("train", "val")}
    bins = {s: open(p + ".bin.tmp", "wb") for s, p in paths.items()}
    idxs = {s: open(p + ".idx.tmp", "wb") for s, p in paths.items()}
    offset = {s: 0 for s in paths}
    ndocs = {s: 0 for s in paths}
    for f in idxs.values():
        f.write(np.zeros(1, np.int64).tobytes())
    t0 = time.time()
    bar = tqdm(unit="doc", desc="parsing + tokenizing", dynamic_ncols=True, disable=args.quiet)
    for events, ids, lengths in processed_chunks(units, tok.path, dtype, args.workers, opts):
        ends, j = np.cumsum(lengths).tolist(), 0
        for ev in events:
            if ev[0] == "skip":
                skips.add(*ev[1:])
                continue
            _, key, where = ev
            end, n = ends[j], int(lengths[j])
            j += 1
            bar.update(1)
            if n - 1 - tok.add_bos < args.min_tokens:  # text tokens: not BOS (if any) or EOS
                skips.add("too_short", where, f"{n - 2} tokens")
                continue
            if not seen.add(key):  # after the checks above: the first occurrence that is a document wins
                skips.add("duplicate_pmc_id", where, key)
                continue
            s = split_of(key, args.seed, args.val_fraction)
            bins[s].write(ids[end - n:end].tobytes())
            offset[s] += n
            ndocs[s] += 1
            idxs[s].write(np.int64(offset[s]).tobytes())
        bar.set_postfix(tokens=f"{sum(offset.values()):,}", refresh=False)
    bar.close()
    for f in (*bins.values(), *idxs.values()):
        f.close()
    elapsed = time.time() - t0
    ntok = sum(offset.values())
    meta = {
        "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
        "add_bos": tok.add_bos,
        "splits": {s: {"documents": ndocs[s], "tokens": offset[s]} for s in paths},
        "tokenizer": os.path.abspath(tok.path), "tokenizer_sha256": sha256_file(tok.path),
        "sources": [{"kind": k, "path": os.path.abspath(p)} for k, p in zip(sources, args.input)],
        "skipped": dict(sorted(skips.counts.items())), "skipped_examples": skips.examples,
        "val_fraction": args.val_fraction, "seed": args.seed, "min_tokens": args.min_tokens,
        "require_pmc_id": args.require_pmc_id, "skip_article_types": sorted(args.skip_article_types),
        "elapsed_s": round(elapsed, 2),
    }
    if dtype == np.uint32:
        meta["note"] = f"vocab_size {tok.vocab_size} > 65,536: token ids stored as uint32"
    for s, p in paths.items():  # rename only when everything is written
        os.replace(p + ".bin.tmp", p + ".bin")
        os.replace(p + ".idx.tmp", p + ".idx")
    with open(os.path.join(args.out_dir, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(os.path.join(args.out_dir, "meta.json.tmp"), os.path.join(args.out_dir, "meta.json"))
    for reason, n in sorted(skips.counts.items()):
        print(f"skipped {n} ({reason}), first: {'; '.join(skips.examples[reason][:3])}", file=sys.stderr)
    print(f"done: {ndocs['train']:,} train + {ndocs['val']:,} val documents, {ntok:,} tokens, "
          f"{sum(skips.counts.values()):,} skipped, {ntok / max(elapsed, 1e-9):,.0f} tokens/s -> {args.out_dir}")
    return meta


def load_split(data_dir, split):
    """(tokens memmap, offsets array) of a prepared split: document i is tokens[idx[i]:idx[i+1]]."""
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    tokens = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.dtype(meta["dtype"]), mode="r") \
        if meta["splits"][split]["tokens"] else np.zeros(0, dtype=np.dtype(meta["dtype"]))
    idx = np.fromfile(os.path.join(data_dir, f"{split}.idx"), dtype=np.int64)
    return tokens, idx


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", nargs="+", required=True, help=f"one of {', '.join(SOURCES)} (or one per input)")
    p.add_argument("--input", nargs="+", required=True, help="files or folders, per source")
    p.add_argument("--tokenizer", required=True, help="tokenizer.model file or a folder holding one")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.download:
        download(args.download, args.input[0])
    return prepare(args)


if __name__ == "__main__":
    main()
