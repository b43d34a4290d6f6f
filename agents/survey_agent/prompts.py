"""The survey agent's prompts: MiniCPM4-Survey's action format (mode `minicpm`) and short step-wise
prompts any instruct model can follow (mode `generic`).

The `minicpm` prompts follow the layout the fine-tune was trained on (upstream-apps.md sections
1.3-1.4): a system prompt with the tools in <tools></tools> and the two-part response, and a user
prompt rebuilt every step from the query, the survey in short form, the previous step's plan and
the most recent search results. The wording is ours; the structure, tags, tool names, positions and
the plan's JSON shape are upstream's.
"""

from __future__ import annotations

import json

SEARCH_TOOL = {"type": "function", "function": {
    "name": "search_engine",
    "description": "Search the local paper corpus; each keyword is searched separately and the results merged.",
    "parameters": {"type": "object", "properties": {"query": {"type": "array", "items": {"type": "string"},
                                                              "description": "search keywords"}},
                   "required": ["query"]}}}
FINALIZE_TOOL = {"type": "function", "function": {
    "name": "finalize", "description": "Finish: every part of the survey has been written.",
    "parameters": {"type": "object", "properties": {}}}}

MINICPM_SYSTEM = """You are an expert researcher writing a literature survey for the user's query, \
with citations to the papers a search engine returns. You work step by step. In every step you write \
two parts:

(1) Current Update:
<think> How to write this part with citations, from the retrieved information ... </think>
<answer> {"update": <section-pos>, "content": <paragraph or plan-dict>} </answer>
(2) Next Plan:
<think> Which part of the survey needs to be updated next, and what to search for? ... </think>
<tool_call> {"name": <function-name>, "arguments": <args-json-object>} </tool_call>

Write {} inside <answer> or <tool_call> to skip that action.

Positions (<section-pos>): "plan" (only while the survey is empty), "title", "abstract", \
"introduction", "section-i", "section-i/subsection-j", "section-i/subsection-j/subsubsection-k", \
"conclusion" (i, j, k start at 1; at most three levels).

The plan is a JSON object: {"title": "...", "abstract": {"plan": "..."}, "introduction": {"plan": "..."}, \
"sections": [{"title": "...", "plan": "...", "subsections": [{"title": "...", "plan": "..."}]}], \
"conclusion": {"plan": "..."}}.

Cite papers inline as \\cite{bibkey}, several as \\cite{bibkey1, bibkey2}, using only bibkeys from the \
retrieved information. Write in English. Write in this order: plan, abstract, introduction, each \
section and then its subsections, conclusion. When every part is written, call finalize.

You may call these tools:
<tools>
{tools}
</tools>"""

MINICPM_USER = """**User's Query**
{query}

**Current Survey**
{survey}

**Current Plan**
{plan}

**Retrieved Information**
{retrieved}"""

FIRST_PLAN = "I need to get enough information."
FORCE_CORRECT = "Next I will provide {position}."
CORRECTION = "My previous response could not be used: {reason}. "


def minicpm_system() -> str:
    tools = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in (SEARCH_TOOL, FINALIZE_TOOL))
    return MINICPM_SYSTEM.replace("{tools}", tools)


def minicpm_user(query: str, survey: str, plan: str, results: list[str]) -> str:
    retrieved = f"There are {len(results)} results:\n" + "\n\n".join(results) if results else "There are 0 results."
    return MINICPM_USER.format(query=query, survey=survey, plan=plan, retrieved=retrieved)


# -- generic mode: one small task per model call ----------------------------------------------------

GENERIC_SYSTEM = "You are a helpful research assistant. Follow the requested format exactly."

OUTLINE = """Write the outline of a literature survey on: {query}

Papers found on the topic:
{titles}

Reply in exactly this format, with 3 to 6 sections about the topic (no Introduction or Conclusion):
Title: <survey title>
1. <section title>
2. <section title>
3. <section title>"""

GROUP_HEADING = """These papers belong together in a survey on {query}:
{titles}

Write a short section heading (at most 6 words) for this group of papers. Reply with the heading only."""

KEYWORDS = """Suggest two search queries for papers on '{part}' in {query}. Reply with the two queries on separate lines."""

PARAGRAPH = """Papers:
{papers}

Write one paragraph (4 to 6 sentences) for the part "{part}" of a survey on {query}.{plan}
Use only the papers above. End each sentence that uses a paper with its number in brackets, like [2]."""

ONE_SENTENCE = """Title: {title}
Abstract: {abstract}

In one sentence, what does this paper do?"""

SUMMARY = """A survey on {query} has these sections:
{sections}

Write the {part} of the survey: {length} Reply with the text only."""
SUMMARY_LENGTH = {"abstract": "3 or 4 sentences summarizing the survey.",
                  "conclusion": "3 or 4 sentences on what the field has achieved and what remains open."}
