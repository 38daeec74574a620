import glob
import gzip
import json
import os
import re
import shutil
import urllib.error

import numpy as np
import pytest
import sentencepiece as spm

import corpus_sources as cs
import download
import prepare_corpus as pc
from conftest import data_path
from corpus_data import load_split


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=data_path("tokenizer", "llama_tokenizer.model"))


def run(tmp_path, source, inputs, name="out", **kw):
    argv = ["--source", *source.split(), "--input", *map(str, inputs), "--out_dir", str(tmp_path / name),
            "--tokenizer", data_path("tokenizer", "llama_tokenizer.model"), "--val_fraction", "0", "--workers", "1",
            "--quiet"]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    return pc.main(argv), str(tmp_path / name)


def docs_of(out, split="train"):
    tokens, idx = load_split(out, split)
    return [tokens[idx[i]:idx[i + 1]].tolist() for i in range(len(idx) - 1)]


def assert_roundtrip(out, texts, sp):
    docs = docs_of(out)
    assert len(docs) == len(texts)
    for d, t in zip(docs, texts):
        assert d == [1] + sp.encode(t) + [2]


def pubtator_docs(path):
    """An independent PubTator reader: title and abstract lines by PMID, in file order."""
    order, title, abstract = [], {}, {}
    for fp in sorted(glob.glob(os.path.join(path, "*.txt"))):
        for line in open(fp, encoding="utf-8"):
            m = re.match(r"^(\d+)\|([ta])\|(.*)$", line.rstrip("\n"))
            if m:
                pmid, kind, text = m.groups()
                if kind == "t" and pmid in title:
                    continue  # NCBI-disease repeats one PMID
                if kind == "t":
                    order.append(pmid)
                    title[pmid] = text.strip()
                elif pmid not in abstract:
                    abstract[pmid] = text.strip()
    return [f"{title[p]}\n{abstract[p]}" for p in order]


def test_text_source_craft(tmp_path, sp):
    folder = data_path("biomed_corpus", "craft_pmc_oa_fulltext", "txt")
    meta, out = run(tmp_path, "text", [folder])
    files = sorted(glob.glob(os.path.join(folder, "*.txt")))
    assert len(files) == 91 and meta["splits"]["train"]["documents"] == 91
    assert_roundtrip(out, [open(f, encoding="utf-8").read().strip() for f in files], sp)
    assert meta["tokenizer_sha256"] == "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"


def test_pubtator_bc5cdr_and_ncbi(tmp_path, sp):
    bc5 = data_path("biomed_corpus", "bc5cdr")
    meta, out = run(tmp_path, "pubtator", [bc5])
    assert meta["splits"]["train"]["documents"] == 1500 and meta["skipped"] == {}
    assert_roundtrip(out, pubtator_docs(bc5), sp)
    ncbi = data_path("biomed_corpus", "ncbi_disease")
    meta, out = run(tmp_path, "pubtator", [ncbi], name="ncbi")
    assert meta["splits"]["train"]["documents"] == 792
    assert meta["skipped"] == {"duplicate_pmid": 1} and "8528200" in meta["skipped_examples"]["duplicate_pmid"][0]
    assert_roundtrip(out, pubtator_docs(ncbi), sp)


def test_pubmedqa_source_and_test_exclusion(tmp_path, sp):
    path = data_path("pubmedqa", "ori_pqal.json")
    recs = json.load(open(path))
    meta, out = run(tmp_path, "pubmedqa", [path])
    assert meta["splits"]["train"]["documents"] == 1000
    assert_roundtrip(out, ["\n".join(r["CONTEXTS"] + [r["LONG_ANSWER"]]) for r in recs.values()], sp)
    test_ids = data_path("pubmedqa", "test_ground_truth.json")
    meta, out = run(tmp_path, "pubmedqa", [path], name="ex", exclude_ids=test_ids)
    assert meta["splits"]["train"]["documents"] == 500 and meta["skipped"] == {"excluded_id": 500}
    keep = [r for k, r in recs.items() if k not in json.load(open(test_ids))]
    assert_roundtrip(out, ["\n".join(r["CONTEXTS"] + [r["LONG_ANSWER"]]) for r in keep], sp)


def test_jsonl_source_with_field(tmp_path, sp):
    path = data_path("medqa_usmle", "sample_200.jsonl")
    meta, out = run(tmp_path, "jsonl", [path], text_field="question")
    assert_roundtrip(out, [json.loads(l)["question"] for l in open(path)], sp)


def make_s2orc(root, gz=False):
    """A real-record shard pair: the metadata sample, plus the 3 real pdf_parse records re-keyed to 2 papers with a
    pmc_id and 1 without (the sample's parses belong to papers outside the metadata sample)."""
    metas = [json.loads(l) for l in open(data_path("s2orc", "metadata_sample.jsonl"))]
    pmc = [m for m in metas if m["pmc_id"]]
    no_pmc = [m for m in metas if not m["pmc_id"]]
    parses = [json.load(open(f)) for f in sorted(glob.glob(data_path("s2orc", "pdf_parses_examples") + "/*.json"))]
    for p, m in zip(parses, [pmc[0], no_pmc[0], pmc[5]]):
        p["paper_id"] = m["paper_id"]
    os.makedirs(root / "metadata")
    os.makedirs(root / "pdf_parses")
    op, ext = (gzip.open, ".jsonl.gz") if gz else (open, ".jsonl")
    with op(root / "metadata" / f"metadata_0{ext}", "wt") as f:
        f.writelines(json.dumps(m) + "\n" for m in metas)
    with op(root / "pdf_parses" / f"pdf_parses_0{ext}", "wt") as f:
        f.writelines(json.dumps(p) + "\n" for p in parses)
    return pmc, parses


def test_s2orc_join_keeps_pmc_papers_with_a_parse(tmp_path, sp):
    pmc, parses = make_s2orc(tmp_path / "s2orc", gz=True)
    meta, out = run(tmp_path, "s2orc", [tmp_path / "s2orc"])
    assert meta["splits"]["train"]["documents"] == 2
    assert meta["skipped"] == {"no_pmc_id": 1000 - 34, "no_pdf_parse": 32}
    p0 = parses[0]
    body = []
    section = None
    for para in p0["body_text"]:
        if para["section"] and para["section"] != section:
            body.append(para["section"])
        section = para["section"]
        body.append(para["text"])
    text0 = "\n\n".join(s.strip() for s in [pmc[0]["title"]] + [a["text"] for a in p0["abstract"]] + body if s.strip())
    assert docs_of(out)[0] == [1] + sp.encode(text0) + [2]
    assert sp.decode(docs_of(out)[1][1:-1]).startswith(pmc[5]["title"])
    meta, _ = run(tmp_path, "s2orc", [tmp_path / "s2orc"], name="all", require_pmc_id="False")
    assert meta["splits"]["train"]["documents"] == 3


def test_workers_give_identical_bytes_and_val_split(tmp_path):
    craft = data_path("biomed_corpus", "craft_pmc_oa_fulltext", "txt")
    bc5 = data_path("biomed_corpus", "bc5cdr")
    outs = []
    for w in (1, 2):
        meta, out = run(tmp_path, "text pubtator", [craft, bc5], name=f"w{w}", workers=w, val_fraction=0.05)
        outs.append(out)
    for f in ("train.bin", "train.idx", "val.bin", "val.idx"):
        assert open(os.path.join(outs[0], f), "rb").read() == open(os.path.join(outs[1], f), "rb").read(), f
    assert 40 < meta["splits"]["val"]["documents"] < 120 and meta["splits"]["train"]["documents"] + \
        meta["splits"]["val"]["documents"] == 1591


def test_a_new_format_is_one_parser_and_one_entry(tmp_path, sp, monkeypatch):
    """A toy tab-separated format (id, text): its files (here the input itself), a reader streaming a file's lines,
    a parser, one SOURCES entry, nothing else. workers=1: a monkeypatched table does not reach spawned workers (a real entry in the file does)."""
    def read_tsv(path, skips, opts):
        for n, raw in cs.read_raw_lines(path, skips):
            yield "tsv", raw, f"{path}:{n}"

    def parse_tsv(data, where, filters):
        key, _, text = data.decode().rstrip("\n").partition("\t")
        yield ("doc", key, text, where) if text else ("skip", "no_text", where, key)

    monkeypatch.setitem(cs.SOURCES, "tsv", cs.Source(lambda p: [p], read_tsv, parse_tsv))
    (tmp_path / "d.tsv").write_text("a\tAspirin inhibits COX-1.\nb\t\nc\tMetformin lowers glucose.\n")
    meta, out = run(tmp_path, "tsv", [tmp_path / "d.tsv"])
    assert meta["skipped"] == {"no_text": 1} and meta["skipped_examples"]["no_text"] == [f"{tmp_path / 'd.tsv'}:2: b"]
    assert_roundtrip(out, ["Aspirin inhibits COX-1.", "Metformin lowers glucose."], sp)


def test_a_failed_run_leaves_the_previous_corpus_whole(tmp_path):
    """Outputs are renamed into place only when everything is written: a run that stops half-way (here an S2ORC
    release shard without its pdf_parses partner) leaves the corpus of the run before untouched."""
    meta, out = run(tmp_path, "pubtator", [data_path("biomed_corpus", "ncbi_disease", "NCBItestset_corpus.txt")])
    before = {f: open(os.path.join(out, f), "rb").read() for f in ("train.bin", "train.idx", "meta.json")}
    (tmp_path / "s2" / "metadata").mkdir(parents=True)
    (tmp_path / "s2" / "metadata" / "metadata_0.jsonl").write_text('{"paper_id": "1", "pmc_id": "123"}\n')
    with pytest.raises(SystemExit, match="no pdf_parses/pdf_parses_N.jsonl"):
        run(tmp_path, "s2orc", [tmp_path / "s2"])
    assert meta["splits"]["train"]["documents"] == 100
    assert {f: open(os.path.join(out, f), "rb").read() for f in before} == before


# --- bad input -----------------------------------------------------------------------------------

def test_bad_jsonl_records_are_counted_with_location(tmp_path):
    p = tmp_path / "bad.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"text": "Aspirin inhibits COX-1."}\n')
        f.write(b'{"text": "broken\n')  # invalid JSON
        f.write(b'{"title": "no text field"}\n')
        f.write(b'{"text": "caf\xe9 latte"}\n')  # latin-1 byte: not UTF-8
        f.write(b'{"text": "   "}\n')  # empty document
        f.write(b'{"text": "Metformin lowers glucose."}\n')
    meta, out = run(tmp_path, "jsonl", [p])
    assert meta["splits"]["train"]["documents"] == 2
    assert meta["skipped"] == {"invalid_json": 1, "no_text": 1, "invalid_utf8": 1, "empty": 1}
    ex = meta["skipped_examples"]
    assert ex["invalid_json"][0].startswith(f"{p}:2") and ex["no_text"][0].startswith(f"{p}:3")
    assert ex["invalid_utf8"][0].startswith(f"{p}:4") and ex["empty"][0] == f"{p}:5"


def test_truncated_gzip_is_counted_and_earlier_records_kept(tmp_path):
    full = gzip.compress(b"".join(b'{"text": "document number %d about insulin"}\n' % i for i in range(2000)))
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(full[: len(full) // 2])
    meta, _ = run(tmp_path, "jsonl", [p])
    assert meta["skipped"] == {"truncated_gzip": 1}
    assert 0 < meta["splits"]["train"]["documents"] < 2000


def test_pubtator_block_without_abstract(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("1|t|Title one\n1|a|Abstract one.\n1\t0\t5\tTitle\tDisease\tD1\n\n"
                 "2|t|Title only\n2\t0\t5\tTitle\tDisease\tD1\n\n"
                 "3|t|Title three\n3|a|\n\n"
                 "4|t|Title four\n4|a|Abstract four.\n")
    meta, out = run(tmp_path, "pubtator", [p])
    assert meta["splits"]["train"]["documents"] == 2
    assert meta["skipped"] == {"no_abstract": 2}
    assert meta["skipped_examples"]["no_abstract"][0] == f"{p}:5: 2"


def test_missing_input_or_tokenizer_fails_before_work(tmp_path):
    with pytest.raises(SystemExit, match="no such file or folder"):
        run(tmp_path, "text", [tmp_path / "nope"])
    (tmp_path / "d").mkdir()
    with pytest.raises(SystemExit, match=r"--tokenizer \S+t.model: no such file or folder"):
        pc.main(["--source", "text", "--input", str(tmp_path / "d"), "--tokenizer", str(tmp_path / "t.model"),
                 "--out_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit, match="unknown; known"):
        run(tmp_path, "pdf", [tmp_path / "d"])


def test_large_vocab_switches_to_uint32(tmp_path, monkeypatch):
    class BigVocab(pc.Tokenizer):
        def __init__(self, path):
            super().__init__(path)
            self.vocab_size = 128_256
    monkeypatch.setattr(pc, "Tokenizer", BigVocab)
    meta, out = run(tmp_path, "text", [data_path("biomed_corpus", "craft_pmc_oa_fulltext", "txt")])
    assert meta["dtype"] == "uint32" and "uint32" in meta["note"]
    assert os.path.getsize(os.path.join(out, "train.bin")) == 4 * meta["splits"]["train"]["tokens"]
    assert docs_of(out)[0][0] == 1


def test_download_offline_message_and_local_mirror(tmp_path):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")
    with pytest.raises(SystemExit) as e:
        download.download("bc5cdr", str(tmp_path / "bc5"), urlopen=offline)
    assert "offline" in str(e.value) and "CDR_TestSet.PubTator.txt" in str(e.value) and str(tmp_path) in str(e.value)

    def local_copy(url, timeout):  # serve the staged byte-for-byte copies as if from their repositories
        return open(data_path("biomed_corpus", "bc5cdr", os.path.basename(url)), "rb")
    download.download("bc5cdr", str(tmp_path / "bc5"), urlopen=local_copy)
    assert sorted(os.listdir(tmp_path / "bc5")) == ["CDR_DevelopmentSet.PubTator.txt", "CDR_TestSet.PubTator.txt",
                                                    "CDR_TrainingSet.PubTator.txt"]

    def wrong_file(url, timeout):
        return open(data_path("biomed_corpus", "bc5cdr", "README.txt"), "rb")
    with pytest.raises(SystemExit, match="sha256 mismatch"):
        download.download("ncbi_disease", str(tmp_path / "ncbi"), urlopen=wrong_file)
    assert not os.listdir(tmp_path / "ncbi")


def test_text_doc_chars_splits_one_file_corpora(tmp_path, sp):
    path = data_path("general", "tinyshakespeare", "input.txt")
    meta, out = run(tmp_path, "text", [path], doc_chars=8000)
    docs = [sp.decode(d[1:-1]) for d in docs_of(out)]
    assert len(docs) == meta["splits"]["train"]["documents"] > 100
    text = open(path, encoding="utf-8").read().strip()
    norm = lambda s: re.sub(r"\n\s*\n", "\n\n", s)
    assert norm("\n\n".join(docs)) == norm(text)  # cut only at blank lines, nothing lost
    assert max(len(d) for d in docs) < 8000 + 2000


# --- shards: --shard=K/N, then --merge, equal to one run over all inputs ----------------------------------------------

def shard_inputs(tmp_path):
    """A bulk package and loose XML (the package repeats three loose papers: a PMC id in two files, so in two shards
    for N > 1), BioC files, the Datasets API's S2ORC sample and a 2020-release S2ORC shard pair."""
    xml = tmp_path / "xml"
    shutil.copytree(data_path("pmc_oa_xml"), xml, ignore=shutil.ignore_patterns("*.md"))
    import tarfile
    with tarfile.open(xml / "zz_pkg.tar.gz", "w:gz") as t:
        for name in ("PMC4919728.xml", "PMC5029658.xml", "pone.0000217.nxml"):
            t.add(xml / name, arcname=name)
    make_s2orc(tmp_path / "s2orc")
    return "pmc_xml bioc s2orc s2orc", [xml, data_path("bioc", "pmc_bioc_api_json"),
                                        data_path("s2orc_api", "s2orc-sample.jsonl"), tmp_path / "s2orc"]


def same_corpus(a, b):
    for f in ("train.bin", "train.idx", "val.bin", "val.idx"):
        assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read(), f


def test_shards_merge_to_the_bytes_of_one_run(tmp_path):
    source, inputs = shard_inputs(tmp_path)
    single, one = run(tmp_path, source, inputs, name="single", val_fraction=0.3)
    assert single["skipped"]["duplicate_pmc_id"] == 3 and single["splits"]["val"]["documents"] > 0
    for n in (1, 2, 3):
        for k in range(n):  # files are dealt out over all inputs: every shard gets some
            shard_meta, _ = run(tmp_path, source, inputs, name=f"n{n}", val_fraction=0.3, shard=f"{k}/{n}")
            assert shard_meta["splits"]["train"]["documents"] > 0
        merged = pc.main(["--merge", "--out_dir", str(tmp_path / f"n{n}"), "--quiet"])
        same_corpus(one, tmp_path / f"n{n}")
        assert merged["skipped"] == single["skipped"] and merged["splits"] == single["splits"]
        assert (merged["merge_duplicates"] > 0) == (n > 1)  # a paper in two shards: its later copy dropped at merge


def test_finished_shard_is_a_no_op_and_a_killed_one_starts_over(tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time
    craft = data_path("biomed_corpus", "craft_pmc_oa_fulltext", "txt")
    single, one = run(tmp_path, "text", [craft], name="single", val_fraction=0.1)
    out = tmp_path / "sharded"
    argv = [sys.executable, "prepare_corpus.py", "--source", "text", "--input", craft, "--out_dir", str(out),
            "--tokenizer", data_path("tokenizer", "llama_tokenizer.model"), "--val_fraction", "0.1", "--workers", "1",
            "--quiet", "--shard", "0/2"]
    p = subprocess.Popen(argv, cwd=os.path.dirname(os.path.dirname(__file__)))
    tmp = out / "shard-00000-of-00002.tmp"
    while not (tmp / "train.bin.tmp").exists() or os.path.getsize(tmp / "train.bin.tmp") == 0:
        assert p.poll() is None, "the shard finished before it could be killed"
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    assert tmp.exists() and not (out / "shard-00000-of-00002").exists()  # nothing half-written under the real name
    with pytest.raises(SystemExit, match="no shard-K-of-N folders"):  # a .tmp folder is no shard
        pc.main(["--merge", "--out_dir", str(out), "--quiet"])
    for k in (0, 1):
        run(tmp_path, "text", [craft], name="sharded", val_fraction=0.1, shard=f"{k}/2")
    assert not tmp.exists()
    capsys.readouterr()
    run(tmp_path, "text", [craft], name="sharded", val_fraction=0.1, shard="1/2")
    assert "shard 1/2 is done already" in capsys.readouterr().out
    pc.main(["--merge", "--out_dir", str(out), "--quiet"])
    same_corpus(one, out)


def test_merge_refuses_shards_of_another_run(tmp_path):
    craft = data_path("biomed_corpus", "craft_pmc_oa_fulltext", "txt")
    for k in (0, 1):
        run(tmp_path, "text", [craft], name="c", shard=f"{k}/2")
    run(tmp_path, "text", [craft], name="c", shard="0/3")
    with pytest.raises(SystemExit) as e:
        pc.main(["--merge", "--out_dir", str(tmp_path / "c"), "--quiet"])
    assert "one of 3 shards" in str(e.value) and "\n" not in str(e.value)
    shutil.rmtree(tmp_path / "c" / "shard-00000-of-00003")
    meta_path = tmp_path / "c" / "shard-00001-of-00002" / "meta.json"
    meta = json.load(open(meta_path))
    json.dump({**meta, "tokenizer_sha256": "0" * 64}, open(meta_path, "w"))  # as if another tokenizer made it
    with pytest.raises(SystemExit, match="differs from .* in tokenizer_sha256 \\(another tokenizer"):
        pc.main(["--merge", "--out_dir", str(tmp_path / "c"), "--quiet"])
    shutil.rmtree(tmp_path / "c" / "shard-00001-of-00002")
    with pytest.raises(SystemExit, match="shard\\(s\\) 1 of 2 missing"):
        pc.main(["--merge", "--out_dir", str(tmp_path / "c"), "--quiet"])


def test_shard_from_slurm_array(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "8")
    assert pc.parse_shard("") == (4, 8) and pc.parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "a/2", "1-2"):
        with pytest.raises(SystemExit, match="expected K/N"):
            pc.parse_shard(bad)


def test_wikiextractor_pages_without_doc_lines(tmp_path, sp):
    """WikiExtractor output (general replay text): an independent line reader gives each page's text between its
    <doc> and </doc> lines; pages with a title alone are skipped and counted (PROVENANCE.md: 2,716 of 8,375 pages have
    body text)."""
    folder = data_path("general", "enwiki_wikiextractor_2021")
    texts = []
    for fp in sorted(glob.glob(os.path.join(folder, "wiki_*"))):
        page = None
        for line in open(fp, encoding="utf-8"):
            if line.startswith("<doc "):
                page = []
            elif line.startswith("</doc>"):
                if len([x for x in page if x.strip()]) > 1:
                    texts.append("\n".join(page).strip())
                page = None
            else:
                page.append(line.rstrip("\n"))
    meta, out = run(tmp_path, "wikiextractor", [folder])
    assert len(texts) == 2716 and meta["skipped"] == {"title_only": 5659}
    assert_roundtrip(out, texts, sp)
    assert texts[0].startswith("Jarred Shaw\n\nJarred Shaw (born September 28, 1990)")  # page 1 is a title alone
