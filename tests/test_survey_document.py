"""The survey document (survey/document.py), citations (survey/citations.py) and the exports
(survey/export.py): hand-made papers and documents, no model, no network."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import MiniCPMError
from survey.citations import Removed, cited_ids, ground, key_to_id, number_citations, paper_key, replace_citations
from survey.corpus.bibtex import BibEntry, parse_bibtex
from survey.corpus.paper import Paper
from survey.corpus.readers import paper_from_bibtex
from survey.document import PlanError, SurveyDocument, parse_position
from survey.export import references, to_bibtex, to_html, to_markdown, write_exports

PLAN = {
    "title": "Sparse Attention for Small Models",
    "abstract": {"plan": "What the survey covers."},
    "introduction": {"plan": "Why long context matters on devices."},
    "sections": [
        {"title": "Foundations", "plan": "Attention and its cost.", "subsections": [
            {"title": "Dense attention", "plan": "Quadratic cost.", "subsubsections": [
                {"title": "Kernels", "plan": "FlashAttention."}]},
            {"title": "Sparse patterns", "plan": "Block sparsity."}]},
        {"title": "Trainable sparsity", "plan": "InfLLM v2 and NSA."},
    ],
    "conclusion": {"plan": "Open problems."},
}
POSITIONS = ["abstract", "introduction", "section-1", "section-1/subsection-1", "section-1/subsection-1/subsubsection-1",
             "section-1/subsection-2", "section-2", "conclusion"]


def planned() -> SurveyDocument:
    document = SurveyDocument(query="sparse attention")
    document.apply_plan(json.loads(json.dumps(PLAN)))
    return document


def write_all(document: SurveyDocument, texts: dict[str, str] | None = None) -> SurveyDocument:
    for position in document.positions():
        document.update(position, (texts or {}).get(position, f"Text of {position}."))
    return document


# ---- document -----------------------------------------------------------------------------------

def test_positions_walk_and_labels_follow_the_write_order():
    document = planned()
    assert document.positions() == POSITIONS
    assert [(position, depth) for position, depth, _ in document.walk()] == list(zip(POSITIONS, [0, 0, 0, 1, 2, 1, 0, 0]))
    assert document.title == "Sparse Attention for Small Models"
    assert document.node("section-1/subsection-1/subsubsection-1").title == "Kernels"
    assert document.label("section-1/subsection-2") == "1.2 Sparse patterns"
    assert document.label("introduction") == "Introduction"


@pytest.mark.parametrize("spelling, canonical", [
    ("section-1/subsction-2", "section-1/subsection-2"),  # upstream's prompt spells it so
    ("Section-1/Subsection-1/Subsubsction-1", "section-1/subsection-1/subsubsection-1"),
    ("section-1/subsection-1/subsubection-1", "section-1/subsection-1/subsubsection-1"),
    ('"section-2"', "section-2"),
])
def test_misspelled_and_quoted_positions_are_read(spelling, canonical):
    document = planned()
    assert document.update(spelling, "Written.") == canonical
    assert document.node(canonical).content == "Written."


@pytest.mark.parametrize("position, message", [
    ("section-0", "numbers start at 1"),
    ("subsection-1", "level 1 must be 'section-N'"),
    ("section-1/section-1", "level 2 must be 'subsection-N'"),
    ("section-1/subsubection-1", "level 2 must be 'subsection-N'"),  # a sub-subsection is not a subsection
    ("section-3", "there is no section-3: the survey has 2 section(s)"),
    ("section-1/subsection-3", "there is no section-1/subsection-3: section-1 has 2 subsection(s)"),
    ("section-2/subsection-1", "section-2 has 0 subsection(s)"),
    ("chapter-1", "unknown position 'chapter-1'"),
    ("section-1/subsection-1/subsubsection-1/subsubsection-1", "unknown position"),
    ("section-x", "level 1 must be 'section-N'"),
])
def test_bad_positions_are_rejected_with_the_reason(position, message):
    with pytest.raises(PlanError, match=re.escape(message)):
        planned().update(position, "text")


def test_title_and_plan_are_not_parts_with_content():
    with pytest.raises(PlanError, match="not a part with content"):
        planned().node("title")
    assert parse_position("title") == ("title", ())


def _with(**changes):
    plan = json.loads(json.dumps(PLAN))
    plan.update(changes)
    return plan


@pytest.mark.parametrize("plan, message", [
    ([], "must be a JSON object"),
    ({"title": "x"}, "non-empty list of sections"),
    (_with(sections=[]), "non-empty list of sections"),
    (_with(title=3), "title must be a string"),
    (_with(sections=["Intro"]), "section-1 must be an object"),
    (_with(sections=[{"plan": "no title"}]), "section-1 needs a title"),
    (_with(sections=[{"title": "A", "plan": ["x"]}]), "section-1's plan must be text"),
    (_with(sections=[{"title": "A", "subsections": "B"}]), "section-1's subsections must be a list"),
    (_with(sections=[{"title": "A", "subsections": [{"title": " "}]}]), "section-1/subsection-1 needs a title"),
    (_with(abstract=3), "the plan's abstract must be"),
    (_with(conclusion={"plan": 3}), "the plan's conclusion must be"),
    (_with(sections=[{"title": f"S{i}"} for i in range(21)]), "at most 20 sections"),
    (_with(sections=[{"title": "A", "subsections": [{"title": "B", "subsubsections": [
        {"title": "C", "subsubsubsections": [{"title": "D"}]}]}]}]), "at most three levels"),
])
def test_bad_plans_are_rejected_with_the_reason(plan, message):
    document = SurveyDocument(query="q")
    with pytest.raises(PlanError, match=re.escape(message)):
        document.apply_plan(plan)
    assert not document.planned


def test_a_plan_has_at_most_three_levels_but_an_empty_fourth_list_is_no_level():
    plan = _with(sections=[{"title": "A", "subsections": [{"title": "B", "subsubsections": [
        {"title": "C", "plan": "leaf", "subsubsubsections": []}]}]}])
    document = SurveyDocument(query="q")
    document.apply_plan(plan)
    assert document.positions()[2:5] == ["section-1", "section-1/subsection-1", "section-1/subsection-1/subsubsection-1"]


def test_the_plan_is_taken_once_and_strings_are_accepted_for_fixed_parts():
    document = SurveyDocument(query="q")
    assert document.next_unwritten() == "plan" and not document.planned
    assert document.update("plan", _with(title="  Two\n lines ", abstract="Say it briefly.")) == "plan"
    assert document.title == "Two lines" and document.abstract.plan == "Say it briefly."
    with pytest.raises(PlanError, match="already has a plan"):
        document.update("plan", PLAN)
    with pytest.raises(PlanError, match="already has a plan"):
        document.apply_plan(PLAN)


def test_updates_check_what_the_model_sent():
    with pytest.raises(PlanError, match="no plan yet"):
        SurveyDocument(query="q").update("abstract", "text")
    document = planned()
    for empty in ("", "   ", None, {"text": "x"}):
        with pytest.raises(PlanError, match="must be non-empty text"):
            document.update("abstract", empty)
    assert document.update("ABSTRACT", "  Abstract text.\n") == "abstract"
    assert document.abstract.content == "Abstract text."
    assert document.update("title", "A  better\ntitle") == "title" and document.title == "A better title"
    document.update("abstract", "Rewritten.")  # a part may be written again
    assert document.abstract.content == "Rewritten."


def test_next_unwritten_walks_the_write_order_to_the_conclusion():
    document = planned()
    seen = []
    while (position := document.next_unwritten()) is not None:
        assert not document.complete
        seen.append(position)
        document.update(position, f"Text of {position}.")
    assert seen == POSITIONS  # the conclusion too: upstream could finish without it
    assert document.complete
    document.title = ""
    assert not document.complete  # no title, not complete


def test_the_abbreviated_view_is_what_the_model_sees():
    assert SurveyDocument(query="q").abbreviated() == "(empty: no plan yet)"
    document = planned()
    document.update("abstract", "An abstract that is long enough to be cut in the other parts but not here.")
    document.update("introduction", "x" * 60)
    document.update("section-1/subsection-1", "Short.")
    lines = document.abbreviated().splitlines()
    assert lines[0] == "title: Sparse Attention for Small Models"
    assert lines[1] == "abstract: An abstract that is long enough to be cut in the other parts but not here."
    assert lines[2] == f"introduction: [OK] {'x' * 50}..."
    assert lines[3] == "section-1: Foundations: [PLAN] Attention and its cost."
    assert lines[4] == "  section-1/subsection-1: Dense attention: [OK] Short."
    assert lines[5] == "    section-1/subsection-1/subsubsection-1: Kernels: [PLAN] FlashAttention."
    assert lines[-1] == "conclusion: [PLAN] Open problems."
    assert len(lines) == 9


def test_to_dict_and_from_dict_round_trip_through_json():
    document = write_all(planned())
    document.node("section-2").content = ""  # a partial survey survives too
    raw = json.loads(json.dumps(document.to_dict()))
    again = SurveyDocument.from_dict(raw)
    assert again == document
    assert again.to_dict() == document.to_dict()
    assert again.next_unwritten() == "section-2"
    assert SurveyDocument.from_dict({"query": "q"}) == SurveyDocument(query="q")


# ---- citations ----------------------------------------------------------------------------------

def test_keys_name_papers_in_every_spelling():
    assert paper_key("2401.01234") == "arxivid2401.01234"
    assert paper_key("smith2020") == "smith2020"
    for key in ("arxivid2401.01234", "arXiv:2401.01234v2", "2401.01234", "2401.01234v3", "ARXIVID2401.01234",
                "arxivid:2401.01234", "https://arxiv.org/abs/2401.01234"):
        assert key_to_id(key) == "2401.01234", key
    assert key_to_id(" smith2020 ") == "smith2020"


def test_ground_removes_unknown_keys_and_empty_cites_with_their_space():
    known = {"2401.01234", "2402.05678", "smith2020"}
    text, removed = ground("Sparse attention helps \\cite{arxivid9999.99999}. It scales \\cite{}, they say.", known)
    assert text == "Sparse attention helps. It scales, they say."
    assert removed == [Removed("arxivid9999.99999", "not among the papers retrieved in this run")]
    text, removed = ground("Both \\cite{arxivid2401.01234, bogus, 2402.05678}.", known)
    assert text == "Both \\cite{arxivid2401.01234, arxivid2402.05678}."
    assert [r.key for r in removed] == ["bogus"]


def test_ground_keeps_known_keys_and_canonicalises_them():
    known = {"2401.01234", "smith2020"}
    text, removed = ground("A \\cite{arXiv:2401.01234v2} B \\citep[see][]{2401.01234} "
                           "C \\cite{2401.01234, arxivid2401.01234v1, smith2020}.", known)
    assert text == ("A \\cite{arxivid2401.01234} B \\cite{arxivid2401.01234} "
                    "C \\cite{arxivid2401.01234, smith2020}.")
    assert removed == []
    assert ground("No citations here.", known) == ("No citations here.", [])
    assert ground("X \\cite{2401.01234}", lambda paper_id: paper_id.startswith("24"))[0] == "X \\cite{arxivid2401.01234}"


def test_number_citations_orders_by_first_appearance_across_parts():
    parts = ["Intro \\cite{arxivid2402.00002} and \\cite{arxivid2401.00001}.",
             "Body \\cite{2403.00003, arxivid2401.00001}.",
             "Again \\cite{arxivid2402.00002}; new \\cite{smith2020}."]
    assert cited_ids(parts[1]) == ["2403.00003", "2401.00001"]
    assert number_citations(parts) == {"2402.00002": 1, "2401.00001": 2, "2403.00003": 3, "smith2020": 4}
    assert replace_citations("a \\cite{x, arxivid2401.00001} b", lambda ids: "|".join(ids)) == "a x|2401.00001 b"


# ---- exports ------------------------------------------------------------------------------------

def make_papers() -> dict[str, Paper]:
    papers = [
        Paper("2401.00001", "InfLLM v2: Trainable Sparse Attention", authors=["Ann Lee", "Bo Chen", "Cy Dee", "Di Eve"],
              categories=["cs.CL", "cs.LG"], date="2024-01-05"),
        Paper("2402.00002", "Costs & benefits: 50% less #compute_for {LLMs}",
              authors=["Erwin Schr\\\"odinger", "Barnes and Noble"], categories=["cs.LG"], date="2024-02"),
        Paper("smith2020", "A Journal Paper", authors=["J. Smith"], doi="10.1000/abc_1", journal="J. of Things",
              date="2020"),
        Paper("2403.00003", "Never cited", authors=["Nobody"], date="2024"),
    ]
    return {paper.id: paper for paper in papers}


TEXTS = {
    "abstract": "We survey sparse attention \\cite{arxivid2402.00002}.",
    "introduction": "Long context is costly \\cite{arxivid2401.00001, arxivid2402.00002}.\n\n"
                    "A second paragraph \\cite{smith2020}.",
    "section-1": "Attention costs grow quadratically \\cite{smith2020, arxivid2401.00001}.",
    "section-2": "A hallucinated paper \\cite{arxivid9999.99999} is dropped.",
}


def full_document() -> SurveyDocument:
    return write_all(planned(), TEXTS)


def test_markdown_has_the_heading_scheme_and_numbers_references_by_first_appearance():
    markdown = to_markdown(full_document(), make_papers())
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert headings == ["# Sparse Attention for Small Models", "## Abstract", "## Introduction", "## 1 Foundations",
                        "### 1.1 Dense attention", "#### 1.1.1 Kernels", "### 1.2 Sparse patterns",
                        "## 2 Trainable sparsity", "## Conclusion", "## References"]
    assert "We survey sparse attention [[1](#ref-1)]." in markdown
    assert "Long context is costly [[1](#ref-1), [2](#ref-2)]." in markdown  # sorted
    assert "quadratically [[2](#ref-2), [3](#ref-3)]." in markdown
    assert "A hallucinated paper is dropped." in markdown
    refs = [line for line in markdown.splitlines() if line.startswith('<a id="ref-')]
    assert refs[0].startswith('<a id="ref-1"></a>[1] Erwin Schrödinger, Barnes and Noble, "[Costs')
    assert refs[1] == ('<a id="ref-2"></a>[2] Ann Lee, Bo Chen, Cy Dee et al., '
                       '"[InfLLM v2: Trainable Sparse Attention](https://arxiv.org/abs/2401.00001)", 2024. '
                       'arXiv:2401.00001')
    assert refs[2] == ('<a id="ref-3"></a>[3] J. Smith, "[A Journal Paper](https://doi.org/10.1000/abc_1)", '
                       'J. of Things, 2020. doi:10.1000/abc\\_1')
    assert len(refs) == 3 and "Never cited" not in markdown
    assert [paper.id for paper in references(full_document(), make_papers())] == ["2402.00002", "2401.00001", "smith2020"]


def reference_numbers(markdown: str) -> tuple[set[int], set[int]]:
    cited = {int(n) for n in re.findall(r"\]\(#ref-(\d+)\)", markdown)}
    entries = {int(n) for n in re.findall(r'<a id="ref-(\d+)"></a>\[\1\]', markdown)}
    return cited, entries


@pytest.mark.parametrize("written", [0, 3, len(POSITIONS)])
def test_every_reference_number_has_an_entry_and_every_entry_is_cited(written):
    document = planned()
    for position in POSITIONS[:written]:
        document.update(position, TEXTS.get(position, f"More \\cite{{2401.00001, bogus{position}}}."))
    markdown = to_markdown(document, make_papers())
    cited, entries = reference_numbers(markdown)
    assert cited == entries == set(range(1, len(entries) + 1))
    assert ("## References" in markdown) == bool(entries)


def test_a_partial_survey_renders_its_plans_as_unwritten_notes():
    document = planned()
    document.update("abstract", "Only the abstract \\cite{2401.00001}.")
    markdown = to_markdown(document, make_papers())
    assert "Only the abstract [[1](#ref-1)]." in markdown
    assert "## Introduction\n\n*Not written yet. Plan: Why long context matters on devices.*" in markdown
    assert "#### 1.1.1 Kernels\n\n*Not written yet. Plan: FlashAttention.*" in markdown
    assert "## Conclusion\n\n*Not written yet. Plan: Open problems.*" in markdown
    empty = to_markdown(SurveyDocument(query="sparse attention"), {})
    assert empty.startswith("# sparse attention\n") and "*Not written yet.*" in empty and "References" not in empty
    html = to_html(document, make_papers())
    assert html.count('<p class="unwritten"><em>Not written yet.</em> Plan:') == len(POSITIONS) - 1


def markdown_headings(markdown: str) -> list[str]:
    markdown_it = pytest.importorskip("markdown_it")
    tokens = markdown_it.MarkdownIt("commonmark").parse(markdown)
    return [tokens[i + 1].content for i, token in enumerate(tokens) if token.type == "heading_open"]


def test_model_markdown_is_kept_but_cannot_break_the_heading_structure():
    hostile = {
        "abstract": "# Not a title\nText with **bold** and a list:\n\n- one\n- two",
        "introduction": "Intro\n===\n## Sneaky subheading ##\n   ### indented too\n#hashtag stays",
        "section-1": "Some code:\n```python\n# a comment, not a heading\nx = 1\n",  # the fence is never closed
        "section-1/subsection-1": "<pre>\nnever closed\n\n<!-- nor this\n[1]: https://evil.example\n",
    }
    markdown = to_markdown(write_all(planned(), hostile), make_papers())
    assert markdown_headings(markdown) == [
        "Sparse Attention for Small Models", "Abstract", "Introduction", "1 Foundations", "1.1 Dense attention",
        "1.1.1 Kernels", "1.2 Sparse patterns", "2 Trainable sparsity", "Conclusion"]
    assert "**Not a title**" in markdown and "**Sneaky subheading**" in markdown and "- one\n- two" in markdown
    assert "# a comment, not a heading" in markdown  # inside the (now closed) code block, kept
    assert "#hashtag stays" in markdown


def test_markdown_escapes_corpus_strings_and_plans():
    papers = make_papers()
    papers["2401.00001"].title = "Bad *title* [x](javascript:alert(1)) <b>"
    papers["2401.00001"].url = "javascript:alert(1)"
    document = planned()
    document.node("introduction").plan = "Use *stars* and [brackets]."
    document.update("abstract", "A \\cite{2401.00001}.")
    markdown = to_markdown(document, papers)
    assert "Plan: Use \\*stars\\* and \\[brackets\\].*" in markdown
    assert "Bad \\*title\\* \\[x\\](javascript:alert(1)) \\<b\\>" in markdown
    assert re.search(r"(?<!\\)\]\(javascript", markdown) is None  # a URL that is not http(s) is never a link
    markdown_it = pytest.importorskip("markdown_it")
    assert "href=\"javascript" not in markdown_it.MarkdownIt("commonmark").render(markdown)


def test_bibtex_has_one_entry_per_cited_paper_in_reference_order():
    bib = to_bibtex(full_document(), make_papers())
    entries = [item for item in parse_bibtex(bib)]
    assert all(isinstance(entry, BibEntry) for entry in entries)
    assert [(entry.type, entry.key) for entry in entries] == [
        ("misc", "arxivid2402.00002"), ("misc", "arxivid2401.00001"), ("article", "smith2020")]
    infllm = entries[1].fields
    assert infllm["eprint"] == "2401.00001" and infllm["archiveprefix"] == "arXiv"
    assert infllm["primaryclass"] == "cs.CL" and infllm["url"] == "https://arxiv.org/abs/2401.00001"
    assert infllm["author"] == "Ann Lee and Bo Chen and Cy Dee and Di Eve"  # all authors in BibTeX
    assert infllm["year"] == "2024" and infllm["month"] == "Jan"
    assert entries[2].fields["doi"] == "10.1000/abc_1" and entries[2].fields["journal"] == "J. of Things"
    assert "title = {{Costs \\& benefits: 50\\% less \\#compute\\_for \\{LLMs\\}}}," in bib
    assert "author = {Erwin Schrödinger and {Barnes and Noble}}," in bib
    assert to_bibtex(planned(), make_papers()) == ""


def test_bibtex_round_trips_through_our_reader():
    papers = make_papers()
    back = [paper_from_bibtex(entry) for entry in parse_bibtex(to_bibtex(full_document(), papers))]
    assert [paper.id for paper in back] == ["2402.00002", "2401.00001", "smith2020"]
    for paper in back:
        original = papers[paper.id]
        assert paper.title == original.title
        assert paper.year == original.year and paper.doi == original.doi and paper.journal == original.journal
        assert paper.categories[:1] == original.categories[:1]
    assert back[1].authors == papers["2401.00001"].authors and back[2].authors == ["J. Smith"]
    assert back[0].authors == ["Erwin Schrödinger", "Barnes and Noble"]  # LaTeX read as text; one organisation
    assert back[0].date == "2024-02" and back[1].date == "2024-01"


_TITLE_CHARS = "aZ09 .:,;!?'\"()[]@&%#_{}"


def _one_paper_bibtex(title: str, authors: list[str]) -> str:
    document = planned()
    document.update("abstract", "See \\cite{2401.00001}.")
    return to_bibtex(document, {"2401.00001": Paper("2401.00001", title, authors=authors, date="2024")})


@settings(max_examples=100, deadline=None)
@given(st.text(_TITLE_CHARS, min_size=1, max_size=40).filter(lambda s: s.strip(" {}")))
def test_any_title_with_latex_specials_reads_back(title):
    bib = _one_paper_bibtex(title, ["Ann O'Neil", "Bo & Co"])
    body = bib.split("title = ", 1)[1].split(",\n", 1)[0]
    depth = 0
    for char in body:  # BibTeX counts braces, escaped or not: they must pair up
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    assert re.search(r"(?<!\\)[&%#_]", body) is None  # every special escaped
    (entry,) = parse_bibtex(bib)
    paper = paper_from_bibtex(entry)
    assert paper.id == "2401.00001" and paper.authors == ["Ann O'Neil", "Bo & Co"]
    balanced = title.count("{") == title.count("}") and all(
        title[:i].count("{") >= title[:i].count("}") for i in range(len(title) + 1))
    if balanced:
        assert paper.title == " ".join(title.split())


def test_bibtex_keeps_math_and_reads_latex_in_corpus_strings():
    bib = _one_paper_bibtex("Attention in $O(n \\log n)$ time, 100% of it, for $x_1$", ["Kurt G\\\"odel"])
    assert "$O(n \\log n)$ time, 100\\% of it, for $x_1$" in bib and "Kurt Gödel" in bib
    paper = paper_from_bibtex(next(iter(parse_bibtex(bib))))
    assert paper.title == "Attention in $O(n \\log n)$ time, 100% of it, for $x_1$" and paper.authors == ["Kurt Gödel"]
    lone = _one_paper_bibtex("A lone { brace, a ~ tilde and a ^ caret", ["A"])
    assert "A lone \\textbraceleft{} brace, a \\textasciitilde{} tilde and a \\textasciicircum{} caret" in lone
    assert isinstance(next(iter(parse_bibtex(lone))), BibEntry)
    assert "unknown \\textbackslash{}command" in _one_paper_bibtex("An unknown \\command", ["A"])


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.ids, self.hrefs, self.stack, self.text = [], [], [], [], []
        self.void = {"meta", "hr", "br", "img", "link"}

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag not in self.void:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_page(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.stack == []  # every element closed, in order
    return parser


def test_html_is_one_standalone_page_with_contents_and_linked_references():
    page = to_html(full_document(), make_papers())
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    parsed = parse_page(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "img" not in parsed.tags
    assert " src=" not in page and "url(" not in page and "@import" not in page
    assert len(parsed.ids) == len(set(parsed.ids))
    anchors = ["abstract", "introduction", "section-1", "section-1-1", "section-1-1-1", "section-1-2", "section-2",
               "conclusion", "references"]
    assert [i for i in parsed.ids if not i.startswith("ref-")] == anchors
    assert [i for i in parsed.ids if i.startswith("ref-")] == ["ref-1", "ref-2", "ref-3"]
    internal = [href[1:] for href in parsed.hrefs if href.startswith("#")]
    assert set(internal) <= set(parsed.ids) and set(anchors) <= set(internal)  # the contents link every part
    assert {"ref-1", "ref-2", "ref-3"} <= set(internal)
    external = [href for href in parsed.hrefs if not href.startswith("#")]
    assert external == ["https://arxiv.org/abs/2402.00002", "https://arxiv.org/abs/2401.00001",
                        "https://doi.org/10.1000/abc_1"]
    assert '<h3 id="section-1-1">1.1 Dense attention</h3>' in page
    assert ('<p>Long context is costly <span class="cite">[<a href="#ref-1">1</a>, <a href="#ref-2">2</a>]</span>.</p>\n'
            '<p>A second paragraph <span class="cite">[<a href="#ref-3">3</a>]</span>.</p>') in page


def test_html_escapes_every_model_and_corpus_string():
    papers = make_papers()
    papers["2401.00001"].title = "Paper <script>alert('title')</script>"
    papers["2401.00001"].authors = ["<img src=x onerror=alert(1)>"]
    papers["2402.00002"].url = "javascript:alert(1)"
    document = planned()
    document.title = "Survey <script>alert('doc')</script>"
    document.sections[0].title = "<script>alert('section')</script>"
    document.update("abstract", "Text <script>alert('content')</script> **bold <i>** \\cite{2401.00001, 2402.00002}.\n\n"
                                "# <script>heading</script>\n\n- <b>item</b>\n\n```\n<script>code</script>\n```")
    document.node("introduction").plan = "Plan <script>alert('plan')</script>"
    page = to_html(document, papers)
    parsed = parse_page(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags and "i" not in parsed.tags and "b" not in parsed.tags
    assert "<script" not in page.lower() and "javascript:" not in page
    for text in ("Survey &lt;script&gt;alert(&#x27;doc&#x27;)&lt;/script&gt;", "&lt;script&gt;alert(&#x27;section",
                 "Text &lt;script&gt;alert(&#x27;content&#x27;)&lt;/script&gt; <strong>bold &lt;i&gt;</strong>",
                 "Paper &lt;script&gt;alert(&#x27;title&#x27;)&lt;/script&gt;", "&lt;img src=x onerror=alert(1)&gt;",
                 "Plan &lt;script&gt;alert(&#x27;plan&#x27;)&lt;/script&gt;", "<li>&lt;b&gt;item&lt;/b&gt;</li>",
                 "<pre><code>&lt;script&gt;code&lt;/script&gt;</code></pre>"):
        assert text in page, text


def test_write_exports_writes_each_format_atomically(tmp_path, monkeypatch):
    document, papers = full_document(), make_papers()
    paths = write_exports(document, papers, markdown=tmp_path / "s.md", bibtex=str(tmp_path / "s.bib"),
                          html=tmp_path / "s.html")
    assert paths == [tmp_path / "s.md", tmp_path / "s.bib", tmp_path / "s.html"]
    assert (tmp_path / "s.md").read_text(encoding="utf-8") == to_markdown(document, papers)
    assert (tmp_path / "s.bib").read_text(encoding="utf-8") == to_bibtex(document, papers)
    assert (tmp_path / "s.html").read_text(encoding="utf-8") == to_html(document, papers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bib", "s.html", "s.md"]
    assert write_exports(document, papers) == []

    import os

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(MiniCPMError, match="cannot write .*s.md: No space left on device"):
        write_exports(write_all(planned()), papers, markdown=tmp_path / "s.md")
    assert (tmp_path / "s.md").read_text(encoding="utf-8") == to_markdown(document, papers)  # the old file stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bib", "s.html", "s.md"]  # no temporary left


def test_write_exports_refuses_bad_targets_before_writing_anything(tmp_path):
    document, papers = full_document(), make_papers()
    with pytest.raises(MiniCPMError, match=r"the folder .*missing does not exist"):
        write_exports(document, papers, markdown=tmp_path / "ok.md", html=tmp_path / "missing" / "s.html")
    assert not (tmp_path / "ok.md").exists()
    with pytest.raises(MiniCPMError, match="it is a folder"):
        write_exports(document, papers, bibtex=tmp_path)
    with pytest.raises(MiniCPMError, match="same file"):
        write_exports(document, papers, markdown=tmp_path / "x", bibtex=tmp_path / "x")
    assert list(tmp_path.iterdir()) == []
