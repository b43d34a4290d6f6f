"""Export a survey (survey/document.py) as Markdown, BibTeX and a standalone HTML page.

Every part's text is grounded first (citations.ground against the papers retrieved in the run), so a
citation can only ever point at a reference entry; the agent grounds too, this is the last check.
References are numbered by first citation in write order (abstract, introduction, each section before
its subsections, ..., conclusion), as upstream's json_to_markdown does. A part not written yet shows
its plan, marked as unwritten, so a partial survey (a stopped or failed run) still reads.

Markdown (`to_markdown`), for reading and for pasting elsewhere:

    # Title
    ## Abstract / ## Introduction
    ## 1 Section        ### 1.1 Subsection        #### 1.1.1 Sub-subsection
    ## Conclusion
    ## References
    <a id="ref-1"></a>[1] A. Author, B. Author, C. Author et al., "[Title](https://arxiv.org/abs/ID)", 2024. arXiv:ID

  In the text \\cite{a, b} becomes [[1](#ref-1), [2](#ref-2)]: "[1, 2]" with each number linked to
  its entry. The model's own Markdown is kept (emphasis, lists, code), but it cannot break the
  document's structure: a heading line the model wrote becomes a bold line, a setext underline gets a
  blank line before it, an unclosed code fence is closed at the end of its part, a raw-HTML block
  that would run to the end of the file (<pre>, <script>, <!--, ...) is escaped, and so is a link
  definition ("[1]: url") that would hijack the reference labels. Plans and corpus strings (paper
  titles, authors) are plain text and are escaped.

BibTeX (`to_bibtex`), one entry per cited paper in reference order, keyed as the survey cites it
(citations.paper_key: arxivid<ID>, so \\cite keys in the model's text resolve against it):

    @misc{arxivid2401.01234,
      title = {{Costs \\& benefits of 50\\% sparsity}},  (double braces keep capitals: "MiniCPM4", "LLM")
      author = {A. Author and B. Author},
      year = {2024}, month = jan,
      eprint = {2401.01234}, archivePrefix = {arXiv}, primaryClass = {cs.CL},
      url = {https://arxiv.org/abs/2401.01234},
    }

  Non-arXiv papers are @article when they have a journal, else @misc. LaTeX specials in text fields
  (& % $ # _ { } ~ ^ \\) are escaped, a balanced $...$ is kept as math, and a corpus string that is
  already LaTeX (arXiv metadata writes accents as \\"o) is read as text first. The output reads back
  through survey/corpus/bibtex.py to the same ids, titles and authors (~, ^ and \\ come back as
  their LaTeX names: the reader does not know them).

HTML (`to_html`): one standalone page, UTF-8, inline CSS, no scripts and nothing fetched from
elsewhere, so it opens offline and can be mailed. A table of contents, headings with ids (abstract,
section-1, section-1-2, ..., references), paragraphs, lists and **bold**/*italic*/`code` from the
model's Markdown, citations as links to #ref-N, references linked to arxiv.org. Every string from the
model or the corpus goes through html.escape; a URL that is not http(s) is never made a link.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import quote

from runtime.atomic import atomic_write_text
from runtime.errors import MiniCPMError
from survey.citations import CITE, ground, key_to_id, number_citations, paper_key, split_keys
from survey.corpus.bibtex import latex_to_text
from survey.corpus.paper import Paper, is_arxiv_id, normalize_id
from survey.document import SurveyDocument, parse_position

__all__ = ["references", "to_bibtex", "to_html", "to_markdown", "write_exports"]

UNWRITTEN = "Not written yet."
MAX_AUTHORS = 3  # more than this: the first three, then "et al."


# ---- the survey, grounded and numbered ----------------------------------------------------------

@dataclass
class _Part:
    position: str  # "abstract", "section-1/subsection-2", ...
    depth: int  # 0 for abstract, introduction, conclusion and sections; 1, 2 below
    number: str  # "1.2" for sections, "" for the fixed parts
    heading: str  # plain text: "Abstract", "Sparse attention" (the number is separate)
    anchor: str  # HTML id: "abstract", "section-1-2"
    written: bool
    text: str  # grounded content, or the grounded plan (one line) while unwritten


@dataclass
class _Survey:
    title: str
    parts: list[_Part]
    numbers: dict[str, int]  # paper id -> reference number
    references: list[Paper]  # in reference order: references[n - 1] is [n]


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(text: str) -> str:
    """Model text without control characters (invalid in HTML and XML, and never meant)."""
    return _CONTROL.sub("", text or "").replace("\r\n", "\n").replace("\r", "\n")


def _one_line(text: str) -> str:
    return " ".join(_clean(text).split())


def _no_cites(text: str) -> str:
    """A heading never carries a citation: every \\cite in it is dropped."""
    return _one_line(ground(_clean(text), ())[0])


def _prepare(document: SurveyDocument, papers: Mapping[str, Paper]) -> _Survey:
    by_id = {normalize_id(key): paper for key, paper in papers.items()}
    parts = []
    for position, depth, node in document.walk():
        kind, numbers = parse_position(position)
        written = node.written
        text = ground(_clean(node.content if written else node.plan), by_id)[0]
        parts.append(_Part(
            position=position, depth=depth, number=".".join(map(str, numbers)),
            heading=_no_cites(node.title) if kind == "section" else kind.capitalize(),
            anchor=position.replace("/subsubsection-", "-").replace("/subsection-", "-"),
            written=written, text=text.strip() if written else _one_line(text)))
    numbers = number_citations(part.text for part in parts)
    return _Survey(title=_no_cites(document.title) or _one_line(document.query) or "Survey",
                   parts=parts, numbers=numbers, references=[by_id[paper_id] for paper_id in numbers])


def references(document: SurveyDocument, papers: Mapping[str, Paper]) -> list[Paper]:
    """The papers the survey cites, in reference order (the first is [1]); the same list every
    export shows."""
    return _prepare(document, papers).references


def _cite_numbers(match: re.Match, numbers: dict[str, int]) -> list[int]:
    return sorted({numbers[key_to_id(key)] for key in split_keys(match.group(1)) if key_to_id(key) in numbers})


def _segments(text: str) -> Iterator[tuple[str, re.Match | None]]:
    """text as (plain text, None) and (citation text, its match), in order."""
    last = 0
    for match in CITE.finditer(text):
        yield text[last:match.start()], None
        yield match.group(0), match
        last = match.end()
    yield text[last:], None


def _safe_url(url: str) -> str:
    """url if it is http(s) (a corpus file could carry javascript:...), else ""."""
    url = (url or "").strip()
    return url if re.match(r"https?://[^\s<>\"]+$", url, re.IGNORECASE) else ""


def _plain(text: str) -> str:
    """A corpus string as plain text: LaTeX (arXiv metadata writes accents as \\"o) read as text."""
    text = _one_line(text)
    return latex_to_text(text) if "\\" in text else text


def _authors(paper: Paper) -> str:
    names = [_plain(name) for name in paper.authors if name.strip()]
    if len(names) > MAX_AUTHORS:
        return ", ".join(names[:MAX_AUTHORS]) + " et al."
    return ", ".join(names)


def _identifier(paper: Paper) -> str:
    if is_arxiv_id(paper.id):
        return f"arXiv:{paper.id}"
    return f"doi:{paper.doi}" if paper.doi else ""


# ---- Markdown -----------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&#])")
_ATX = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# CommonMark HTML blocks of kinds 1-5 run until their closing tag, past blank lines and headings.
_LONG_HTML_BLOCK = re.compile(r"^( {0,3})<(?=(?:script|pre|style|textarea)(?:[\s>]|$)|!|\?)", re.IGNORECASE)
_LINK_DEFINITION = re.compile(r"^( {0,3})\[(?=[^\]]*\]:)")
_SCRIPT_TAG = re.compile(r"<(?=/?script)", re.IGNORECASE)


def _md_escape(text: str) -> str:
    """Plain text (a plan, a paper title) that Markdown shows as written."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_body(text: str) -> str:
    """The model's Markdown for one part, unable to break the headings around it."""
    out: list[str] = []
    fence = ""
    for line in text.split("\n"):
        opening = _FENCE.match(line)
        if fence:
            out.append(line)
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence) \
                    and not line.strip().strip(fence[0]):
                fence = ""
            continue
        if opening:
            fence = opening.group(1)
            out.append(line)
            continue
        heading = _ATX.match(line)
        if heading:  # a block of its own, as the heading was
            words = (heading.group(1) or "").strip()
            if out and out[-1].strip():
                out.append("")
            if words:
                out.extend([f"**{words}**", ""])
            continue
        if _SETEXT.match(line) and out and out[-1].strip():  # "text\n---" would make "text" a heading
            out.append("")
        line = _LONG_HTML_BLOCK.sub(r"\1\\<", line)
        line = _LINK_DEFINITION.sub(r"\1\\[", line)
        out.append(_SCRIPT_TAG.sub("&lt;", line))
    if fence:
        out.append(fence)  # an unclosed fence would swallow every heading after it
    return "\n".join(out).strip()


def _md_cite(match: re.Match, numbers: dict[str, int]) -> str:
    return "[" + ", ".join(f"[{n}](#ref-{n})" for n in _cite_numbers(match, numbers)) + "]"


def _md_text(text: str, numbers: dict[str, int], *, plain: bool) -> str:
    """Citations as linked numbers; the rest kept as Markdown (the model's) or escaped (plain)."""
    out = []
    for chunk, match in _segments(text):
        if match is not None:
            out.append(_md_cite(match, numbers))
        else:
            out.append(_md_escape(chunk) if plain else chunk)
    return "".join(out)


def _md_link(text: str, url: str) -> str:
    url = _safe_url(url)
    return f"[{text}]({quote(url, safe=':/?#@!$&*+,;=%~')})" if url else text


def _md_reference(number: int, paper: Paper) -> str:
    title = _md_link(_md_escape(_plain(paper.title)), paper.url)
    fields = [_md_escape(_authors(paper)), f'"{title}"', _md_escape(_plain(paper.journal)),
              str(paper.year or "")]
    entry = ", ".join(field for field in fields if field) + "."
    identifier = _identifier(paper)
    if identifier:
        entry += " " + _md_escape(identifier)
    return f'<a id="ref-{number}"></a>[{number}] {entry}'


def _markdown(survey: _Survey) -> str:
    blocks = [f"# {_md_escape(survey.title)}"]
    for part in survey.parts:
        blocks.append(f"{'#' * (part.depth + 2)} {' '.join(filter(None, [part.number, _md_escape(part.heading)]))}")
        if part.written:
            blocks.append(_md_body(_md_text(part.text, survey.numbers, plain=False)))
        elif part.text:
            blocks.append(f"*{UNWRITTEN} Plan: {_md_text(part.text, survey.numbers, plain=True)}*")
        else:
            blocks.append(f"*{UNWRITTEN}*")
    if survey.references:
        blocks.append("## References")
        blocks.extend(_md_reference(n, paper) for n, paper in enumerate(survey.references, 1))
    return "\n\n".join(block for block in blocks if block) + "\n"


def to_markdown(document: SurveyDocument, papers: Mapping[str, Paper]) -> str:
    """The survey as Markdown with numbered, linked references (see the module docstring)."""
    return _markdown(_prepare(document, papers))


# ---- BibTeX -------------------------------------------------------------------------------------

_TEX_SPECIAL = re.compile(r"[\\{}&%$#_~^]")
_TEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "&": r"\&", "%": r"\%", "$": r"\$",
        "#": r"\#", "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_MATH = re.compile(r"(?<!\\)\$[^$]+(?<!\\)\$")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _tex_text(text: str) -> str:
    """Plain text with LaTeX's specials escaped. BibTeX counts braces even when escaped, so \\{ and
    \\} are only used where they pair up; a lone one is \\textbraceleft{} / \\textbraceright{}."""
    table = _TEX if _balanced(text) else {**_TEX, "{": r"\textbraceleft{}", "}": r"\textbraceright{}"}
    return _TEX_SPECIAL.sub(lambda m: table[m.group(0)], text)


def _bib_text(text: str) -> str:
    """A corpus string as the body of a BibTeX value: escaped, with a balanced $...$ kept as math."""
    text = _plain(text)
    out, last = [], 0
    for math in _MATH.finditer(text):
        if not _balanced(math.group(0)):
            continue
        out.append(_tex_text(text[last:math.start()]))
        out.append(re.sub(r"(?<!\\)([%#&])", r"\\\1", math.group(0)))  # a % in math still ends the line
        last = math.end()
    out.append(_tex_text(text[last:]))
    return "".join(out)


def _bib_name(name: str) -> str:
    """One author; braced when it would otherwise read as two people or as 'Last, First'."""
    text = _bib_text(name)
    return f"{{{text}}}" if re.search(r"\sand\s|,", text, re.IGNORECASE) else text


def _bib_key(paper_id: str) -> str:
    """citations.paper_key, with anything BibTeX or \\cite cannot take in a key replaced."""
    return re.sub(r"[^A-Za-z0-9_:./+-]", "_", paper_key(paper_id)) or "paper"


def _bib_verbatim(text: str) -> str:
    """A DOI or URL as written (styles link it), minus what would unbalance the entry."""
    return _one_line(text).replace("{", "").replace("}", "")


def _bib_entry(paper: Paper, key: str) -> str:
    arxiv = is_arxiv_id(paper.id)
    kind = "misc" if arxiv or not paper.journal else "article"
    fields: list[tuple[str, str]] = [("title", f"{{{{{_bib_text(paper.title)}}}}}")]
    authors = [_bib_name(name) for name in paper.authors if name.strip()]
    if authors:
        fields.append(("author", "{" + " and ".join(authors) + "}"))
    if paper.year:
        fields.append(("year", f"{{{paper.year}}}"))
        month = paper.date[5:7]
        if month.isdigit() and 1 <= int(month) <= 12:
            fields.append(("month", _MONTHS[int(month) - 1]))
    if arxiv:
        fields += [("eprint", f"{{{paper.id}}}"), ("archivePrefix", "{arXiv}")]
        if paper.categories:
            fields.append(("primaryClass", f"{{{_bib_text(paper.categories[0])}}}"))
    if paper.journal:
        fields.append(("journal", f"{{{_bib_text(paper.journal)}}}"))
    if paper.doi:
        fields.append(("doi", f"{{{_bib_verbatim(paper.doi)}}}"))
    if _safe_url(paper.url):
        fields.append(("url", f"{{{_bib_verbatim(paper.url)}}}"))
    body = "".join(f"  {name} = {value},\n" for name, value in fields)
    return f"@{kind}{{{key},\n{body}}}\n"


def _bibtex(survey: _Survey) -> str:
    entries, used = [], set()
    for paper in survey.references:
        key = base = _bib_key(paper.id)
        suffix = 2
        while key in used:  # two odd ids that sanitise to one key
            key, suffix = f"{base}-{suffix}", suffix + 1
        used.add(key)
        entries.append(_bib_entry(paper, key))
    return "\n".join(entries)


def to_bibtex(document: SurveyDocument, papers: Mapping[str, Paper]) -> str:
    """The cited papers as BibTeX entries, in reference order ("" when nothing is cited)."""
    return _bibtex(_prepare(document, papers))


# ---- HTML ---------------------------------------------------------------------------------------

_CSS = """
body { margin: 0; background: #fdfdfc; color: #1d1d1f; font: 17px/1.6 Georgia, "Times New Roman", serif; }
main { max-width: 46rem; margin: 0 auto; padding: 2rem 1.25rem 4rem; }
h1 { font-size: 1.9rem; line-height: 1.25; margin-bottom: 1.5rem; }
h2, h3, h4 { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.3; margin-top: 2rem; }
h2 { font-size: 1.4rem; } h3 { font-size: 1.2rem; } h4 { font-size: 1.05rem; }
a { color: #0b57d0; text-decoration: none; } a:hover { text-decoration: underline; }
nav.toc { border: 1px solid #e3e3e0; border-radius: 6px; padding: 0.5rem 1.25rem; background: #f7f7f5; }
nav.toc h2 { margin-top: 0.5rem; font-size: 1.1rem; }
nav.toc ul { list-style: none; padding-left: 1.1rem; margin: 0.2rem 0; } nav.toc > ul { padding-left: 0; }
nav.toc li.unwritten > a { color: #77777a; font-style: italic; }
p.unwritten { color: #66666a; font-style: italic; border-left: 3px solid #d8d8d4; padding-left: 0.75rem; }
p.minor-heading { margin-bottom: 0.25rem; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.9em; background: #f0f0ed; }
pre { padding: 0.75rem; overflow-x: auto; }
.cite { white-space: nowrap; }
ol.references { list-style: none; padding-left: 0; }
ol.references li { margin: 0.4rem 0; padding-left: 2.6rem; text-indent: -2.6rem; }
ol.references li:target { background: #fff6d5; }
""".strip()

_LIST_ITEM = re.compile(r"^\s{0,3}([-*+]|\d{1,9}[.)])\s+(.*)$")
_RULE = re.compile(r"^ {0,3}(?:-{3,}|\*{3,}|_{3,}|={3,})\s*$")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_CODE = re.compile(r"`([^`\n]+)`")
_HOLE = re.compile("\x00(\\d+)\x00")


def _html_cite(match: re.Match, numbers: dict[str, int]) -> str:
    links = ", ".join(f'<a href="#ref-{n}">{n}</a>' for n in _cite_numbers(match, numbers))
    return f'<span class="cite">[{links}]</span>'


def _html_inline(text: str, numbers: dict[str, int]) -> str:
    """Escaped text with citations as links and the model's **bold**, *italic* and `code`."""
    saved: list[str] = []

    def hole(fragment: str) -> str:  # markup made here, kept out of the escaping and the regexes
        saved.append(fragment)
        return f"\x00{len(saved) - 1}\x00"

    text = CITE.sub(lambda m: hole(_html_cite(m, numbers)), text.replace("\x00", ""))
    text = _CODE.sub(lambda m: hole(f"<code>{escape(m.group(1))}</code>"), text)
    text = escape(text)
    text = _ITALIC.sub(r"<em>\1</em>", _BOLD.sub(r"<strong>\1</strong>", text))
    while _HOLE.search(text):  # a hole can sit inside another (a citation in `code`)
        text = _HOLE.sub(lambda m: saved[int(m.group(1))], text)
    return text


def _html_body(text: str, numbers: dict[str, int]) -> str:
    """The model's Markdown as HTML blocks: paragraphs (blank-line separated), lists, code, rules."""
    blocks: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    ordered = False
    code: list[str] | None = None
    fence = ""

    def flush() -> None:
        nonlocal items
        if paragraph:
            blocks.append(f"<p>{_html_inline(chr(10).join(paragraph), numbers)}</p>")
            paragraph.clear()
        if items:
            tag = "ol" if ordered else "ul"
            blocks.append(f"<{tag}>" + "".join(f"<li>{_html_inline(item, numbers)}</li>" for item in items) + f"</{tag}>")
            items = []

    for line in text.split("\n"):
        opening = _FENCE.match(line)
        if code is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence) \
                    and not line.strip().strip(fence[0]):
                blocks.append(f"<pre><code>{escape(chr(10).join(code))}</code></pre>")
                code = None
            else:
                code.append(line)
            continue
        if opening:
            flush()
            code, fence = [], opening.group(1)
            continue
        heading, item = _ATX.match(line), _LIST_ITEM.match(line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            if (heading.group(1) or "").strip():
                blocks.append(f'<p class="minor-heading"><strong>{_html_inline(heading.group(1).strip(), numbers)}</strong></p>')
        elif _RULE.match(line):
            flush()
            blocks.append("<hr>")
        elif item:
            is_ordered = item.group(1)[0].isdigit()
            if paragraph or (items and is_ordered != ordered):
                flush()
            ordered = is_ordered
            items.append(item.group(2))
        elif items:
            items[-1] += "\n" + line.strip()  # a continuation line of the last item
        else:
            paragraph.append(line)
    flush()
    if code is not None:
        blocks.append(f"<pre><code>{escape(chr(10).join(code))}</code></pre>")
    return "\n".join(blocks)


def _html_link(text: str, url: str) -> str:
    url = _safe_url(url)
    return f'<a href="{escape(url)}">{text}</a>' if url else text


def _html_reference(number: int, paper: Paper) -> str:
    title = _html_link(escape(_plain(paper.title)), paper.url)
    fields = [escape(_authors(paper)), f"\u201c{title}\u201d", escape(_plain(paper.journal)), str(paper.year or "")]
    entry = ", ".join(field for field in fields if field) + "."
    identifier = _identifier(paper)
    if identifier:
        entry += " " + escape(identifier)
    return f'<li id="ref-{number}"><span class="ref-number">[{number}]</span> {entry}</li>'


def _html_toc(survey: _Survey) -> str:
    entries = [(part.depth, part.anchor, " ".join(filter(None, [part.number, part.heading])), part.written)
               for part in survey.parts]
    if survey.references:
        entries.append((0, "references", "References", True))
    out, depth = [], -1
    for entry_depth, anchor, label, written in entries:
        if entry_depth > depth:
            out.append("<ul>" * (entry_depth - depth))
        else:
            out.append("</li></ul>" * (depth - entry_depth) + "</li>")
        depth = entry_depth
        mark = "" if written else ' class="unwritten"'
        out.append(f'<li{mark}><a href="#{anchor}">{escape(label)}</a>')
    out.append("</li></ul>" * (depth + 1))
    return '<nav class="toc" aria-label="Contents">\n<h2>Contents</h2>\n' + "\n".join(out) + "\n</nav>"


def _html(survey: _Survey) -> str:
    title = escape(survey.title)
    body = [f"<h1>{title}</h1>", _html_toc(survey)]
    for part in survey.parts:
        level = part.depth + 2
        label = " ".join(filter(None, [escape(part.number), escape(part.heading)]))
        body.append(f'<h{level} id="{part.anchor}">{label}</h{level}>')
        if part.written:
            body.append(_html_body(part.text, survey.numbers))
        else:
            plan = f" Plan: {_html_inline(part.text, survey.numbers)}" if part.text else ""
            body.append(f'<p class="unwritten"><em>{UNWRITTEN}</em>{plan}</p>')
    if survey.references:
        body.append('<h2 id="references">References</h2>')
        body.append('<ol class="references">\n'
                    + "\n".join(_html_reference(n, paper) for n, paper in enumerate(survey.references, 1))
                    + "\n</ol>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{title}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def to_html(document: SurveyDocument, papers: Mapping[str, Paper]) -> str:
    """The survey as one standalone HTML page (see the module docstring)."""
    return _html(_prepare(document, papers))


# ---- files --------------------------------------------------------------------------------------

def write_exports(document: SurveyDocument, papers: Mapping[str, Paper], *, markdown: str | Path | None = None,
                  bibtex: str | Path | None = None, html: str | Path | None = None) -> list[Path]:
    """Write the formats asked for, each atomically (a reader never sees half a file); returns the
    paths written. Every target is checked before anything is written: its folder must exist (it is
    not created, so a typo in a path is not silently a new folder) and it must not be a folder."""
    targets = [(Path(path), render) for path, render in ((markdown, _markdown), (bibtex, _bibtex), (html, _html))
               if path is not None]
    seen: set[Path] = set()
    for path, _ in targets:
        if not path.parent.is_dir():
            raise MiniCPMError(f"cannot write {path}: the folder {path.parent} does not exist (create it first)")
        if path.is_dir():
            raise MiniCPMError(f"cannot write {path}: it is a folder; give a file name")
        if path.resolve() in seen:
            raise MiniCPMError(f"cannot write two formats to the same file {path}")
        seen.add(path.resolve())
    survey = _prepare(document, papers)
    written = []
    for path, render in targets:
        try:
            atomic_write_text(path, render(survey))
        except OSError as exc:
            raise MiniCPMError(f"cannot write {path}: {exc.strerror or exc}") from exc
        written.append(path)
    return written
