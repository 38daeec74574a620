"""
The sources prepare_corpus.py reads: each --source name -> the reader that streams an --input in this process and the
parser that the worker pool applies to what it streams. Adding a format is one parser and one entry in SOURCES.

A reader yields units (kind, payload, where), in input order, and never raises on bad records (it counts them):
    ("doc", (key, text), where)      a document the reader parsed itself: formats that are cheap to parse or that need
                                     state across records (a PubTator PMID seen before, the S2ORC 2020 release's join)
    (source, bytes, where)           raw bytes (a JSON line, a tar member) for SOURCES[source].parse, in a worker
    (source, path, where)            a loose file, read by the worker and then parsed likewise
    ("skip", (reason, detail), where)  a bad record (see QueuedSkips)
A parser (corpus_formats.py) takes (bytes, where, filters) and yields ("doc", key, text, where) and
("skip", reason, where, detail) events. A document's key is its PMC id ("PMC1234567") where it has one.
"""
import glob
import gzip
import json
import os
import re
import tarfile
import zlib
from collections import deque, namedtuple
from dataclasses import dataclass, field

import corpus_formats as cf


@dataclass(frozen=True)
class Options:
    """Every source's options, one object for all readers (the parsers get .filters)."""
    filters: cf.Filters = field(default_factory=cf.Filters)
    text_field: str = "text"  # jsonl
    doc_chars: int = 0  # text: cut a file into documents of about this many characters (0: one document per file)
    exclude_ids: str = None  # pubmedqa: a JSON file whose keys are ids to leave out


def doc(key, text, where):
    return "doc", (key, text), where


# -----------------------------------------------------------------------------
# lines and files

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


def tree_files(path, exts):
    """A file itself, or a folder's files ending in exts (any depth), sorted by path."""
    if not os.path.isdir(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files if f.lower().endswith(exts))


def read_file(path):
    """A loose file's bytes, gunzipped when it ends in .gz."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        return f.read()


# -----------------------------------------------------------------------------
# formats parsed here, in this process

def read_jsonl(fp, skips, opts=Options()):
    for n, obj in read_json_lines(fp, skips):
        text = obj.get(opts.text_field)
        if not isinstance(text, str):
            skips.add("no_text", f"{fp}:{n}", f"no string field {opts.text_field!r}")
            continue
        yield doc(str(obj.get("id", f"{fp}:{n}")), text, f"{fp}:{n}")


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


def read_text(fp, skips, opts=Options()):
    with open(fp, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        skips.add("invalid_utf8", fp, str(e))
        return
    stem = os.path.splitext(os.path.basename(fp))[0]
    if opts.doc_chars <= 0:
        yield doc(stem, text.strip(), fp)
        return
    for i, piece in enumerate(split_paragraphs(text.strip(), opts.doc_chars)):
        yield doc(f"{stem}#{i}", piece.strip(), f"{fp}#{i}")


PUBTATOR_LINE = re.compile(r"^(\d+)\|([ta])\|(.*)$")


def pubtator_blocks(fp, skips):
    """A PubTator file's blocks, one per PMID: [pmid, title, abstract, where]. A block ends at a blank line or where
    the next PMID starts; annotation lines are ignored."""
    block = None
    for n, line in read_lines(fp, skips):
        line = line.rstrip("\r\n")
        m = PUBTATOR_LINE.match(line)
        if m:
            pmid, kind, text = m.groups()
            if block is not None and block[0] != pmid:
                yield block
                block = None
            if block is None:
                block = [pmid, "", "", f"{fp}:{n}"]
            block[1 if kind == "t" else 2] = text.strip()
        elif not line.strip() and block is not None:
            yield block
            block = None
    if block is not None:
        yield block


def read_pubtator(path, skips, opts=Options()):
    seen = set()  # PMIDs: one abstract each (NCBI-disease repeats PMID 8528200)
    for fp in input_files(path, "*.txt"):
        for pmid, title, abstract, where in pubtator_blocks(fp, skips):
            if pmid in seen:
                skips.add("duplicate_pmid", where, pmid)
            elif not abstract:
                skips.add("no_abstract", where, pmid)
            else:
                seen.add(pmid)
                yield doc(pmid, f"{title}\n{abstract}" if title else abstract, where)


def read_pubmedqa(path, skips, opts=Options()):
    with open(path, "rb") as f:
        try:
            records = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: not a PubMedQA JSON file ({e})")
    exclude = set()
    if opts.exclude_ids:
        with open(opts.exclude_ids) as f:
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
        yield doc(pmid, "\n".join(parts), where)


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


def read_s2orc_release(pair, skips, opts=Options()):
    """One shard of the S2ORC 2020 release: its metadata file joined with its pdf_parses file by paper_id."""
    meta_fp, parse_fp = pair
    keep = {}  # this shard's kept metadata only: memory is per shard, not per corpus
    for n, m in read_json_lines(meta_fp, skips):
        if "paper_id" not in m:
            skips.add("no_paper_id", f"{meta_fp}:{n}")
        elif opts.filters.require_pmc_id and not m.get("pmc_id"):
            skips.add("no_pmc_id", f"{meta_fp}:{n}")
        else:
            keep[str(m["paper_id"])] = (m, n)
    for n, p in read_json_lines(parse_fp, skips):
        pid = str(p.get("paper_id"))
        if pid not in keep:
            continue  # filtered out above (counted there) or a parse without metadata
        m, _ = keep.pop(pid)
        yield doc(cf.pmc_id(m.get("pmc_id")) or pid, s2orc_text(m, p), f"{parse_fp}:{n}")
    for pid, (m, n) in keep.items():
        skips.add("no_pdf_parse", f"{meta_fp}:{n}", pid)


# -----------------------------------------------------------------------------
# formats parsed in the workers: this process only streams their bytes

NO_PMC = b'"pubmedcentral":null'  # the API's own serialisation; any other spelling is filtered by the workers


def read_s2orc_api(fp, skips, opts=Options()):
    """One of the Semantic Scholar Datasets API's s2orc shards: one JSON line per paper."""
    for n, raw in read_raw_lines(fp, skips):
        if not raw.strip():
            continue
        if opts.filters.require_pmc_id and NO_PMC in raw:  # most records are not PMC papers: not worth a parse
            skips.add("no_pmc_id", f"{fp}:{n}")
            continue
        yield "s2orc", raw, f"{fp}:{n}"


def s2orc_files(path):
    """S2ORC in either schema, told apart by the input's layout: the 2020 release's (metadata, pdf_parses) shard
    pairs when it has a metadata/ folder, else the Datasets API's shard files."""
    if glob.glob(os.path.join(path, "metadata", "metadata_*.jsonl*")):
        return s2orc_shards(path)
    files = tree_files(path, (".jsonl", ".gz"))
    if not files:
        raise SystemExit(f"{path}: no S2ORC shards: neither metadata/metadata_N.jsonl[.gz] (the 2020 release) nor "
                         f"*.jsonl[.gz] files (the Datasets API's s2orc shards)")
    return files


def read_s2orc(unit, skips, opts=Options()):
    return (read_s2orc_release if isinstance(unit, tuple) else read_s2orc_api)(unit, skips, opts)


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
                    yield "pmc_xml", data, where
            while f.read(1 << 20):  # tar stops at its end blocks: reading on checks the gzip stream is complete
                pass
    except (EOFError, tarfile.TarError, OSError, zlib.error) as e:
        reason = "truncated_tar" if isinstance(e, EOFError) or "unexpected end" in str(e) else "bad_tar"
        where = f"{path}:{member}" if member else f"{path}: after {last}" if last else path
        skips.add(reason, where, f"{type(e).__name__}: {e}")


def read_pmc_xml(fp, skips, opts=Options()):
    if fp.lower().endswith(TAR_EXT):
        yield from read_tar(fp, skips)
    else:
        yield "pmc_xml", fp, fp


def read_bioc(fp, skips, opts=Options()):
    yield "bioc", fp, fp


def read_loose(kind):
    """A reader that hands each file, unread, to a worker (which reads and parses it as `kind`)."""
    return lambda fp, skips, opts=Options(): iter([(kind, fp, fp)])


# -----------------------------------------------------------------------------
# the table, and the two ends of the unit stream

# files(input) -> the input's files, in order: the units of work that --shard=K/N deals out (every N-th from the K-th);
# read(file) streams one; parse: None where the reader yields documents itself
Source = namedtuple("Source", "files read parse")
SOURCES = {
    "s2orc": Source(s2orc_files, read_s2orc, cf.s2orc_api_events),  # the 2020 release: joined, parsed by the reader
    "pmc_xml": Source(lambda p: tree_files(p, XML_EXT + TAR_EXT), read_pmc_xml, cf.jats_events),  # a package: 1 file
    "bioc": Source(lambda p: tree_files(p, (".json", ".json.gz", ".jsonl", ".jsonl.gz")), read_bioc, cf.bioc_events),
    "jsonl": Source(lambda p: input_files(p, "*.jsonl*"), read_jsonl, None),
    "text": Source(lambda p: input_files(p, "*.txt"), read_text, None),
    "pubtator": Source(lambda p: [p], read_pubtator, None),  # whole: a PMID seen in an earlier file is skipped
    "pubmedqa": Source(lambda p: [p], read_pubmedqa, None),
    # WikiExtractor's output tree (text/AA/wiki_00, ...): every file not hidden, sorted by path
    "wikiextractor": Source(lambda p: [f for f in tree_files(p, ("",)) if not os.path.basename(f).startswith(".")],
                            read_loose("wikiextractor"), cf.wikiextractor_events),
}


class QueuedSkips:
    """The readers' skips in this process: each becomes a unit of the stream, so that it is counted in input order
    with the workers' own (meta.json is then the same for any --workers)."""

    def __init__(self):
        self.queue = deque()

    def add(self, reason, where, detail=""):
        self.queue.append(("skip", (reason, detail), where))


def read_units(sources, inputs, opts, shard=(0, 1)):
    """The units of every --input, in input order, the readers' skips among them where they occurred; each file's
    units after a ("file", (input number, file number), name) mark. shard=(k, n): only every n-th file of all the
    inputs' files from the k-th (prepare_corpus.py --shard=K/N: a merge puts the shards' files back in this order)."""
    skips = QueuedSkips()
    k, n = shard
    g = -1  # the file's number among all inputs' files: one package per --input deals out as well as a folder
    for i, (kind, path) in enumerate(zip(sources, inputs)):
        for j, fp in enumerate(SOURCES[kind].files(path)):
            g += 1
            if g % n != k:
                continue
            yield "file", (i, j), str(fp)
            for unit in SOURCES[kind].read(fp, skips, opts):
                while skips.queue:
                    yield skips.queue.popleft()
                yield unit
            while skips.queue:
                yield skips.queue.popleft()


def parse_unit(kind, payload, where, filters):
    """One unit -> events ("doc", key, text, where) / ("skip", reason, where, detail); run in a worker."""
    if kind == "doc":
        return [("doc", *payload, where)]
    if kind == "skip":
        return [("skip", payload[0], where, payload[1])]
    if kind == "file":
        return [("file", payload, where)]
    if isinstance(payload, str):  # a loose file's path: read here, not in the main process
        try:
            payload = read_file(payload)
        except (OSError, EOFError, zlib.error) as e:
            return [("skip", "unreadable_file", where, f"{type(e).__name__}: {e}")]
    try:
        return list(SOURCES[kind].parse(payload, where, filters))
    except Exception as e:  # pathological input (nesting deeper than the recursion limit...) ends no long run
        return [("skip", "parse_error", where, f"{type(e).__name__}: {e}")]
