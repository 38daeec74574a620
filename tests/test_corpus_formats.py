"""The corpus as downloaded today: PMC JATS XML (files, bulk .tar.gz packages), S2ORC from the Semantic Scholar
Datasets API, and BioC JSON, through prepare_corpus.py. Expected values are literals read off the raw files."""
import glob
import gzip
import io
import json
import os
import re
import shutil
import tarfile

import pytest

import corpus_formats as cf
from conftest import data_path
from corpus_data import load_split
from test_prepare_corpus import run, sp  # noqa: F401  (sp: a fixture)


def texts_of(out, sp, split="train"):
    tokens, idx = load_split(out, split)
    return [sp.decode(tokens[idx[i] + 1:idx[i + 1] - 1].tolist()) for i in range(len(idx) - 1)]


def same_files(a, b):
    for f in ("train.bin", "train.idx", "val.bin", "val.idx"):
        with open(os.path.join(a, f), "rb") as x, open(os.path.join(b, f), "rb") as y:
            assert x.read() == y.read(), f


# --- PMC Open Access JATS XML -----------------------------------------------------------------------

# file -> PMC id, title, a body sentence, section titles, text that must not be there (a table cell, a reference
# entry, a figure caption or table footnote), all read off the raw XML. Order = the folder's sorted order.
XML = {
    "1471-2180-11-174.nxml": (
        "PMC3166277", "Factors influencing lysis time stochasticity in bacteriophage λ",
        "Davis minimal salts medium (DM) with 20 mM glucose",
        ["Background", "Effect of allelic variation in holin sequence", "Effect of late promoter pR' activity",
         "Evolutionary implication of lysis time stochasticity", "Appendix A",
         "Sample preparation and lysis time determination", "Competing interests", "Supplementary Material"],
        ["MC4100 (λ cI857 pR'-M2), with pR' mutations", "Dynamics of single-cell gene expression",
         "Effects of tKCN (timing of KCN addition)"]),
    "1472-6831-8-11.nxml": (
        "PMC2329613", "The Dutch version of the Oral Health Impact Profile (OHIP-NL): Translation, reliability",
        "No patients had to be discarded for missing more than five questions on the total OHIP-NL",
        ["Oral Health Impact Profile", "Translation into Dutch", "Test-retest reliability", "Missing data",
         "Pre-publication history"],
        ["Average inter-item correlation", "Developing socio-dental indicators-the social impact of dental disease"]),
    "6605965a.nxml": (
        "PMC2994229", "Oral contraceptives, reproductive history and risk of colorectal cancer in the European",
        "Study participants included 1878 female colorectal cancer cases (1295 colon and 583 rectal cancers)",
        ["Materials and Methods", "Results", "Discussion", "Background:"],
        ["Mean (s.d.) duration of oral contraceptive use (years)",
         "Unconjugated secondary bile acids in the serum of patients with colorectal adenomas"]),
    "PMC4919728.xml": (
        "PMC4919728", "Genomic Profiling of Adult and Pediatric B-cell Acute Lymphoblastic Leukemia",
        "MEF2D fusions were found in 12 of 177 (6.8%) adult and 7 of 199 (3.5%) pediatric patients",
        ["Patients and Samples", "Characterization of MEF2D and ZNF384 Related Gene Fusions",
         "Declaration of Interests"],
        ["Specific genetic abnormalities, no. (%)",
         "The landscape of somatic mutations in infant MLL-rearranged acute lymphoblastic leukemias",
         "Flow chart of B-ALL patients in this study"]),
    "PMC5029658.xml": (
        "PMC5029658", "TKI sensitivity patterns of novel kinase-domain mutations suggest therapeutic opportunities",
        "I1171S previously was seen in an in vitro accelerated mutagenesis screen in ALK+ NSCLC",
        ["INTRODUCTION", "I1171S", "G1269A", "MATERIALS AND METHODS", "Site directed mutagenesis",
         "SUPPLEMENTARY MATERIALS FIGURES"],
        ["Ceritnib", "Kinase domain mutations leading to acquired resistance",
         "FAM150A and FAM150B are activating ligands for Anaplastic Lymphoma Kinase"]),
    "ehp-116-1694.nxml": (
        "PMC2599765", "Dietary Exposure to 2,2′,4,4′-Tetrabromodiphenyl Ether (PBDE-47) Alters Thyroid Status",
        "We first identified and sequenced the cDNA for BTEB from the brain of fathead minnow",
        ["Bioencapsulation of PBDE-47 in Artemia shrimp", "Gonad staging and reproductive behavior",
         "Tissue levels of PBDE-47"],
        ["Dietary PBDE-47 exposure elevated mRNA levels for TRα in females",
         "The fathead minnow in aquatic toxicology: past, present and future"]),
    "mds526.nxml": (
        "PMC3574550", "Socio-demographic inequalities in stage of cancer diagnosis: evidence from patients",
        "we use a sandwich estimator throughout",
        ["introduction", "analysis", "disclosure"],
        ["Potential reduction in the number of cancers diagnosed in advanced stage",
         "The model for endometrial cancer was adjusted for tumour type",
         "The size of the prize for earlier diagnosis of cancer in England",
         "Age inequalities in advanced stage diagnosis in patients"]),
    "oai_GetRecord_PMC156895.xml": (
        "PMC156895", "Wnt/Wingless signaling through β-catenin requires the function of both LRP/Arrow",
        "DFz2, like other members of the Fz protein family, contains a cysteine-rich domain (CRD)",
        ["RNAi in S2 cells", "Wg and its receptors Arr and DFz2 can activate LEF-dependent transcription"],
        ["The expression of Wg dual receptors and their activities in S2 cells",
         "Mechanisms of Wnt signaling in development"]),
    "pntd.0002065.nxml": (
        "PMC3585041", "Serological Evidence of Rift Valley Fever Virus Circulation in Sheep and Goats in Zambézia",
        "In Mopeia district 125 animals (74 sheep and 51 goats)",
        ["Author Summary", "Site description", "Ethical approval", "Assessment of inter-epidemic transmission of RVFV"],
        ["95% confidence interval (OR)", "Figure 1 shows the map of the Zambézia Province",
         "Outbreaks of Rift Valley fever in Kenya, Somalia and United Republic of Tanzania"]),
    "pone.0000217.nxml": (
        "PMC1790863", "Quantifying Organismal Complexity using a Population Genetic Approach",
        "The equilibrium drift load seems to be a robust property of FGM",
        ["Linear Fitness Decline", "Ellipsoidal fitness isoclines", "Appendix C: Maximum Likelihood Analysis"],
        ["Chance and necessity: the evolution of morphological complexity and diversity",
         "Fitness varies along two phenotypic axe"]),
    "pone.0046493.nxml": (
        "PMC3460867", "MmPPOX Inhibits Mycobacterium tuberculosis Lipolytic Enzymes",
        "Enzymatic hydrolysis of emulsions of various esters, namely vinyl butyrate (VC4)",
        ["pH-stat assays", "Lipase activity assays on TAG from Pomegranate oil",
         "Effect of MmPPOX on mycobacterial growth", "Supporting Information"],
        ["Activity on pNPC4 (U/mg)", "Intracellular lipophilic inclusions of mycobacteria in vitro and in sputum",
         "SDS-PAGE profile of the 9 Lip-HSL proteins used in this study"]),
}


def xml_folder():
    return data_path("pmc_oa_xml")


def check_article(text, expect):
    _, title, sentence, sections, absent = expect
    assert text.startswith(title)
    assert sentence in text
    for s in sections:
        assert f"\n\n{s}\n\n" in text + "\n\n", s  # a section title is a block of its own
    for s in absent + ["\\documentclass", "\\usepackage", "xlink:href"]:
        assert s not in text, s


def test_pmc_xml_real_articles(tmp_path, sp):
    meta, out = run(tmp_path, "pmc_xml", [xml_folder()])
    assert meta["splits"]["train"]["documents"] == 11 and meta["skipped"] == {}
    texts = texts_of(out, sp)
    for text, (name, expect) in zip(texts, sorted(XML.items())):
        check_article(text, expect)
    # two abstracts each (abstract + author summary / highlights), the table sitting in a <p> leaves the paragraph
    assert "The genomic landscapes of adult and pediatric B-ALL were defined by next-generation sequencing" in texts[3]
    assert "Rift Valley fever (RVF) is endemic in most parts of Africa" in texts[8]
    assert "\n\nAuthor Summary\n\nRift Valley fever (RVF) is a mosquito-borne disease that results" in texts[8]
    assert "Annals of Oncology online).\n\nConsidering socio-demographic inequalities for all cancers" in texts[6]
    for f, (pmc, *_) in XML.items():  # the key of each article: its PMC id in one form ("pmcid" PMC156895 included)
        events = list(cf.jats_events(open(os.path.join(xml_folder(), f), "rb").read(), f))
        assert [e[:2] for e in events] == [("doc", pmc)]


SYNTHETIC = b"""<article article-type="research-article"><front><article-meta>
<article-id pub-id-type="pmid">111</article-id><article-id pub-id-type="pmc">PMC7654321</article-id>
<title-group><article-title>A <italic>tiny</italic> test article</article-title></title-group>
<contrib-group><contrib><name><surname>AUTHORNAME</surname></name></contrib></contrib-group><aff>AFFILIATION</aff>
<abstract><p>Abstract text.</p></abstract></article-meta></front>
<body><sec><label>1.</label><title>Introduction</title>
<p>Aspirin inhibits COX-1 <xref ref-type="bibr" rid="r1">[1]</xref> as shown by <inline-formula><tex-math>
\\documentclass[12pt]{minimal}\\usepackage{amsmath}\\begin{document}$x^2$\\end{document}</tex-math></inline-formula>
<italic>in vivo</italic> studies.</p>
<p>Before the table<table-wrap><label>Table 1</label><caption><p>TABLECAPTION</p></caption><table><tr><td>CELLTEXT</td>
</tr></table></table-wrap>after the table.</p>
<sec><title>Nested</title><p>A list follows:<list list-type="bullet">
<list-item><label>a</label><p>first item</p></list-item><list-item><p>second item</p></list-item>
</list>and text after it.</p>
<disp-formula><mml:math><mml:mi>MATHTEXT</mml:mi></mml:math></disp-formula>
<boxed-text><caption><title>Box 1</title></caption><p>Boxed paragraph.</p></boxed-text></sec>
<sec><title>Only a figure</title><fig><caption><p>FIGCAPTION</p></caption><graphic xlink:href="f1.jpg"/></fig></sec>
<sec><title>Supplementary Material</title><supplementary-material><caption><p>SUPPCAPTION</p></caption>
</supplementary-material></sec></sec>
<sec><title>Methods</title><p>We did&nbsp;things.</p>
<p>Bare math <mml:math><mml:mi>MATH2</mml:mi></mml:math>here.</p></sec></body>
<back><ack><p>ACKTEXT</p></ack><ref-list><ref id="r1"><mixed-citation>REFTEXT</mixed-citation></ref></ref-list></back>
<floats-group><table-wrap><table><tr><td>FLOATCELL</td></tr></table></table-wrap></floats-group></article>"""
SYNTHETIC_TEXT = ("A tiny test article\n\nAbstract text.\n\nIntroduction\n\n"
                  "Aspirin inhibits COX-1 [1] as shown by in vivo studies.\n\nBefore the table after the table.\n\n"
                  "Nested\n\nA list follows:\n\nfirst item\n\nsecond item\n\nand text after it.\n\nBox 1\n\n"
                  "Boxed paragraph.\n\nOnly a figure\n\nSupplementary Material\n\nMethods\n\nWe did\xa0things.\n\n"
                  "Bare math here.")


def test_jats_structure_formulas_tables_and_repairs():
    """Every rule on one small article: inline markup keeps its text; tables (also inside a <p>), figures, formulas
    (MathML and a <tex-math> LaTeX preamble), supplementary material, back matter and <floats-group> go; lists and
    boxed text are paragraphs; nested sections keep their order, every section keeps its title. The file
    uses mml: and xlink: without declaring them and &nbsp; without a DTD: both repaired, not skipped."""
    assert list(cf.jats_events(SYNTHETIC, "x.xml")) == [("doc", "PMC7654321", SYNTHETIC_TEXT, "x.xml")]


def test_jats_undeclared_prefixes_and_id_forms():
    raw = open(os.path.join(xml_folder(), "1471-2180-11-174.nxml"), "rb").read()
    (_, key, text, _), = cf.jats_events(raw, "a")
    # the same file with its xlink/mml declarations removed, an undeclared ali: element, a bare PMC number turned
    # into the 2024+ "PMC"-prefixed one, or written as pmcid: the same document under the same key
    bare = re.sub(rb' xmlns:(xlink|mml)="[^"]*"', b"", raw)
    assert bare.count(b"xlink:href") == 8 and b"xmlns:xlink" not in bare
    bare = bare.replace(b"<front>", b'<front><ali:free_to_read start_date="2011-01-01"/>', 1)
    variants = [bare, raw.replace(b">3166277<", b">PMC3166277<"),
                raw.replace(b'pub-id-type="pmc">3166277<', b'pub-id-type="pmcid">PMC3166277<')]
    for v in variants:
        assert list(cf.jats_events(v, "b")) == [("doc", key, text, "b")]
    assert key == "PMC3166277"


def make_package(path, members, truncate_at=None):
    """A bulk package as NCBI ships them: a .tar.gz of PMCxxxxxxx.xml members (plus whatever else is given)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    gz = gzip.compress(buf.getvalue())
    path.write_bytes(gz if truncate_at is None else gz[:int(len(gz) * truncate_at)])
    return path


def test_bulk_package_equals_loose_files_and_truncation_keeps_earlier_members(tmp_path, sp):
    files = sorted(glob.glob(os.path.join(xml_folder(), "*.*xml")))
    members = [(f"PMC00xxxxxx/{os.path.basename(f).rsplit('.', 1)[0]}.xml", open(f, "rb").read()) for f in files]
    _, loose = run(tmp_path, "pmc_xml", [xml_folder()], name="loose")
    pkg = make_package(tmp_path / "oa_comm_xml.PMC00xxxxxx.baseline.tar.gz", members)
    meta, packed = run(tmp_path, "pmc_xml", [pkg], name="packed")
    assert meta["skipped"] == {} and meta["splits"]["train"]["documents"] == 11
    same_files(loose, packed)

    cut = make_package(tmp_path / "cut.tar.gz", members, truncate_at=0.6)
    meta, out = run(tmp_path, "pmc_xml", [cut], name="cut")
    kept = meta["splits"]["train"]["documents"]
    assert 0 < kept < 11 and meta["skipped"] == {"truncated_tar": 1}
    assert meta["skipped_examples"]["truncated_tar"][0].startswith(f"{cut}:{members[kept][0]}: ")  # the damaged one
    assert texts_of(out, sp) == texts_of(loose, sp)[:kept]


def article(pmc=None, kind="research-article", body="<p>Body text of the article.</p>", id_type="pmc"):
    ids = f'<article-id pub-id-type="{id_type}">{pmc}</article-id>' if pmc else ""
    return (f'<article article-type="{kind}"><front><article-meta>{ids}<title-group><article-title>Title {pmc}'
            f'</article-title></title-group></article-meta></front><body>{body}</body></article>').encode()


def test_pmc_xml_bad_input_is_counted_by_reason_with_location(tmp_path):
    d = tmp_path / "xml"
    d.mkdir()
    real = open(os.path.join(xml_folder(), "pntd.0002065.nxml"), "rb").read()
    (d / "a_dup.nxml").write_bytes(real)
    (d / "b_malformed.xml").write_bytes(real[:5000])
    (d / "c_correction.xml").write_bytes(article("PMC1000001", "correction"))
    (d / "d_retraction.xml").write_bytes(article("1000002", "retraction"))
    (d / "e_nobody.xml").write_bytes(article("1000003", body='<sec><title>Supplementary Material</title>'
                                                            '<supplementary-material/></sec>'))
    (d / "f_noid.xml").write_bytes(article())
    make_package(d / "g_pkg.tar.gz", [("PMC3585041.xml", real), ("README.txt", b"file list"),
                                      ("PMC1000004.xml", b"\x89PNG\r\n\x1a\n\x00binary"),
                                      ("PMC1000005.xml", article("PMC1000005", "expression-of-concern"))])
    meta, _ = run(tmp_path, "pmc_xml", [d])
    assert meta["splits"]["train"]["documents"] == 1
    assert meta["skipped"] == {"malformed_xml": 2, "article_type:correction": 1, "article_type:retraction": 1,
                               "article_type:expression-of-concern": 1, "no_body": 1, "no_pmc_id": 1,
                               "duplicate_pmc_id": 1, "not_xml_member": 1}
    ex = meta["skipped_examples"]
    assert ex["malformed_xml"][0].startswith(f"{d}/b_malformed.xml: ")
    assert ex["malformed_xml"][1].startswith(f"{d}/g_pkg.tar.gz:PMC1000004.xml: ")
    assert ex["duplicate_pmc_id"] == [f"{d}/g_pkg.tar.gz:PMC3585041.xml: PMC3585041"]
    assert ex["not_xml_member"] == [f"{d}/g_pkg.tar.gz:README.txt"]
    assert ex["article_type:correction"] == [f"{d}/c_correction.xml: PMC1000001"]
    assert ex["no_pmc_id"] == [f"{d}/f_noid.xml"] and ex["no_body"] == [f"{d}/e_nobody.xml: PMC1000003"]
    # the filters are flags: all article types and articles without a PMC id kept
    meta, _ = run(tmp_path, "pmc_xml", [d], name="all", require_pmc_id="False", skip_article_types="")
    assert meta["splits"]["train"]["documents"] == 5
    assert meta["skipped"] == {"malformed_xml": 2, "no_body": 1, "duplicate_pmc_id": 1, "not_xml_member": 1}


# --- S2ORC, Semantic Scholar Datasets API -------------------------------------------------------------

S2 = "s2orc-sample.jsonl"
ERRATUM_TITLE = ("Erratum Hypoxia-induced up-regulation of VASP promotes invasiveness and metastasis of hepatocellular "
                 "carcinoma")
ERRATUM_PARAGRAPH = ("We regret that the original version of our paper unfortunately contained some inappropriate "
                     "representative images.")


def test_s2orc_api_sample(tmp_path, sp):
    path = data_path("s2orc_api", S2)
    meta, out = run(tmp_path, "s2orc", [path])
    assert meta["splits"]["train"]["documents"] == 1  # the Theranostics erratum, PMC 9925312; no abstract span
    assert meta["skipped"] == {"no_pmc_id": 2} and meta["skipped_examples"]["no_pmc_id"] == [f"{path}:2", f"{path}:3"]
    (text,) = texts_of(out, sp)
    assert text.startswith(ERRATUM_TITLE) and text.count(ERRATUM_PARAGRAPH) == 1  # not the header block's copy
    for s in ["Zhikui Liu", "Department of Hepatobiliary Surgery", "VASP promotes HCC cell migration and invasion",
              "\n\nFigure 2\n\n", "Ivyspring\n", "Theranostics 2023"]:  # authors, affiliations, figures, venue
        assert s not in text, s
    line = open(path, "rb").readline()
    assert [e[:2] for e in cf.s2orc_api_events(line, "x")] == [("doc", "PMC9925312")]

    # all three with the filter off, from a gzipped shard in a folder (as the API's files come)
    shard = tmp_path / "s2orc" / "20230203_000.jsonl.gz"
    shard.parent.mkdir()
    shard.write_bytes(gzip.compress(open(path, "rb").read()))
    meta, out = run(tmp_path, "s2orc", [shard.parent], name="all", require_pmc_id="False")
    assert meta["splits"]["train"]["documents"] == 3 and meta["skipped"] == {}
    _, solidarity, citesee = texts_of(out, sp)
    assert solidarity.startswith("Solidarity to achieve stability")
    assert "\n\nAgents may form coalitions. Each coalition shares its endowment among its agents" in solidarity
    for s in ["Introduction", "Preliminaries", "Sharing problems", "Appendix: Proof of Theorem 1"]:
        assert f"\n\n{s}\n\n" in solidarity, s
    assert "Lemma 1. The following statements hold:" in solidarity
    for s in ["Sharing the costs of cleaning a river: the upstream responsibility rule",  # bibliography
              "1234 \n134", "Figure 1 :", "Relations among properties",  # table, figure header and caption
              "F i (C, E) ≤ F i (C, E ).", "Universitat"]:  # a formula, an affiliation
        assert s not in text and s not in solidarity, s
    assert citesee.startswith("CiteSee: Augmenting Citations in Scientific Papers with Persistent and Personalized")
    assert "\n\nINTRODUCTION\n\nScience builds on the past work of others." in citesee


def test_s2orc_api_spans_rebuild_the_text():
    """Every rule on one small record: title (the first span), abstract, paragraphs under their headers in text
    order (a header with no paragraph below it goes), nothing inside a figure, table, formula or bibliography entry
    (spans overlap and nest), nothing from the header block; spans are code-point offsets."""
    parts = ["Tïtle of paper", "Author Name, Some University", "An abstract.", "1 Intro", "First paragraph.",
             "Figure 1: Caption head", "Caption paragraph.", "x = y + 1", "Second paragraph.", "2 Methods",
             "2.1 Design", "Third paragraph.", "Table 1 cells 3.4 5.6", "Dangling header", "References",
             "[1] Some cited paper title. J Biol 2001."]
    text, spans = "", {}
    for i, p in enumerate(parts):
        spans[i] = {"start": len(text), "end": len(text) + len(p)}
        text += p + "\n"
    def at(*ix, cover=False):
        if cover:  # one span over several parts
            return json.dumps([{"start": spans[ix[0]]["start"], "end": spans[ix[-1]]["end"]}])
        return json.dumps([spans[i] for i in ix])
    ann = {"title": at(0), "author": at(1), "authoraffiliation": at(1), "abstract": at(2),
           "sectionheader": at(3, 5, 9, 10, 13, 14), "paragraph": at(4, 6, 8, 11, 15),
           "figure": at(5, 6, cover=True), "formula": at(7), "table": at(12), "bibentry": at(15), "venue": None}
    rec = {"corpusid": 7, "externalids": {"pubmedcentral": "123"}, "content": {"text": text, "annotations": ann}}
    assert list(cf.s2orc_api_events(json.dumps(rec).encode(), "w")) == [
        ("doc", "PMC123", "Tïtle of paper\n\nAn abstract.\n\n1 Intro\n\nFirst paragraph.\n\nSecond paragraph.\n\n"
                          "2 Methods\n\n2.1 Design\n\nThird paragraph.", "w")]


def test_s2orc_api_bad_records(tmp_path):
    rec = json.loads(open(data_path("s2orc_api", S2), "rb").readline())

    def variant(**annotations):
        r = json.loads(json.dumps(rec))
        r["content"]["annotations"].update(annotations)
        return json.dumps(r)
    no_pmc = json.loads(json.dumps(rec))
    no_pmc["externalids"]["pubmedcentral"] = None
    lines = [json.dumps(rec),
             variant(paragraph='[{"end":5763,"start":5118}'),  # undecodable: cut JSON
             variant(paragraph='[{"end":99999,"start":5118}]'),  # past the end of the text
             variant(sectionheader='[{"end":10,"start":-1}]'),  # before its start
             json.dumps(no_pmc),  # json.dumps writes "pubmedcentral": null: filtered by a worker
             json.dumps(no_pmc, separators=(",", ":")),  # the API's own serialisation: filtered while reading
             '{"corpusid": 1, "content": ',  # invalid JSON
             '{"corpusid": 2}']  # not an API record
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    meta, _ = run(tmp_path, "s2orc", [p])
    assert meta["splits"]["train"]["documents"] == 1
    assert meta["skipped"] == {"bad_annotations": 1, "span_out_of_range": 2, "no_pmc_id": 2, "invalid_json": 1,
                               "not_s2orc_record": 1}
    ex = meta["skipped_examples"]
    assert ex["bad_annotations"][0].startswith(f"{p}:2: CorpusId:256867980: undecodable")
    assert [e.split(": ")[0] for e in ex["span_out_of_range"]] == [f"{p}:3", f"{p}:4"]
    assert ex["no_pmc_id"] == [f"{p}:5: CorpusId:256867980", f"{p}:6"]
    assert ex["invalid_json"][0].startswith(f"{p}:7") and ex["not_s2orc_record"][0].startswith(f"{p}:8")
    meta, _ = run(tmp_path, "s2orc", [p], name="all", require_pmc_id="False")  # the two without an id kept
    assert meta["splits"]["train"]["documents"] == 3
    assert meta["skipped"] == {"bad_annotations": 1, "span_out_of_range": 2, "invalid_json": 1, "not_s2orc_record": 1}


# --- BioC JSON ----------------------------------------------------------------------------------------

# file -> PMC id, title, a body sentence, section titles, absent (table cell, reference, figure caption, footnote)
BIOC = {
    "PMC10020673.json": (
        "PMC10020673", "Microbial isolation and characterization from two flex lines from the urine processor assembly",
        "A clean and reliable source of water is critical for human spaceflight.",
        ["Introduction", "Materials and methods", "Sample collection and fixation", "Hemolysis activity",
         "Conclusions"],
        ["Sample Source\tSample\tGenome size", "Urine treatment on the international space station: current practice",
         "Urine Processor Assembly schematic detailing the positions",
         "Supplementary data to this article can be found",
         "CRediT authorship contribution statement", "Hang Ngoc Nguyen: General, Methodology"]),
    "PMC10926278.json": (
        "PMC10926278", "Correction to “Adaptation to full weight‐bearing following disuse in rats",
        "In the above article, the second author's name was spelled incorrectly.", [], []),
    "PMC2824534.json": (
        "PMC2824534", "In vitro generation of mechanically functional cartilage grafts based on adult human stem cells",
        "Degenerative joint disease affects twenty million adults",
        ["INTRODUCTION", "MATERIALS AND METHODS", "Human mesenchymal stem cells", "Effects of culture vessel",
         "CONCLUSION"],
        ["atgattcgcctcggggctcc", "The Elusive Path to Cartilage Regeneration", "Figures and Tables",
         "The 3D-woven PCL scaffold. (A) schematic", "This is a PDF file of an unedited manuscript",
         "Significant effect due to culture vessel"]),
    "PMC4136787_bioc_output_1.json": (
        "PMC4136787", "Mice in Bion-M 1 Space Mission: Training and Selection",
        "After a 16-year hiatus, Russia resumed in 2013 its program of biomedical research in space",
        ["Introduction", "Overview of the Bion-m 1 mission", "Ethical statement", "General Outcomes", "Climate"],
        ["FLIGHT EXPERIMENT: key dates", "Historical overview of the Bion project", "na – data not available.",
         "Schematic diagram of the experiments."]),
    "PMC5116466.json": (
        "PMC5116466", "Corrigendum: High atomic weight, high-energy radiation (HZE) induces transcriptional responses",
        "All of our microarray data has been deposited in the Gene Expression Omnibus",
        ["Accession numbers", "Conflict of interest statement"], []),
}


def test_bioc_real_files(tmp_path, sp):
    folder = data_path("bioc", "pmc_bioc_api_json")
    meta, out = run(tmp_path, "bioc", [folder])
    assert meta["splits"]["train"]["documents"] == 5 and meta["skipped"] == {}
    for text, (name, expect) in zip(texts_of(out, sp), sorted(BIOC.items())):
        check_article(text, expect)
    for name, (pmc, *_) in BIOC.items():  # "10020673" (older shape) and "PMC4136787" (2025): one form
        events = list(cf.bioc_events(open(os.path.join(folder, name), "rb").read(), name))
        assert [e[:2] for e in events] == [("doc", pmc)]
    # the abstract comes right after the title
    assert texts_of(out, sp)[3].startswith("Mice in Bion-M 1 Space Mission: Training and Selection\n\n"
                                           "After a 16-year hiatus, Russia has resumed its program")


def test_bioc_passages_rebuild_the_text():
    """Title, abstract (with its own titles), body paragraphs under their section titles by level; a title_1 whose
    section held only a figure goes; references (whatever their passage type), tables, figures, footnotes and back
    matter go."""
    def p(section, kind, text):
        return {"infons": {"section_type": section, "type": kind}, "offset": 0, "text": text}
    passages = [
        {"infons": {"section_type": "TITLE", "type": "front", "article-id_pmc": "PMC42"}, "text": "The title"},
        p("ABSTRACT", "abstract_title_1", "Background"), p("ABSTRACT", "abstract", "Abstract one."),
        p("INTRO", "title_1", "Introduction"), p("FIG", "fig_caption", "FIGCAPTION"),
        p("METHODS", "title_1", "Methods"), p("METHODS", "title_2", "Design"), p("METHODS", "paragraph", "Para one."),
        p("METHODS", "title_2", "Empty"), p("TABLE", "table", "CELL\tCELL"), p("TABLE", "table_footnote", "TFOOT"),
        p("METHODS", "title_2", "Analysis"), p("METHODS", "paragraph", "Para two."),
        p("RESULTS", "footnote", "FOOTNOTE"), p("ACK_FUND", "title_1", "Funding"), p("ACK_FUND", "paragraph", "FUNDS"),
        p("REF", "title", "References"), p("REF", "paragraph", "REFTEXT"), p("REF", "ref", "REFTITLE")]
    data = json.dumps({"source": "PMC", "documents": [{"id": "x", "passages": passages}]}).encode()
    assert list(cf.bioc_events(data, "w")) == [
        ("doc", "PMC42", "The title\n\nBackground\n\nAbstract one.\n\nMethods\n\nDesign\n\nPara one.\n\n"
                         "Analysis\n\nPara two.", "w")]


def test_bioc_bad_input(tmp_path):
    d = tmp_path / "bioc"
    d.mkdir()
    good = json.load(open(data_path("bioc", "pmc_bioc_api_json", "PMC4136787_bioc_output_1.json")))
    (d / "a.json").write_text(json.dumps(good))
    (d / "b.json").write_text("[Error] : No result can be found.")
    no_id = json.loads(json.dumps(good))
    doc = no_id[0]["documents"][0]
    doc["id"] = "4136787"
    del doc["passages"][0]["infons"]["article-id_pmc"]
    (d / "c.json").write_text(json.dumps(no_id))
    title_only = {"documents": [{"id": "PMC1", "passages": good[0]["documents"][0]["passages"][:2]}]}
    (d / "d.json").write_text(json.dumps(title_only))
    (d / "e.json").write_text(json.dumps([{"documents": [{"id": "PMC2", "passages": {"text": "x"}}]}]))
    meta, _ = run(tmp_path, "bioc", [d])
    assert meta["splits"]["train"]["documents"] == 1
    assert meta["skipped"] == {"invalid_json": 1, "no_pmc_id": 1, "no_body": 1, "bad_bioc": 1}
    ex = meta["skipped_examples"]
    assert ex["invalid_json"][0].startswith(f"{d}/b.json: ") and ex["no_pmc_id"] == [f"{d}/c.json: id 4136787"]
    assert ex["no_body"] == [f"{d}/d.json: PMC4136787"] and ex["bad_bioc"][0].startswith(f"{d}/e.json: ")


# --- all new sources: workers, split keys -------------------------------------------------------------

def test_new_sources_identical_for_any_workers(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.xml").write_bytes(b"<article><body><p>cut")
    inputs = [xml_folder(), data_path("bioc", "pmc_bioc_api_json"), data_path("s2orc_api", S2), bad]
    metas, outs = [], []
    for w in (1, 2):
        meta, out = run(tmp_path, "pmc_xml bioc s2orc pmc_xml", inputs, name=f"w{w}", workers=w, val_fraction=0.3,
                        require_pmc_id="False")
        metas.append(meta)
        outs.append(out)
    same_files(*outs)
    assert metas[0]["skipped"] == metas[1]["skipped"] == {"malformed_xml": 1}
    assert metas[0]["skipped_examples"] == metas[1]["skipped_examples"]
    assert metas[0]["splits"] == metas[1]["splits"] and metas[0]["splits"]["val"]["documents"] > 0
    assert sum(s["documents"] for s in metas[0]["splits"].values()) == 11 + 5 + 3


def test_split_key_is_the_pmc_id_in_every_source(tmp_path):
    """The same paper lands in the same split whatever it was read from: its key is "PMC" + number everywhere."""
    jats = article("4136787")  # the BioC sample's paper, as a bare-number JATS id
    bioc = open(data_path("bioc", "pmc_bioc_api_json", "PMC4136787_bioc_output_1.json"), "rb").read()
    rec = json.loads(open(data_path("s2orc_api", S2), "rb").readline())
    rec["externalids"]["pubmedcentral"] = "4136787"
    keys = {e[1] for e in [*cf.jats_events(jats, "j"), *cf.bioc_events(bioc, "b"),
                           *cf.s2orc_api_events(json.dumps(rec), "s")]}
    assert keys == {"PMC4136787"}
    # and across sources in one run, the paper is written once: the first occurrence wins
    (tmp_path / "a.xml").write_bytes(jats)
    meta, _ = run(tmp_path, "pmc_xml bioc", [tmp_path / "a.xml", data_path("bioc", "pmc_bioc_api_json")])
    assert meta["splits"]["train"]["documents"] == 5
    assert meta["skipped_examples"]["duplicate_pmc_id"][0].endswith("PMC4136787_bioc_output_1.json: PMC4136787")
