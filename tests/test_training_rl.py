"""GRPO with chunk-wise rollout on a tiny random model: the reward rises, and chunking changes when
trajectories are trained, not which."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from runtime.adapter import LoRASettings
from runtime.checkpoint import load_hf_checkpoint
from training import lora
from training.rl import Prompt, RLConfig, Task, group_advantages, policy_loss, train_rl

TARGET = range(10, 70)  # the tokens the toy reward wants: a tenth of the vocabulary


def toy_task(n_prompts: int = 4, stop: set[int] | None = None) -> Task:
    gen = torch.Generator().manual_seed(3)
    prompts = [Prompt(torch.randint(10, 500, (6,), generator=gen).tolist()) for _ in range(n_prompts)]

    def reward(prompt: Prompt, text: str) -> float:
        tokens = text.split()
        return sum(int(t) in TARGET for t in tokens) / max(1, len(tokens))

    return Task(prompts, reward, stop or set(), lambda ids: " ".join(map(str, ids)))


def tiny_policy(folder, full: bool = False):
    model = load_hf_checkpoint(folder, torch.float32)
    if full:
        model.requires_grad_(True)
    else:
        lora.add_lora(model, LoRASettings(r=4, alpha=8))
    return model


def test_reward_rises_over_iterations(tiny_llama):
    torch.manual_seed(0)
    model = tiny_policy(tiny_llama, full=True)
    cfg = RLConfig(out="unused", group_size=6, batch_groups=2, chunk=4, max_response=8, iterations=24, lr=3e-3,
                   kl_coef=0.001, ref_refresh=5, temperature=1.0)
    records = train_rl(model, toy_task(), cfg, log=lambda _: None)
    rewards = [r.reward_mean for r in records if r.reward_mean is not None]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.3, rewards
    assert any(r.carried_over for r in records)  # chunk 4 of 8: trajectories did carry over


def _trained(folder, chunk: int, stop: set[int]) -> dict[tuple[int, int], tuple]:
    model = tiny_policy(folder)
    seen: dict[tuple[int, int], tuple] = {}

    def collect(batch):
        for t in batch:
            assert (t.group, t.member) not in seen  # each trajectory is trained exactly once
            seen[t.group, t.member] = (tuple(t.tokens), tuple(round(x, 4) for x in t.old_logp))

    cfg = RLConfig(out="unused", group_size=3, batch_groups=2, chunk=chunk, max_response=9, iterations=50,
                   max_groups=5, lr=0.0, kl_coef=0.0)
    train_rl(model, toy_task(stop=stop), cfg, log=lambda _: None, on_trained=collect)
    return seen


def test_chunkwise_rollout_trains_on_the_same_trajectories_as_whole(tiny_llama):
    # lr 0 keeps the policy fixed: the trajectories then depend on the seeds only, not on the chunk size.
    # Stop ids make trajectories end at different lengths (the case chunking is for).
    stop = set(range(100, 160))
    whole = _trained(tiny_llama, chunk=9, stop=stop)
    chunked = _trained(tiny_llama, chunk=2, stop=stop)
    assert len(whole) == 15 and whole.keys() == chunked.keys()
    assert {len(v[0]) for v in whole.values()} != {9}  # some ended early
    for key in whole:
        assert whole[key][0] == chunked[key][0], key
        assert whole[key][1] == pytest.approx(chunked[key][1], abs=2e-3)


def test_policy_loss_clips_and_dual_clips():
    cfg = RLConfig(out="unused", clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.0)
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.0, 2.0, 0.5, 10.0]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, stats = policy_loss(new, old, adv, None, cfg)
    # per token surrogate: 1; min(2, 1.28) = 1.28; min(-0.5, -0.8) = -0.8; min(-10, -1.28) = -10 -> dual clip -3
    assert float(loss) == pytest.approx(-(1 + 1.28 - 0.8 - 3) / 4)
    assert stats["clip_fraction"] == pytest.approx(0.75)


def test_group_advantages_are_centred_and_scaled():
    adv = group_advantages([1.0, 0.0, 0.0, 1.0])
    assert sum(adv) == pytest.approx(0.0) and adv[0] == pytest.approx(1.0, rel=1e-4)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="group_size"):
        RLConfig(out="x", group_size=1)
    with pytest.raises(ValueError, match="delta on top of it"):  # that adapter would drop the start adapter
        RLConfig(out="x", start_adapter="smollm2-mcp", outputs=("adapter",))
    assert dataclasses.replace(RLConfig(out="x"), chunk=8).chunk == 8
