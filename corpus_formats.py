"""
The PMC corpus as people download it today, raw bytes -> plain text. prepare_corpus.py calls these in its worker
pool, so that XML and JSON parsing scales with --workers like tokenizing does.

    jats_events       JATS / NLM XML: one article (.xml, .nxml, a bulk-package member), an E-utilities EFetch
                      <pmc-articleset> or an OAI-PMH GetRecord response holding one or more <article>
    s2orc_api_events  one JSON line of the S2ORC dataset of the Semantic Scholar Datasets API (2023+ releases)
    bioc_events       BioC JSON of PMC articles (PMC BioC API, PubTator): collections, documents, passages

Each takes the raw bytes of one unit, its location and the Filters, and yields events, never raises on bad input:
    ("doc", key, text, where)          key: the normalised PMC id ("PMC1234567") when there is one
    ("skip", reason, where, detail)    counted in meta.json by reason, with the first locations
Text of every format: title, abstract(s), then the body's paragraphs under their section titles, blocks joined by
blank lines. Left out: references, tables, figures and their captions, formulas, supplementary material, front
matter (authors, affiliations, venue) and back matter (acknowledgements, notes, appendices).
Standard library only; nothing in the input is ever fetched or executed (no DTD, no external entity).
corpus_sources.py maps each --source to its parser here.
"""
import html.entities
import json
import re
import xml.etree.ElementTree as ET
from bisect import bisect_right
from dataclasses import dataclass
from xml.parsers import expat

_PMC_ID = re.compile(r"(?:PMC)?0*([1-9]\d{0,8})(?:\.\d+)?", re.I)


def pmc_id(value):
    """'PMC1234567', '1234567' (older files, S2ORC), 1234567, 'PMC1234567.2' (a versioned id) -> 'PMC1234567':
    one form for meta and the split key; anything else -> None."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    m = _PMC_ID.fullmatch(str(value).strip())
    return f"PMC{m.group(1)}" if m and m.group(1) else None


NOT_PAPERS = ("correction", "retraction", "partial-retraction", "expression-of-concern", "in-brief")


@dataclass(frozen=True)
class Filters:
    """Which articles the parsers keep: those with a PMC id (PMC-LLaMA's filter; False keeps all), and (JATS) not
    the article types that are not papers."""
    require_pmc_id: bool = True
    skip_article_types: frozenset = frozenset(NOT_PAPERS)


def _flush(buf, out):
    """Close the paragraph being built: XML whitespace collapsed (pretty-printed files indent inside <p>)."""
    text = re.sub(r"[ \t\r\n]+", " ", "".join(buf)).strip()
    if text:
        out.append(text)
    buf.clear()


# -----------------------------------------------------------------------------
# JATS / NLM XML

# Elements left out with everything inside them (a space keeps the words around them apart). <label> is the number
# of a section, list item or box; <alternatives> wraps another representation of a figure, table or formula.
JATS_DROP = frozenset("""table-wrap table-wrap-group table array fig fig-group graphic inline-graphic media
    disp-formula disp-formula-group inline-formula tex-math math {http://www.w3.org/1998/Math/MathML}math
    chem-struct-wrap supplementary-material ref-list alternatives label break""".split())
# Elements that start a paragraph of their own wherever they sit (a <list> or <boxed-text> may sit inside a <p>).
JATS_BLOCK = frozenset("""p title caption list list-item def-list def-item term def boxed-text disp-quote speech
    statement verse-group verse-line fn fn-group glossary preformat code question answer explanation""".split())
XML_ENTITIES = {name: chr(cp) for name, cp in html.entities.name2codepoint.items()}  # &nbsp; etc. without the DTD
XML_NAMESPACES = {b"xlink": b"http://www.w3.org/1999/xlink", b"mml": b"http://www.w3.org/1998/Math/MathML",
                  b"xsi": b"http://www.w3.org/2001/XMLSchema-instance", b"ali": b"http://www.niso.org/schemas/ali/1.0/",
                  b"oasis": b"http://www.niso.org/standards/z39-96/ns/oasis-exchange/table"}
_DEFAULT_NS = re.compile(rb"xmlns\s*=")
_UNBOUND_PREFIX = expat.errors.codes[expat.errors.XML_ERROR_UNBOUND_PREFIX]
_UNDEFINED_ENTITY = expat.errors.codes[expat.errors.XML_ERROR_UNDEFINED_ENTITY]
# the prolog (BOM, declaration, comments, processing instructions, DOCTYPE) and the root element's name
_ROOT = re.compile(rb"\A(?:\xef\xbb\xbf)?(?:\s|<\?.*?\?>|<!--.*?-->|<!DOCTYPE(?:[^\[>]|\[.*?\])*>)*"
                   rb"<([A-Za-z_][\w.:-]*)", re.S)


def _repair(data, code):
    """The document with what expat refused fixed, or None. Some real files use xlink:/mml: without declaring them:
    every prefix in use that the root does not declare gets declared on the root. A named entity (&nbsp;) in a
    file without a DOCTYPE: a DOCTYPE is added, so that expat leaves it to our table instead of failing."""
    m = _ROOT.match(data) if code in (_UNBOUND_PREFIX, _UNDEFINED_ENTITY) else None
    if not m:
        return None
    if code == _UNBOUND_PREFIX:
        root_tag = data[m.end():data.find(b">", m.end())]
        declared = set(re.findall(rb"xmlns:([A-Za-z_][\w.-]*)\s*=", root_tag)) | {b"xml", b"xmlns"}
        used = set(re.findall(rb"[<\s/]([A-Za-z_][\w.-]*):[A-Za-z_]", data)) - declared
        if not used:
            return None
        decl = b"".join(b' xmlns:%s="%s"' % (p, XML_NAMESPACES.get(p, b"urn:undeclared:" + p)) for p in sorted(used))
        return data[:m.end()] + decl + data[m.end():]
    if code == _UNDEFINED_ENTITY and b"<!DOCTYPE" not in data[:m.start(1)]:
        at = m.start(1) - 1
        return data[:at] + b'<!DOCTYPE %s SYSTEM "undeclared.dtd">' % m.group(1) + data[at:]
    return None


def parse_xml(data):
    """bytes -> the root Element. JATS elements have no namespace, except under a default one (the OAI-PMH
    <article>): then every tag loses its namespace (a loop over all elements: only when needed)."""
    for _ in range(3):
        parser = ET.XMLParser()
        parser.entity.update(XML_ENTITIES)
        try:
            parser.feed(data)
            root = parser.close()
            break
        except ET.ParseError as e:
            data = _repair(data, e.code)
            if data is None:
                raise
    else:
        raise ET.ParseError("still malformed after repairs")
    if _DEFAULT_NS.search(data):
        for el in root.iter():
            if el.tag[:1] == "{":
                el.tag = el.tag.partition("}")[2]
    return root


def _flow(el, buf, out, skip=()):
    """el's text in reading order: inline markup (italic, xref, sup) keeps its text in the paragraph being built;
    a block child closes that paragraph first (a table inside a <p> never fuses its cells into it)."""
    if el.text:
        buf.append(el.text)
    for ch in el:
        tag = ch.tag
        if tag in skip:
            pass
        elif tag in JATS_DROP:
            buf.append(" ")
        elif tag == "sec":
            _flush(buf, out)
            _section(ch, out)
        elif tag in JATS_BLOCK:
            _flush(buf, out)
            _flow(ch, buf, out)
            _flush(buf, out)
        else:
            _flow(ch, buf, out)
        if ch.tail:
            buf.append(ch.tail)


class _Title(str):
    """A section title among the blocks: an article whose body has titles only has no body text."""


def _section(sec, out):
    """A section's title, then its paragraphs and subsections in order (the title stays when all the section held
    was figures or supplementary files: every section title of the body is in the text)."""
    out.append(_Title(_inline(sec.find("title"))))
    buf = []
    _flow(sec, buf, out, skip=("title", "sec-meta"))
    _flush(buf, out)


def _inline(el):
    if el is None:
        return ""
    parts, buf = [], []
    _flow(el, buf, parts)
    _flush(buf, parts)
    return " ".join(parts)


def _blocks(el):
    out, buf = [], []
    if el is not None:
        _flow(el, buf, out)
        _flush(buf, out)
    return [t for t in out if t]


def _jats_pmc(meta):
    for kind in ("pmc", "pmcid", "pmcid-ver"):
        for a in meta.findall("article-id"):
            if a.get("pub-id-type") == kind and (p := pmc_id(a.text or "")):
                return p
    return None


def jats_events(data, where, filters=Filters()):
    try:
        root = parse_xml(data)
    except ET.ParseError as e:
        yield "skip", "malformed_xml", where, str(e)
        return
    articles = list(root.iter("article"))
    if not articles:
        yield "skip", "no_article", where, f"root <{root.tag}>"
    for i, art in enumerate(articles, 1):
        w = where if len(articles) == 1 else f"{where}#{i}"
        kind = (art.get("article-type") or "").strip().lower()
        meta = art.find("front/article-meta")
        meta = meta if meta is not None else ET.Element("article-meta")
        pmc = _jats_pmc(meta)
        if kind in filters.skip_article_types:
            yield "skip", f"article_type:{kind}", w, pmc or ""
            continue
        if pmc is None and filters.require_pmc_id:
            yield "skip", "no_pmc_id", w, ""
            continue
        body = _blocks(art.find("body"))
        if all(isinstance(b, _Title) for b in body):
            yield "skip", "no_body", w, pmc or ""
            continue
        head = [_inline(meta.find("title-group/article-title"))]
        for abstract in meta.findall("abstract"):
            head += _blocks(abstract)
        yield "doc", pmc or w, "\n\n".join(t for t in head + body if t), w


# -----------------------------------------------------------------------------
# S2ORC, Semantic Scholar Datasets API schema

# annotation keys whose spans hold no body text: a paragraph or header inside one of them is left out
S2_OUTSIDE = ("title", "abstract", "author", "authoraffiliation", "venue", "publisher", "bibentry", "figure", "table",
              "formula")


class _BadSpans(ValueError):
    pass


def _spans(value, n):
    """An annotation value (a JSON string of [{"start", "end", "attributes"?}], or null) -> sorted (start, end),
    checked against the text's length n in code points."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise _BadSpans("bad_annotations", f"undecodable: {e}")
    if not isinstance(value, list):
        raise _BadSpans("bad_annotations", f"not a list: {type(value).__name__}")
    out = []
    for s in value:
        if not isinstance(s, dict):
            raise _BadSpans("bad_annotations", f"span is not an object: {s!r:.80}")
        a, b = s.get("start"), s.get("end")
        if type(a) is not int or type(b) is not int or not 0 <= a <= b <= n:
            raise _BadSpans("span_out_of_range", f"[{a!r}, {b!r}) in a text of {n} characters")
        out.append((a, b))
    return sorted(out)


def _inside_any(spans):
    """A test (a, b) -> whether [a, b) lies inside the union of spans (merged, then found by bisection)."""
    merged = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    starts = [a for a, _ in merged]

    def inside(a, b):
        i = bisect_right(starts, a) - 1
        return i >= 0 and b <= merged[i][1]
    return inside


def _s2_body(text, spans):
    """The body's paragraphs in order, each under the section headers above it, none inside a span that holds no
    body text (S2_OUTSIDE)."""
    outside = _inside_any(s for k in S2_OUTSIDE for s in spans[k])
    blocks = sorted([(a, b, 0) for a, b in spans["sectionheader"]] + [(a, b, 1) for a, b in spans["paragraph"]])
    headers, body = [], []
    for a, b, is_paragraph in blocks:
        t = text[a:b].strip()
        if not t or outside(a, b):
            continue
        if is_paragraph:  # headers count only above a paragraph (Grobid also marks "Figure 2" or a running head)
            body += headers + [t]
            headers = []
        else:
            headers.append(t)
    return body


def s2orc_api_events(line, where, filters=Filters()):
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        yield "skip", "invalid_json", where, str(e)
        return
    content = rec.get("content") if isinstance(rec, dict) else None
    if not isinstance(content, dict):
        yield "skip", "not_s2orc_record", where, "no content object (the Datasets API schema has one)"
        return
    ext = rec.get("externalids", rec.get("externalIds")) or {}
    ext = {str(k).lower(): v for k, v in ext.items()} if isinstance(ext, dict) else {}
    pmc = pmc_id(ext.get("pubmedcentral"))
    corpus = f"CorpusId:{rec.get('corpusid', rec.get('corpusId', '?'))}"
    if pmc is None and filters.require_pmc_id:
        yield "skip", "no_pmc_id", where, corpus
        return
    text, ann = content.get("text"), content.get("annotations") or {}
    if not isinstance(text, str) or not text.strip():
        yield "skip", "no_text", where, corpus
        return
    if not isinstance(ann, dict):
        yield "skip", "bad_annotations", where, f"{corpus}: annotations is not an object"
        return
    try:
        spans = {k: _spans(ann.get(k), len(text)) for k in S2_OUTSIDE + ("sectionheader", "paragraph")}
    except _BadSpans as e:
        yield "skip", e.args[0], where, f"{corpus}: {e.args[1]}"
        return
    title = next((t for a, b in spans["title"] if (t := text[a:b].strip())), "")  # the header's, not the repeat
    parts = [title] + [text[a:b].strip() for a, b in spans["abstract"]]
    body = _s2_body(text, spans)
    if not body:
        yield "skip", "no_body", where, pmc or corpus
        return
    yield "doc", pmc or corpus, "\n\n".join(t for t in parts + body if t), where


# -----------------------------------------------------------------------------
# BioC JSON (PMC BioC API, PubTator)

# passages that are not title, abstract or body text, by section_type and by type
BIOC_SKIP_SECTIONS = frozenset("REF TABLE FIG SUPPL ACK_FUND AUTH_CONT COMP_INT ABBR APPENDIX REVIEW_INFO".split())
BIOC_SKIP_TYPES = ("ref", "table", "fig", "footnote")  # prefixes: table_caption, fig_title_caption, ...
_BIOC_TITLE = re.compile(r"(?:abstract_)?title(?:_(\d+))?")


def _bioc_documents(obj):
    """Documents of a list of collections (PMC BioC API), one collection, a PubTator export, or bare documents."""
    if isinstance(obj, list):
        for x in obj:
            yield from _bioc_documents(x)
    elif isinstance(obj, dict):
        if "passages" in obj:
            yield obj
        elif isinstance(obj.get("documents"), list):
            yield from _bioc_documents(obj["documents"])
        elif isinstance(obj.get("PubTator3"), list):
            yield from _bioc_documents(obj["PubTator3"])


def _bioc_text(passages):
    """(title, abstract + body blocks, number of body paragraphs). Section titles (title_N) count only above a
    paragraph of their section: a title_1 whose section held only figures is dropped when the next title_1 comes."""
    title, blocks, pending, n_body = "", [], [], 0
    for p in passages:
        if not isinstance(p, dict) or not isinstance(p.get("text"), str):
            raise ValueError("a passage without text")
        infons = p.get("infons") if isinstance(p.get("infons"), dict) else {}
        section = str(infons.get("section_type", "")).upper()
        kind = str(infons.get("type", "")).lower()
        text = p["text"].strip()
        if not text:
            continue
        if section in BIOC_SKIP_SECTIONS or kind.startswith(BIOC_SKIP_TYPES):
            continue
        if section == "TITLE" or kind == "front" or (kind == "title" and not section):  # PubTator: no section_type
            title = title or text
        elif m := _BIOC_TITLE.fullmatch(kind):
            level = int(m.group(1) or 1)
            pending = [(lv, t) for lv, t in pending if lv < level] + [(level, text)]
        else:
            blocks += [t for _, t in pending] + [text]
            pending = []
            n_body += section != "ABSTRACT" and kind != "abstract"
    return title, blocks, n_body


def bioc_events(data, where, filters=Filters()):
    try:
        objs = [json.loads(data)]
    except (json.JSONDecodeError, UnicodeDecodeError):
        try:  # one JSON value per line (PubTator's streamed exports)
            objs = [json.loads(line) for line in data.splitlines() if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            yield "skip", "invalid_json", where, str(e)
            return
    docs = list(_bioc_documents(objs))
    if not docs:
        yield "skip", "no_bioc_document", where, "no collection/document/passages structure"
    for i, doc in enumerate(docs, 1):
        w = where if len(docs) == 1 else f"{where}#{i}"
        passages = doc.get("passages")
        if not isinstance(passages, list):
            yield "skip", "bad_bioc", w, "passages is not a list"
            continue
        front = next((p.get("infons") for p in passages if isinstance(p, dict) and isinstance(p.get("infons"), dict)
                      and "article-id_pmc" in p["infons"]), {})
        doc_id = str(doc.get("id", ""))
        pmc = pmc_id(front.get("article-id_pmc", "")) or (pmc_id(doc_id) if doc_id.upper().startswith("PMC") else None)
        if pmc is None and filters.require_pmc_id:
            yield "skip", "no_pmc_id", w, f"id {doc_id}"
            continue
        try:
            title, blocks, n_body = _bioc_text(passages)
        except ValueError as e:
            yield "skip", "bad_bioc", w, str(e)
            continue
        if not n_body:
            yield "skip", "no_body", w, pmc or doc_id
            continue
        yield "doc", pmc or (f"bioc:{doc_id}" if doc_id else w), "\n\n".join([title] + blocks if title else blocks), w


# -----------------------------------------------------------------------------
# WikiExtractor output (what people make from Wikipedia dumps): general text for replay

_WIKI_DOC = re.compile(r'<doc id="([^"]*)"[^>]*>\n(.*?)\n</doc>\n?', re.S)


def wikiextractor_events(data, where, filters=Filters()):
    """A WikiExtractor file: pages `<doc id="N" url=... title="T">`, the title line, the body, `</doc>`. The `<doc>`
    lines are stripped and the text kept as WikiExtractor wrote it; a title-only page (a redirect, an empty stub) and
    anything outside a closed <doc> are skipped and counted."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield "skip", "invalid_utf8", where, str(e)
        return
    end = 0
    for m in _WIKI_DOC.finditer(text):
        if text[end:m.start()].strip():
            yield "skip", "outside_doc", f"{where}:{text.count(chr(10), 0, end) + 1}", text[end:m.start()][:60]
        end = m.end()
        page_id, body = m.group(1), m.group(2).strip()
        line = f"{where}:{text.count(chr(10), 0, m.start()) + 1}"
        if "\n" not in body:  # the title line alone
            yield "skip", "title_only", line, page_id
        else:
            yield "doc", f"wiki:{page_id}", body, line
    if text[end:].strip():
        yield "skip", "unclosed_doc", f"{where}:{text.count(chr(10), 0, end) + 1}", text[end:][:60]
