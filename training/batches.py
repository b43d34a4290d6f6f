"""Conversations -> token ids with a loss mask on the assistant's tokens -> packed training rows.

A sample is an OpenAI-shaped conversation, optionally with the tools it was offered. It is rendered
exactly as the runtime renders it at inference (runtime/tool_calls/local.py: the dialect's tool
listing in the system message, earlier calls as the text the model writes, results as tool turns,
then the model's own chat template), so the model learns the prompt it will be given. The loss
covers every assistant turn, its end-of-turn token included, and nothing else.

Packing puts several samples in one row of at most max_tokens; positions restart at each sample and
each sample attends causally within itself only, so a sample never sees another (runtime/model.py
hidden_states takes both).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from runtime.errors import MiniCPMError


class TrainingDataError(MiniCPMError):
    """A training sample that cannot be rendered or trained on."""


@dataclass
class Example:
    ids: list[int]
    loss_mask: list[bool]  # per token: is it a target (an assistant token)?

    @property
    def targets(self) -> int:
        return sum(self.loss_mask)


def render_conversation(tokenizer, messages: list[dict[str, Any]], tools: list[dict] | None,
                        dialect: str | None, add_generation_prompt: bool = False) -> str:
    """The prompt text the runtime would build for these messages (and tools) on this tokenizer."""
    from runtime.messages import check_messages
    from runtime.tool_calls.local import choose_dialect, prepare_messages
    from runtime.tool_calls.tools import check_tools

    messages = check_messages(messages)
    specs = check_tools(tools) if tools else []
    if specs or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        chosen, native = choose_dialect(dialect, tokenizer.chat_template)
        if native:
            return tokenizer.render_chat(messages, tools=[t.to_openai() for t in specs] or None,
                                         add_generation_prompt=add_generation_prompt)
        messages = prepare_messages(messages, chosen, specs, specs)
    return tokenizer.render_chat(messages, add_generation_prompt=add_generation_prompt)


def encode_conversation(tokenizer, messages: list[dict[str, Any]], tools: list[dict] | None = None,
                        dialect: str | None = None) -> Example:
    """Token ids of the whole conversation and the mask of its assistant tokens.

    Each assistant turn's text is found by rendering the conversation up to it twice, with the
    generation prompt and with the turn; the whole text is tokenized once (so no token is split at
    a turn boundary) and a token is a target when it starts inside an assistant turn."""
    if not messages or messages[-1].get("role") != "assistant":
        raise TrainingDataError("a training conversation must end with an assistant turn")
    full = render_conversation(tokenizer, messages, tools, dialect)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render_conversation(tokenizer, messages[:i], tools, dialect, add_generation_prompt=True)
        upto = render_conversation(tokenizer, messages[: i + 1], tools, dialect)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise TrainingDataError("the chat template renders earlier turns differently once later ones follow; "
                                    "the assistant's tokens cannot be located for the loss")
        spans.append((len(before), len(upto.rstrip("\n"))))
    encoding = tokenizer.backend.encode(full, add_special_tokens=False)
    ids, offsets = list(encoding.ids), list(encoding.offsets)
    if tokenizer.add_bos and tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids, offsets = [tokenizer.bos_token_id, *ids], [(0, 0), *offsets]  # as Tokenizer.encode does
    mask = [any(a <= start < b for a, b in spans) and end > start for start, end in offsets]
    return Example(ids, mask)


@dataclass
class PackedRow:
    ids: torch.Tensor  # [1, T] int64
    labels: torch.Tensor  # [T] int64, the next token where it is a target, -100 elsewhere
    positions: torch.Tensor  # [T], restarting at 0 for each sample
    segments: list[tuple[int, int]]  # (start, end) of each sample along T

    @property
    def samples(self) -> int:
        return len(self.segments)

    @property
    def targets(self) -> int:
        return int((self.labels != -100).sum())


def pack(examples: list[Example], max_tokens: int, seed: int = 0, shuffle: bool = True) -> list[PackedRow]:
    """Greedy first-fit packing (longest first) of whole examples into rows of at most max_tokens.
    An example longer than max_tokens is an error: cutting it would train on a turn without its end."""
    too_long = [len(e.ids) for e in examples if len(e.ids) > max_tokens]
    if too_long:
        raise TrainingDataError(f"{len(too_long)} sample(s) are longer than max_tokens={max_tokens} "
                                f"(longest {max(too_long)} tokens); raise max_tokens or shorten them")
    rows: list[list[Example]] = []
    room: list[int] = []
    for example in sorted(examples, key=lambda e: -len(e.ids)):
        for i, free in enumerate(room):
            if len(example.ids) <= free:
                rows[i].append(example)
                room[i] -= len(example.ids)
                break
        else:
            rows.append([example])
            room.append(max_tokens - len(example.ids))
    if shuffle:
        random.Random(seed).shuffle(rows)
    return [row_of(group) for group in rows]


def row_of(group: list[Example]) -> PackedRow:
    ids, labels, positions, segments = [], [], [], []
    for example in group:
        ids += example.ids
        # label at t is the token at t + 1 when that token is a target; the last token of a sample
        # predicts nothing (the next sample is not its continuation)
        labels += [example.ids[t + 1] if example.loss_mask[t + 1] else -100 for t in range(len(example.ids) - 1)] + [-100]
        segments.append((len(positions), len(positions) + len(example.ids)))
        positions += range(len(example.ids))
    return PackedRow(torch.tensor([ids]), torch.tensor(labels), torch.tensor(positions), segments)


def token_log_probs(model, row: PackedRow, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the target tokens of a packed row (at a sampling temperature, for RL),
    and the targets' indices.
    lm_head runs only on the positions that have a target: on the embedded model the vocabulary
    product is a third of the forward pass, and most positions of a tool-call sample are prompt."""
    h = model.hidden_states(row.ids, positions=row.positions, segments=row.segments)[0]  # [T, C]
    where = (row.labels != -100).nonzero().squeeze(1)  # [N]
    logits = model.lm_head(h[where]).float() / temperature  # [N, V]
    return torch.log_softmax(logits, dim=-1).gather(1, row.labels[where, None]).squeeze(1), where
