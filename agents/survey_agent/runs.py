"""What `minicpm survey` (tui/commands/survey.py) and the chat app's survey screen
(tui/screens/survey.py) share about a survey run, without any UI:

    open_corpus       the corpus a run reads; the default one is built from the shipped sample on first use
    default_mode      minicpm for a MiniCPM4-Survey model, generic for any other
    part_in_progress  the part of the outline the run is writing now
    earlier_runs      the runs in a checkpoint database, newest first (RunSummary)
    describe          one line for a log entry
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime.errors import MiniCPMError
from survey.document import SurveyDocument


def _ignore(text: str, level: str) -> None:
    pass


def open_corpus(path: Path | None, *, note: Callable[[str, str], None] = _ignore,
                progress: Callable[[], contextlib.AbstractContextManager] | None = None):
    """Open the corpus at path, or the default corpus when path is None (built from the arXiv sample
    shipped with the suite if it does not exist yet, about a minute). An empty corpus is an error:
    a survey needs papers to cite.

    note(text, level) hears what the caller should tell the user (level "info" or "warning");
    progress() makes the context manager around the build, yielding ingest's progress callable."""
    from survey.corpus import Corpus, default_corpus_path, shipped_sample

    if path is None:
        path = default_corpus_path()
        if not path.exists():
            note(f"no corpus yet: building {path} from the arXiv sample shipped with the suite (about a minute)",
                 "info")
            with Corpus.open(path, create=True) as corpus, (progress or contextlib.nullcontext)() as callback:
                corpus.ingest([shipped_sample()], progress=callback)
    corpus = Corpus.open(path)
    stats = corpus.stats(top=0)
    if stats.papers == 0:
        corpus.close()
        raise MiniCPMError(f"the corpus at {path} is empty: add papers with "
                           f"`minicpm corpus ingest FILE... --corpus {path}`")
    if stats.with_vectors < stats.papers:
        note(f"{stats.papers - stats.with_vectors:,} of {stats.papers:,} papers have no vectors yet; they are found "
             "by keyword only (run `minicpm corpus ingest` to finish embedding)", "warning")
    return corpus


def default_mode(model) -> str:
    """MiniCPM4-Survey was fine-tuned on its own action format; every other model gets the generic,
    step-wise prompts. A model without a name (a test's scripted one) is not MiniCPM4-Survey."""
    name = str(getattr(model, "model_name", "") or "").lower()
    return "minicpm" if "survey" in name and "minicpm" in name else "generic"


def part_in_progress(state: dict[str, Any]) -> str | None:
    """The position the run writes next ("section-2", "abstract"), or None (no outline yet, or done)."""
    from agents.survey_agent.graph import _generic_next  # the generic mode's write order, kept in one place

    if not state.get("document"):
        return None
    pending = (state.get("pending") or {}).get("position")
    if pending:
        return pending
    document = SurveyDocument.from_dict(state["document"])
    if not document.planned or document.complete:
        return None
    if state.get("mode") == "generic":
        return _generic_next(document)
    return document.next_unwritten()


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    query: str
    status: str  # complete | failed | running (stopped from outside, or still going)
    updated: datetime | None  # the run's last checkpoint
    steps: int
    max_steps: int
    mode: str
    corpus: str  # the corpus folder the run reads ("" if unknown)
    error: str

    @property
    def finished(self) -> bool:
        return self.status == "complete"


def earlier_runs(checkpointer, limit: int = 50) -> list[RunSummary]:
    """The survey runs in a checkpoint database, the most recently active first."""
    from agents.checkpoints import recent_threads

    runs = []
    for run_id, ts, values in recent_threads(checkpointer, limit):
        try:
            updated = datetime.fromisoformat(ts).astimezone() if ts else None
        except ValueError:
            updated = None
        runs.append(RunSummary(run_id=run_id, query=values.get("query", ""), status=values.get("status", "running"),
                               updated=updated, steps=values.get("steps", 0), max_steps=values.get("max_steps", 0),
                               mode=values.get("mode", ""), corpus=values.get("corpus", ""),
                               error=values.get("error") or ""))
    return runs


def describe(entry: dict) -> str:
    """One line for a log entry."""
    kind = entry.get("kind")
    if kind == "search":
        return (f"searched {'; '.join(entry['queries'])!r}: {entry['found']} papers, {entry['new']} new "
                f"({entry['total']} in all, {entry['seconds'] * 1000:.0f} ms)")
    if kind == "plan":
        note = f" ({entry['fallback']})" if entry.get("fallback") else ""
        return f"outline: {entry['title']}: " + " | ".join(entry["outline"]) + note
    if kind == "write":
        removed = f", {len(entry['removed'])} unretrieved citation(s) removed" if entry.get("removed") else ""
        return f"wrote {entry['part']}: {entry['words']} words, {entry['citations']} papers cited{removed}"
    if kind == "retry":
        return f"asked again for {entry['part']}: {entry['reason']}"
    if kind == "fallback":
        return f"{entry['part']}: fell back to {entry['what']} ({entry['reason']})"
    if kind == "removed":
        return f"{entry['part']}: removed citation(s) {', '.join(entry['keys'])} ({entry['reason']})"
    if kind == "off_topic":
        return f"dropped the model's search queries {entry['queries']} (not about the survey's query)"
    if kind == "invalid":
        return f"unusable response ({entry['failures']} in a row): {entry['reason']}"
    if kind == "finalize_refused":
        return f"finalize refused: {entry['missing']} is not written yet"
    if kind == "complete":
        return f"complete: {entry['references']} references in {entry['steps']} model calls"
    if kind == "failed":
        return f"failed: {entry['error']}"
    return json.dumps(entry, ensure_ascii=False)
