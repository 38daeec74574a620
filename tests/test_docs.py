"""The README and docs/ point only at files that exist: every relative link and image, markdown or HTML."""
import glob
import os
import re

from conftest import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img[^>]*\bsrc=\"([^\"]+)\"")


def relative_targets(md_path):
    """(line number, target) of every link and image in a markdown file that is not a URL or an in-page anchor."""
    out, fence = [], False
    for i, line in enumerate(open(md_path, encoding="utf-8"), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence:
            continue
        for m in LINK.finditer(line):
            target = (m.group(1) or m.group(2)).split("#", 1)[0]
            if target and not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                out.append((i, target))
    return out


def test_link_pattern_finds_links_and_images():
    # rigged lines with a known answer: two relative targets, one URL, one anchor, one HTML image
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".md", delete=False) as f:
        f.write("[a](docs/a.md) ![fig](docs/x.png \"t\") [u](https://x.org) [h](#top)\n"
                "```\n[in code](no.md)\n```\n<img src=\"y.png\" width=3>\n")
    try:
        assert relative_targets(f.name) == [(1, "docs/a.md"), (1, "docs/x.png"), (5, "y.png")]
    finally:
        os.unlink(f.name)


def test_every_relative_link_and_image_exists():
    pages = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    assert len(pages) > 5
    missing = [f"{os.path.relpath(p, ROOT)}:{line}: {t}" for p in pages for line, t in relative_targets(p)
               if not os.path.exists(os.path.join(os.path.dirname(p), t))]
    assert not missing, "broken links:\n" + "\n".join(missing)


def test_docs_are_linked_from_the_readme():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    for page in glob.glob(os.path.join(ROOT, "docs", "*.md")):
        assert f"docs/{os.path.basename(page)}" in readme, page
