"""RL tasks from data files: prompts rendered as the runtime renders them, and their rewards.

- tool_calls: MCP samples, either mcp_eval's shape ({"tools", "messages", "expected"}) or training
  trajectories (training/data/mcp_trajectories.py; the prompt is everything before the last call,
  which is the expected one). Reward: training/rewards.py tool_call_reward.
- survey: survey-writing samples (training/data/survey_samples.py: {"messages", "retrieved"}),
  the prompt being every message before the last assistant turn. Reward: survey_reward.
"""

from __future__ import annotations

from functools import partial

from training.batches import TrainingDataError, render_conversation
from training.rewards import expected_from_trajectory, survey_reward, tool_call_reward
from training.rl import Prompt, RLConfig, Task


def build_task(cfg: RLConfig, tokenizer) -> Task:
    from training.data.mcp_trajectories import read_jsonl

    if cfg.data is None:
        raise TrainingDataError(f"task {cfg.task} needs `data`: a JSONL file of samples")
    rows = read_jsonl(cfg.data, f"{cfg.task} samples")[: cfg.limit]
    prompts = []
    for n, row in enumerate(rows, 1):
        where = f"{cfg.data}: sample {n} ({row.get('id', 'no id')})"
        if cfg.task == "tool_calls":
            if "expected" in row:
                messages, expected = row["messages"], row["expected"]
            else:
                found = expected_from_trajectory(row["messages"])
                if found is None:
                    raise TrainingDataError(f"{where}: a trajectory without a tool call has nothing to reward")
                messages, expected = found
            tools = row.get("tools") or []
            text = render_conversation(tokenizer, messages, tools, cfg.dialect, add_generation_prompt=True)
            prompts.append(Prompt(tokenizer.encode(text), {"expected": expected, "tools": tools}))
        else:
            messages = row["messages"]
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
            text = render_conversation(tokenizer, messages[:last], None, None, add_generation_prompt=True)
            prompts.append(Prompt(tokenizer.encode(text), {"retrieved": list(row.get("retrieved") or [])}))
    if cfg.task == "tool_calls":
        from runtime.tool_calls.local import choose_dialect

        dialect = choose_dialect(cfg.dialect, tokenizer.chat_template)[0].name  # the one the prompts were rendered in

        def reward(prompt: Prompt, completion: str) -> float:
            return tool_call_reward(completion, prompt.meta["expected"], prompt.meta["tools"], dialect)
    else:
        def reward(prompt: Prompt, completion: str) -> float:
            return survey_reward(completion, prompt.meta["retrieved"])
    return Task(prompts, reward, set(tokenizer.stop_token_ids), partial(tokenizer.decode))
