"""What a tool-agent session keeps between steps (and in its SQLite checkpoints)."""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages

Decision = Literal["approve", "deny"]


class ToolAgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]  # the whole conversation, every task of the session
    steps: int  # model turns taken on the current task (reset when a new task arrives)
    decisions: dict[str, Decision]  # tool_call_id -> the user's answer, for the latest assistant message
