"""What a survey run keeps between steps (and in its SQLite checkpoints).

Everything is plain JSON-like data: the document as SurveyDocument.to_dict(), papers by id (their
text is read back from the corpus when a prompt needs it), so a checkpoint stays small.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

Status = Literal["running", "complete", "failed"]


class SurveyState(TypedDict, total=False):
    query: str
    mode: str  # "minicpm" | "generic"
    document: dict[str, Any]  # SurveyDocument.to_dict()
    retrieved: list[str]  # every paper id any search of this run returned, first-seen order
    last_results: list[str]  # the most recent non-empty search result (what the model is shown)
    searches: list[dict[str, Any]]  # one per retrieval call: {"queries", "ids", "seconds"}
    seeds: dict[str, list[str]]  # generic mode: position -> papers the outline grouped under it
    pending: dict[str, Any]  # generic mode: {"position", "ids"} retrieved for the part about to be written
    last_plan: str  # minicpm mode: the previous step's "Next Plan" (its think and tool call)
    correction: str  # minicpm mode: why the previous response could not be used ("" when it could)
    steps: int  # model calls made
    max_steps: int
    failures: int  # consecutive model responses that could not be used
    log: list[dict[str, Any]]  # what happened, in order: the events a terminal or the TUI shows
    corpus: str  # the corpus folder, so a resumed run searches the same papers
    outputs: dict[str, str]  # format -> path the CLI writes ("markdown", "bibtex", "html")
    status: Status
    error: str
