"""
The small public sets, for users with internet (S2ORC itself needs an API key from AllenAI): each file is fetched from
a pinned commit and checked by sha256; offline, the error says exactly what to fetch by hand and where to put it.

    python prepare_corpus.py --download=bc5cdr --source=pubtator --input=data/bc5cdr --tokenizer=... --out_dir=...
"""
import hashlib
import os
import urllib.request


def _gh(repo, commit, path, sha256):
    """(url, file name, sha256) of a file at a pinned commit of a GitHub repository."""
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}", os.path.basename(path), sha256


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
