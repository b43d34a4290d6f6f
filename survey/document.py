"""The survey document: a tree of nodes, each with the plan for it and (once written) its content.

    title
    abstract, introduction                       (plan, content)
    section-1 .. section-n                       (title, plan, content)
      section-i/subsection-j                     (title, plan, content)
        section-i/subsection-j/subsubsection-k   (title, plan, content)
    conclusion                                   (plan, content)

Positions are MiniCPM4-Survey's update targets (upstream-apps.md section 1.3): "title", "abstract",
"introduction", "conclusion", "section-i", "section-i/subsection-j",
"section-i/subsection-j/subsubsection-k", 1-based. Upstream's prompt misspells "subsction"; models
copy it, so it is read as "subsection" (upstream's parser rejects it).

Content is text with citations written as \\cite{key} (survey/citations.py). The write order is
upstream's: abstract, introduction, each section before its subsections, ..., conclusion. A
document is complete when every node has content, the conclusion included (upstream could finalize
with the conclusion still a plan).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import MiniCPMError

FIXED = ("abstract", "introduction", "conclusion")
LEVELS = ("section", "subsection", "subsubsection")
MAX_SECTIONS = 20  # per level; a plan with more is a model run away, not a survey
_STEP = re.compile(r"^(section|subs?ection|subsction|subsubs?ection|subsubsction)-(\d+)$")


class PlanError(MiniCPMError):
    """A plan or an update the document cannot take; the message says what is wrong, for the model."""


@dataclass
class Node:
    """One part of the survey. `title` is empty for abstract/introduction/conclusion."""

    title: str = ""
    plan: str = ""
    content: str = ""
    children: list[Node] = field(default_factory=list)

    @property
    def written(self) -> bool:
        return bool(self.content.strip())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, "plan": self.plan, "content": self.content}
        if self.children:
            out["children"] = [child.to_dict() for child in self.children]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Node:
        return cls(title=raw.get("title", ""), plan=raw.get("plan", ""), content=raw.get("content", ""),
                   children=[cls.from_dict(child) for child in raw.get("children", [])])


def parse_position(position: str) -> tuple[str, tuple[int, ...]]:
    """'section-2/subsection-1' -> ('section', (2, 1)); 'abstract' -> ('abstract', ()).
    Raises PlanError for anything else."""
    text = str(position).strip().strip('"').lower()
    if text in ("title", "plan", *FIXED):
        return text, ()
    parts = [part.strip() for part in text.split("/")]
    if not 1 <= len(parts) <= len(LEVELS):
        raise PlanError(f"unknown position {position!r}: use title, abstract, introduction, conclusion, "
                        "section-i, section-i/subsection-j or section-i/subsection-j/subsubsection-k")
    numbers = []
    for depth, part in enumerate(parts):
        match = _STEP.match(part)
        if not match or _level_of(match.group(1)) != depth:
            raise PlanError(f"unknown position {position!r}: level {depth + 1} must be '{LEVELS[depth]}-N'")
        number = int(match.group(2))
        if number < 1:
            raise PlanError(f"unknown position {position!r}: numbers start at 1")
        numbers.append(number)
    return "section", tuple(numbers)


def _level_of(word: str) -> int:
    return 0 if word == "section" else (2 if word.startswith("subsub") else 1)  # "subsub(s)ection" too


def format_position(numbers: tuple[int, ...]) -> str:
    return "/".join(f"{LEVELS[depth]}-{n}" for depth, n in enumerate(numbers))


@dataclass
class SurveyDocument:
    """The survey being written. Empty (no plan) until apply_plan; the agents change it only through
    apply_plan and update, which check what the model sent."""

    query: str
    title: str = ""
    abstract: Node = field(default_factory=Node)
    introduction: Node = field(default_factory=Node)
    sections: list[Node] = field(default_factory=list)
    conclusion: Node = field(default_factory=Node)

    # -- the plan ------------------------------------------------------------------------------

    @property
    def planned(self) -> bool:
        return bool(self.sections)

    def apply_plan(self, plan: Any) -> None:
        """Take an outline: {"title", "abstract": {"plan"}, "introduction": {"plan"},
        "sections": [{"title", "plan", "subsections": [{"title", "plan", "subsubsections": [...]}]}],
        "conclusion": {"plan"}} (MiniCPM4-Survey's plan format). Only while nothing is planned."""
        if self.planned:
            raise PlanError("the survey already has a plan; update its parts instead")
        if not isinstance(plan, dict):
            raise PlanError("a plan must be a JSON object with title, abstract, introduction, sections and conclusion")
        sections = plan.get("sections")
        if not isinstance(sections, list) or not sections:
            raise PlanError("a plan needs a non-empty list of sections")
        title = plan.get("title")
        if title is not None and (not isinstance(title, str)):
            raise PlanError("the plan's title must be a string")
        nodes = [_plan_node(section, f"section-{i}", 0) for i, section in enumerate(sections, 1)]
        if len(nodes) > MAX_SECTIONS:
            raise PlanError(f"a plan may have at most {MAX_SECTIONS} sections (got {len(nodes)})")
        fixed = {}
        for name in FIXED:
            value = plan.get(name, {})
            if isinstance(value, str):
                value = {"plan": value}
            if not isinstance(value, dict) or not isinstance(value.get("plan", ""), str):
                raise PlanError(f"the plan's {name} must be {{\"plan\": \"...\"}}")
            fixed[name] = value.get("plan", "").strip()
        self.title = " ".join((title or self.title or "").split())  # one line, as update("title") makes it
        self.sections = nodes
        for name in FIXED:
            getattr(self, name).plan = fixed[name]

    # -- nodes ---------------------------------------------------------------------------------

    def node(self, position: str) -> Node:
        kind, numbers = parse_position(position)
        if kind == "title" or kind == "plan":
            raise PlanError(f"{kind!r} is not a part with content")
        if kind in FIXED:
            return getattr(self, kind)
        siblings, node = self.sections, None
        for depth, number in enumerate(numbers):
            if number > len(siblings):
                where = "the survey" if depth == 0 else format_position(numbers[:depth])
                raise PlanError(f"there is no {format_position(numbers[:depth + 1])}: "
                                f"{where} has {len(siblings)} {LEVELS[depth]}(s)")
            node = siblings[number - 1]
            siblings = node.children
        return node

    def update(self, position: str, content: Any) -> str:
        """Write one part; returns the canonical position written. The plan goes to apply_plan."""
        kind, numbers = parse_position(position)
        if kind == "plan":
            self.apply_plan(content)
            return "plan"
        if not self.planned:
            raise PlanError("the survey has no plan yet: write the plan first (update \"plan\")")
        if not isinstance(content, str) or not content.strip():
            raise PlanError(f"the content for {position} must be non-empty text")
        if kind == "title":
            self.title = " ".join(content.split())
            return "title"
        self.node(position).content = content.strip()
        return kind if kind in FIXED else format_position(numbers)

    def positions(self) -> list[str]:
        """Every part with content, in write order."""
        out = ["abstract", "introduction"]

        def walk(nodes: list[Node], prefix: tuple[int, ...]) -> None:
            for i, node in enumerate(nodes, 1):
                out.append(format_position((*prefix, i)))
                walk(node.children, (*prefix, i))

        walk(self.sections, ())
        out.append("conclusion")
        return out

    def next_unwritten(self) -> str | None:
        """The first part in write order without content ("plan" before there is a plan)."""
        if not self.planned:
            return "plan"
        for position in self.positions():
            if not self.node(position).written:
                return position
        return None

    @property
    def complete(self) -> bool:
        return self.planned and bool(self.title) and self.next_unwritten() is None

    def label(self, position: str) -> str:
        """A human name for a position: 'Introduction', '2.1 Sparse attention'."""
        kind, numbers = parse_position(position)
        if kind != "section":
            return kind.capitalize()
        return f"{'.'.join(map(str, numbers))} {self.node(position).title}".strip()

    def walk(self):
        """(position, depth, node) for every part in write order; depth 0 for top-level parts."""
        for position in self.positions():
            _, numbers = parse_position(position)
            yield position, max(len(numbers) - 1, 0), self.node(position)

    # -- views ---------------------------------------------------------------------------------

    def abbreviated(self, width: int = 50) -> str:
        """The survey as MiniCPM4-Survey sees it each step: title and abstract in full, a written
        part as '[OK] <first `width` chars>...', an unwritten one as '[PLAN] <plan>'."""
        if not self.planned:
            return "(empty: no plan yet)"

        def state(node: Node) -> str:
            if node.written:
                text = " ".join(node.content.split())
                return f"[OK] {text[:width]}..." if len(text) > width else f"[OK] {text}"
            return f"[PLAN] {node.plan}"

        lines = [f"title: {self.title}", f"abstract: {self.abstract.content or '[PLAN] ' + self.abstract.plan}",
                 f"introduction: {state(self.introduction)}"]
        for position, depth, node in self.walk():
            if position.startswith("section"):
                lines.append(f"{'  ' * depth}{position}: {node.title}: {state(node)}")
        lines.append(f"conclusion: {state(self.conclusion)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "title": self.title, "abstract": self.abstract.to_dict(),
                "introduction": self.introduction.to_dict(),
                "sections": [node.to_dict() for node in self.sections], "conclusion": self.conclusion.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SurveyDocument:
        return cls(query=raw["query"], title=raw.get("title", ""),
                   abstract=Node.from_dict(raw.get("abstract", {})),
                   introduction=Node.from_dict(raw.get("introduction", {})),
                   sections=[Node.from_dict(node) for node in raw.get("sections", [])],
                   conclusion=Node.from_dict(raw.get("conclusion", {})))


def _plan_node(raw: Any, where: str, depth: int) -> Node:
    if not isinstance(raw, dict):
        raise PlanError(f"{where} must be an object with a title and a plan")
    title = raw.get("title")
    if not isinstance(title, str) or not title.strip():
        raise PlanError(f"{where} needs a title")
    plan = raw.get("plan", "")
    if not isinstance(plan, str):
        raise PlanError(f"{where}'s plan must be text")
    children_key = LEVELS[depth + 1] + "s" if depth + 1 < len(LEVELS) else None
    children_raw = raw.get(children_key, []) if children_key else []
    if children_key is None and any(key.endswith("sections") and raw[key] for key in raw):  # [] is no 4th level
        raise PlanError(f"{where} is a sub-subsection: a survey has at most three levels")
    if not isinstance(children_raw, list):
        raise PlanError(f"{where}'s {children_key} must be a list")
    if len(children_raw) > MAX_SECTIONS:
        raise PlanError(f"{where} may have at most {MAX_SECTIONS} {children_key} (got {len(children_raw)})")
    children = [_plan_node(child, f"{where}/{LEVELS[depth + 1]}-{i}", depth + 1)
                for i, child in enumerate(children_raw, 1)]
    return Node(title=" ".join(title.split()), plan=plan.strip(), children=children)
