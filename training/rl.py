"""GRPO with MiniCPM4's chunk-wise rollout (paper section 3.3, upstream-apps.md section 3.3).

    minicpm train rl --config training/configs/smollm2_mcp_rl.yaml

Each prompt is rolled out group_size times; a trajectory's advantage is its reward minus its group's
mean, over the group's standard deviation. Groups whose rewards are all equal carry no signal and are
dropped (dynamic sampling). The loss per generated token is PPO's clipped surrogate with a higher
upper clip (Clip-Higher), dual-clip for negative advantages, and a KL penalty (k3 estimator) to a
reference policy that is refreshed to the current one every ref_refresh iterations; averaged over
tokens, not trajectories.

Chunk-wise rollout (Algorithm 1 of the paper): every iteration each trajectory in the batch
generates at most `chunk` more tokens. Groups whose trajectories have all finished (end of turn or
max_response) are trained on; unfinished ones keep their tokens and log-probabilities and carry over
into the next iteration's batch, which new prompts top up to batch_groups groups. Each chunk's
tokens keep the log-probabilities of the policy version that sampled them, so the importance ratio
of a token is against that version (chunk-level importance sampling). chunk >= max_response is
ordinary whole-trajectory rollout: each iteration waits for its longest trajectory.

A group is sampled as one batch (all its unfinished members have the same length: each either ended
or wrote exactly `chunk` tokens), so finished members ride along idle until the chunk ends: the
long-tail cost chunking bounds. Each trajectory samples from its own seeded generator, so the
trajectories do not depend on the chunk size while the policy is fixed (tests/test_training_rl.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from contextlib import nullcontext

import torch

from training.batches import Example, TrainingDataError, pack, token_log_probs
from training.sft import LoRAConfig, autocast_for, pick_device


@dataclass
class Prompt:
    ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)  # what the reward needs (expected call, retrieved ids)


@dataclass
class Task:
    """Prompts and a verifiable reward: reward(prompt, completion_text) -> float in [0, 1]."""

    prompts: list[Prompt]
    reward: Callable[[Prompt, str], float]
    stop_ids: set[int]
    decode: Callable[[list[int]], str]


@dataclass
class Trajectory:
    group: int  # the group's number; prompt = prompts[group % len(prompts)]
    member: int
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    old_logp: list[float] = field(default_factory=list)  # under the policy version that sampled each token
    versions: list[int] = field(default_factory=list)  # that version (iteration), per token
    done: bool = False
    rng_state: torch.Tensor | None = None  # its sampling generator's state between chunks


@dataclass
class RLConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data", "out")
    MAYBE_PATH_FIELDS: ClassVar[tuple[str, ...]] = ("model", "start_adapter")

    out: str
    task: str = "tool_calls"  # tool_calls | survey
    data: str | None = None  # the task's samples (JSONL; see training/tasks.py)
    model: str = "default"
    start_adapter: str | None = None  # merged into the model first: RL from an SFT adapter (folder or shipped name)
    method: str = "lora"  # lora | full
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    dialect: str | None = "minicpm"
    limit: int | None = None
    group_size: int = 4
    batch_groups: int = 2  # groups per rollout batch
    chunk: int = 64  # tokens per trajectory per iteration; >= max_response: whole-trajectory rollout
    max_response: int = 128
    iterations: int = 20
    max_groups: int | None = None  # take no new prompts after this many groups; finish the started ones
    temperature: float = 1.0
    lr: float = 1e-5
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 3.0
    kl_coef: float = 0.001
    ref_refresh: int = 10
    max_grad_norm: float = 1.0
    precision: str = "auto"
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    outputs: tuple[str, ...] = ("adapter",)
    adapter_dtype: str = "float16"
    gguf_outtype: str = "f16"

    def __post_init__(self) -> None:
        checks = [
            (self.task in ("tool_calls", "survey"), f"task must be tool_calls or survey (got {self.task!r})"),
            (self.method in ("lora", "full"), f"method must be lora or full (got {self.method!r})"),
            (self.group_size >= 2, "group_size must be at least 2 (advantages compare a group's rollouts)"),
            (self.batch_groups >= 1, "batch_groups must be at least 1"),
            (self.chunk >= 1 and self.max_response >= 1, "chunk and max_response must be at least 1"),
            (self.iterations >= 1, "iterations must be at least 1"),
            (self.temperature > 0, "temperature must be positive (rollouts sample)"),
            (self.lr >= 0, "lr must not be negative"),
            (0 < self.clip_low < 1 and self.clip_high > 0, "clip_low must be in (0, 1) and clip_high positive"),
            (self.dual_clip > 1, "dual_clip must be above 1"),
            (self.kl_coef >= 0, "kl_coef must not be negative"),
            (self.ref_refresh >= 1, "ref_refresh must be at least 1"),
            (self.precision in ("auto", "float32", "bfloat16"), "precision must be auto, float32 or bfloat16"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.method == "lora" or "adapter" not in self.outputs, "a full fine-tune has no adapter output"),
            (self.start_adapter is None or "adapter" not in self.outputs,
             "with start_adapter the new LoRA is a delta on top of it, not an adapter for the base model; "
             "ask for outputs: [merged] (the model with both), or [merged, gguf]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ---------------------------------------------------------------------------------------- rollout


@torch.no_grad()
def rollout_chunk(model, trajectories: list[Trajectory], budget: int, temperature: float, stop_ids: set[int],
                  max_response: int, version: int, seed: int) -> int:
    """Advance one group's unfinished trajectories (same length) by up to `budget` tokens as one
    batch; returns the decode steps taken. Each row samples with its own generator."""
    rows = [t for t in trajectories if not t.done]
    if not rows:
        return 0
    lengths = {len(t.prompt) + len(t.tokens) for t in rows}
    assert len(lengths) == 1, "a group's unfinished trajectories always have one length"
    device = model.model.embed_tokens.weight.device
    generators = []
    for t in rows:
        g = torch.Generator()
        if t.rng_state is None:
            g.manual_seed(seed * 1_000_003 + t.group * 1009 + t.member)
        else:
            g.set_state(t.rng_state)
        generators.append(g)
    prefix = torch.tensor([t.prompt + t.tokens for t in rows], device=device)  # [G, L]
    steps = min(budget, max_response - len(rows[0].tokens))
    cache = model.new_cache(prefix.shape[1] + steps, batch_size=len(rows))
    logits = model(prefix, cache, last_logits_only=True)[:, -1]  # [G, V]
    taken = 0
    pad = min(stop_ids) if stop_ids else 0  # fed to rows that have finished, their outputs unused
    for _ in range(steps):
        logp = torch.log_softmax(logits.float().cpu() / temperature, dim=-1)  # [G, V]
        picked = []
        for i, t in enumerate(rows):
            token = int(torch.multinomial(logp[i].exp(), 1, generator=generators[i])) if not t.done else pad
            if not t.done:
                t.tokens.append(token)
                t.old_logp.append(float(logp[i, token]))
                t.versions.append(version)
                t.done = token in stop_ids or len(t.tokens) >= max_response
            picked.append(token)
        taken += 1
        if all(t.done for t in rows):
            break
        logits = model(torch.tensor(picked, device=device)[:, None], cache)[:, -1]
    for t, g in zip(rows, generators, strict=True):
        t.rng_state = g.get_state()
    return taken


# ---------------------------------------------------------------------------------------- loss


def group_advantages(rewards: list[float]) -> list[float]:
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    return [(r - mean) / (std + 1e-6) for r in rewards]


def policy_terms(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                 ref_logp: torch.Tensor | None, cfg: RLConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token loss: the clipped surrogate with Clip-Higher and dual-clip, negated, plus kl_coef
    times the k3 estimate of KL to the reference. All tensors [N] over generated tokens.
    Returns (loss terms, KL terms, clipped mask)."""
    ratio = torch.exp(new_logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * advantages)
    # dual-clip: a negative advantage with a huge ratio would push without bound; cap at dual_clip * A
    surrogate = torch.where(advantages < 0, torch.maximum(surrogate, cfg.dual_clip * advantages), surrogate)
    kl = torch.zeros_like(surrogate)
    if ref_logp is not None and cfg.kl_coef > 0:
        delta = ref_logp - new_logp
        kl = torch.exp(delta) - delta - 1
    clipped = (ratio < 1 - cfg.clip_low) | (ratio > 1 + cfg.clip_high)
    return -surrogate + cfg.kl_coef * kl, kl.detach(), clipped


def policy_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                ref_logp: torch.Tensor | None, cfg: RLConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The token-level mean of policy_terms, with its KL and clip fraction."""
    terms, kl, clipped = policy_terms(new_logp, old_logp, advantages, ref_logp, cfg)
    return terms.mean(), {"kl": kl.mean().item(), "clip_fraction": clipped.float().mean().item()}


def trajectories_log_probs(model, batch: list[Trajectory], device, temperature: float) -> torch.Tensor:
    """Log-probabilities (at the sampling temperature) of every generated token of the batch under
    the model, in batch order; one forward per trajectory."""
    examples = [Example(t.prompt + t.tokens, [False] * len(t.prompt) + [True] * len(t.tokens)) for t in batch]
    out = []
    for example in examples:  # one row each: packing would reorder them
        (row,) = pack([example], len(example.ids), shuffle=False)
        row = dataclasses.replace(row, ids=row.ids.to(device), labels=row.labels.to(device),
                                  positions=row.positions.to(device))
        logp, _ = token_log_probs(model, row, temperature)
        out.append(logp)
    return torch.cat(out)


class Reference:
    """The KL reference: a snapshot of the trainable parameters, swapped in to score tokens."""

    def __init__(self, model):
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.refresh()

    def refresh(self) -> None:
        self.snapshot = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def log_probs(self, model, batch: list[Trajectory], device, temperature: float) -> torch.Tensor:
        current = {n: p.detach().clone() for n, p in self.params.items()}
        try:
            for n, p in self.params.items():
                p.copy_(self.snapshot[n])
            return trajectories_log_probs(model, batch, device, temperature)
        finally:
            for n, p in self.params.items():
                p.copy_(current[n])


# ---------------------------------------------------------------------------------------- trainer


@dataclass
class IterationRecord:
    iteration: int
    groups_trained: int
    groups_dropped: int  # all rewards equal: no advantage
    reward_mean: float | None
    carried_over: int  # unfinished trajectories going into the next iteration
    generated_tokens: int
    decode_steps: int
    idle_row_steps: int  # decode steps spent on rows that had already finished (the long tail)
    sampling_seconds: float
    training_seconds: float
    loss: float | None = None
    kl: float | None = None
    clip_fraction: float | None = None


def train_rl(model, task: Task, cfg: RLConfig, log=print, on_trained: Callable[[list[Trajectory]], None] | None = None,
             progress: bool = False) -> list[IterationRecord]:
    """Run GRPO on a loaded (LoRA-wrapped or fully trainable) model. on_trained sees the finished
    trajectories of every iteration, before groups without signal are dropped (the tests compare
    them across chunk sizes)."""
    from training.sft import _progress

    if not task.prompts:
        raise TrainingDataError("the RL task has no prompts")
    device = model.model.embed_tokens.weight.device
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TrainingDataError("the model has no trainable parameters (add LoRA or use method: full)")
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
    reference = Reference(model)
    # Rollout, reference and update score tokens in the same precision: a bfloat16 update against
    # float32 rollout log-probs would make the ratio differ from 1 on-policy (spurious clipping).
    autocast = autocast_for(cfg.precision, device) if cfg.precision == "bfloat16" else nullcontext()
    active: list[Trajectory] = []
    next_group = 0
    records: list[IterationRecord] = []
    bar = _progress(progress)
    with bar:
        bar_task = bar.add_task("rl", total=cfg.iterations, loss="-", speed="-")
        for iteration in range(cfg.iterations):
            # top up the batch with new groups
            groups = sorted({t.group for t in active})
            while len(groups) < cfg.batch_groups and (cfg.max_groups is None or next_group < cfg.max_groups):
                prompt = task.prompts[next_group % len(task.prompts)]
                active += [Trajectory(next_group, m, list(prompt.ids)) for m in range(cfg.group_size)]
                groups.append(next_group)
                next_group += 1
            if not active:
                break
            started = time.perf_counter()
            model.eval()
            steps = row_steps = 0
            before = sum(len(t.tokens) for t in active)
            for g in groups:
                members = [t for t in active if t.group == g]
                rows = sum(not t.done for t in members)
                taken = rollout_chunk(model, members, cfg.chunk, cfg.temperature, task.stop_ids,
                                      cfg.max_response, iteration, cfg.seed)
                steps, row_steps = steps + taken, row_steps + taken * rows
            generated = sum(len(t.tokens) for t in active) - before
            sampling = time.perf_counter() - started

            finished = [g for g in groups if all(t.done for t in active if t.group == g)]
            batch, advantages, rewards, dropped = [], [], [], 0
            if on_trained is not None and finished:
                on_trained([t for t in active if t.group in finished])
            for g in finished:
                members = sorted((t for t in active if t.group == g), key=lambda t: t.member)
                prompt = task.prompts[g % len(task.prompts)]
                scores = [task.reward(prompt, decode_completion(task, t)) for t in members]
                rewards += scores
                if max(scores) - min(scores) < 1e-9:
                    dropped += 1
                    continue
                batch += members
                advantages += [a for a, t in zip(group_advantages(scores), members, strict=True) for _ in t.tokens]
            active = [t for t in active if t.group not in finished]

            started = time.perf_counter()
            record = IterationRecord(iteration + 1, len(finished) - dropped, dropped,
                                     sum(rewards) / len(rewards) if rewards else None, len(active), generated, steps,
                                     row_steps - generated, round(sampling, 3), 0.0)
            if batch:
                # One trajectory's graph at a time (gradients accumulate), each token weighing 1 / N:
                # the token-level mean over the batch without holding every trajectory's activations.
                model.train()
                optimizer.zero_grad(set_to_none=True)
                n_tokens = sum(len(t.tokens) for t in batch)
                loss_sum = kl_sum = clipped_sum = 0.0
                offset = 0
                for t in batch:
                    ref_logp = reference.log_probs(model, [t], device, cfg.temperature) if cfg.kl_coef > 0 else None
                    with autocast:
                        new_logp = trajectories_log_probs(model, [t], device, cfg.temperature)
                    old = torch.tensor(t.old_logp, device=device)
                    adv = torch.tensor(advantages[offset : offset + len(t.tokens)], device=device)
                    offset += len(t.tokens)
                    terms, kl, clipped = policy_terms(new_logp.float(), old, adv, ref_logp, cfg)
                    (terms.sum() / n_tokens).backward()
                    loss_sum, kl_sum = loss_sum + terms.sum().item(), kl_sum + kl.sum().item()
                    clipped_sum += clipped.sum().item()
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                record.loss, record.kl = loss_sum / n_tokens, kl_sum / n_tokens
                record.clip_fraction = clipped_sum / n_tokens
            record.training_seconds = round(time.perf_counter() - started, 3)
            if (iteration + 1) % cfg.ref_refresh == 0:
                reference.refresh()
            records.append(record)
            bar.update(bar_task, advance=1, loss="-" if record.loss is None else f"{record.loss:.3f}",
                       speed=f"{generated / max(sampling, 1e-9):.0f}")
            log(json.dumps(dataclasses.asdict(record)))
    model.eval()
    return records


def decode_completion(task: Task, trajectory: Trajectory) -> str:
    return task.decode([t for t in trajectory.tokens if t not in task.stop_ids])


def run_rl(cfg: RLConfig, log=print, progress: bool = True) -> dict[str, Any]:
    """`minicpm train rl`: load the model, build the task, train, write the outputs."""
    from runtime.adapter import LoRASettings
    from runtime.loading import load_torch_model
    from training import lora
    from training.sft import write_outputs
    from training.tasks import build_task

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    loaded = load_torch_model(cfg.model, dtype="float32", adapter=cfg.start_adapter)
    model, tokenizer = loaded.model.to(device), loaded.tokenizer
    task = build_task(cfg, tokenizer)
    settings = LoRASettings(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, tuple(cfg.lora.targets))
    if cfg.method == "lora":
        lora.add_lora(model, settings)
    else:
        model.requires_grad_(True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"GRPO on {loaded.source.label}: task {cfg.task}, {len(task.prompts)} prompts, groups of {cfg.group_size}, "
        f"{cfg.batch_groups} groups per batch, chunk {cfg.chunk} of max {cfg.max_response} tokens")
    with open(out / "log.jsonl", "w", encoding="utf-8") as handle:
        def log_line(line: str) -> None:
            handle.write(line + "\n")
            handle.flush()
        records = train_rl(model, task, cfg, log=log_line, progress=progress)
    rewards = [r.reward_mean for r in records if r.reward_mean is not None]
    summary = {"iterations": len(records), "first_reward": rewards[0] if rewards else None,
               "last_reward": rewards[-1] if rewards else None,
               "sampling_seconds": round(sum(r.sampling_seconds for r in records), 1),
               "training_seconds": round(sum(r.training_seconds for r in records), 1)}
    summary.update(write_outputs(cfg, model, tokenizer, settings, loaded.source.label, log))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary
