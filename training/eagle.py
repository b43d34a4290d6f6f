"""Train an Eagle draft head (runtime/eagle.py) for a target model, on the target's own outputs.

    minicpm train eagle --config training/configs/smollm2_eagle.yaml

EAGLE-1's recipe (Li et al. 2024), on CPU-sized data:
1. Text (arXiv abstracts from the paper corpus by default, or a .txt/.jsonl file) is tokenized
   into one stream and cut into rows of seq_len tokens; the last holdout_rows rows are held out.
2. The frozen target runs once over every row: its final hidden states (after the last RMSNorm)
   and its greedy next token at each position are kept. Those are what the head must reproduce at
   inference, so the labels are the target's argmax, not the text's next token (a draft token is
   accepted when it equals the target's choice, greedy).
3. The head takes (hidden state h_i + uniform noise, token x_{i+1}) and is trained on
   w_reg * SmoothL1(its output, h_{i+1}) + w_cls * cross-entropy(lm_head(its output), the target's
   argmax at i+1), the target's lm_head frozen. The noise (EAGLE's) stands in for the head's own
   imperfect outputs, which it is fed when it chains drafts.
With init_from_target the head starts as "the next state is this one" (fc passes the feature
through, the layer's residual branches start at zero, its other weights are the target's last
layer's), which converges much faster on little data than a random start.

AdamW with warmup then cosine decay; a checkpoint every save_every steps (the same command resumes,
as `minicpm train sft` does); every step logged to <out>/log.jsonl; at each epoch's end the
held-out agreement: how often the head's first draft token is the target's greedy token, the
acceptance rate of a one-token draft. The head is written to <out>/head in the layout
`--draft-model` reads (and CPM.cu's loader expects).
"""

from __future__ import annotations

import gzip
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from training.batches import TrainingDataError


@dataclass
class EagleConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("out",)
    MAYBE_PATH_FIELDS: ClassVar[tuple[str, ...]] = ("model", "data")

    out: str  # run folder: checkpoint, log, head
    model: str = "default"  # the target: any model reference the runtime takes
    # abstracts (the paper corpus's sample) | a .txt or .jsonl ({"text": ...}) file, or a list of them
    data: str | list[str] = "abstracts"
    limit: int | None = 2000  # texts used at most from each source (abstracts: the first N)
    seq_len: int = 256  # tokens per row
    holdout_rows: int = 8  # rows kept out of training for the agreement score
    layers: int = 1  # decoder layers in the head
    init_from_target: bool = True  # start from the target's last layer (see the module docstring)
    epochs: int = 2
    batch_rows: int = 8  # rows per optimizer step
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 0.5
    w_reg: float = 1.0
    w_cls: float = 0.1
    noise: float = 0.1  # features get uniform noise in [-noise, noise] during training
    threads: int | None = None
    seed: int = 0
    save_every: int = 20

    def __post_init__(self) -> None:
        checks = [
            (self.seq_len >= 8, "seq_len must be at least 8"),
            (self.holdout_rows >= 1, "holdout_rows must be at least 1"),
            (self.layers >= 1, "layers must be at least 1"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_rows >= 1, "batch_rows must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.noise >= 0, "noise must not be negative"),
            (self.w_reg >= 0 and self.w_cls >= 0 and self.w_reg + self.w_cls > 0, "w_reg and w_cls must not both be 0"),
            (self.save_every >= 1, "save_every must be at least 1"),
            (self.limit is None or self.limit >= 1, "limit must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def read_texts(data: str, limit: int | None) -> tuple[list[str], bytes]:
    """The first `limit` texts of `data` ('abstracts': the paper corpus's arXiv sample, the shared
    10K one when it is beside the checkout; a .txt file of blank-line-separated texts; a .jsonl of
    {"text": ...}) and the bytes that identify them (for the resume fingerprint)."""
    if data == "abstracts":
        from benchmarks.quantization import SHARED_ABSTRACTS
        from survey.corpus import shipped_sample

        path = SHARED_ABSTRACTS if SHARED_ABSTRACTS.is_file() else shipped_sample()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts = [a for a in (json.loads(line).get("abstract", "").strip() for line in f) if a]
    else:
        path = Path(data)
        if not path.is_file():
            raise TrainingDataError(f"data: {path} does not exist (a .txt file, a .jsonl of {{\"text\": ...}}, or "
                                    "'abstracts')")
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            from training.data.mcp_trajectories import read_jsonl

            texts = [row["text"] for row in read_jsonl(path, "training text", field="text", kind=str)]
        else:
            texts = [p.strip() for p in raw.split("\n\n") if p.strip()]
    texts = texts[:limit]
    if not texts:
        raise TrainingDataError(f"{path}: no text to train on")
    return texts, "\n\n".join(texts).encode()


def token_rows(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """One stream of every text (each with its BOS when the tokenizer adds one, then its EOS),
    cut into rows [N, seq_len]; the remainder is dropped."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream += tokenizer.encode(text) + ([eos] if eos is not None else [])
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.inference_mode()
def target_outputs(target, rows: torch.Tensor, progress) -> tuple[torch.Tensor, torch.Tensor]:
    """features [N, T, C] (normed final hidden states) and the target's greedy token [N, T] at each
    position, one row at a time."""
    divisor = target.config.logit_divisor
    feats, labels = [], []
    task = progress.add_task("target", total=len(rows), loss="-", speed="-")
    for row in rows:
        started = time.perf_counter()
        h = target.hidden_states(row[None])  # [1, T, C]
        labels.append(target.logits(h)[0].argmax(-1))
        feats.append((h[0] * divisor).to(torch.float32))
        progress.update(task, advance=1, speed=f"{len(row) / (time.perf_counter() - started):.0f}")
    return torch.stack(feats), torch.stack(labels)


def head_step_inputs(features: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor):
    """Head inputs and targets of rows: position i feeds (h_i, x_{i+1}) and should give h_{i+1}
    and the target's token after i+1. Shapes [B, T-1, C], [B, T-1], [B, T-1, C], [B, T-1]."""
    return features[:, :-1], rows[:, 1:], features[:, 1:], labels[:, 1:]


def head_outputs(head, target, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The head over whole rows (no cache: causal attention within each row) [B, T, C]."""
    embeds = target.model.embed_tokens(tokens) * target.config.embedding_scale
    if head.input_norm1 is not None:
        embeds, features = head.input_norm1(embeds), head.input_norm2(features)
    h = head.fc(torch.cat([embeds, features], dim=-1))
    positions = torch.arange(tokens.shape[1])
    cos, sin = target.rotary(positions, tokens.shape[1])
    for layer in head.layers:
        h = layer(h, cos, sin, None, 0)
    return h


def agreement(head, target, features, rows, labels) -> float:
    """Share of held-out positions where the head's argmax is the target's greedy token."""
    with torch.inference_mode():
        feats, tokens, _, want = head_step_inputs(features, rows, labels)
        out = head_outputs(head, target, feats, tokens)
        guess = target.logits(out / target.config.logit_divisor).argmax(-1)
    return float((guess == want).float().mean())


def new_head(target, cfg: EagleConfig):
    from runtime.eagle import EagleHead, head_config

    c = target.config
    head = EagleHead(c, head_config(c, {"num_hidden_layers": cfg.layers}))
    if cfg.init_from_target:
        # The head starts as "the next state is this one": fc passes the (renormalised) feature
        # through and the layer's residual branches start at zero (o_proj, down_proj), so its
        # first outputs are on the features' scale; the layer's other weights start as the
        # target's last layer's, which already read this model's states.
        last = target.model.layers[-1].state_dict()
        feature_rms = float(target.model.norm.weight.detach().float().pow(2).mean().sqrt())
        with torch.no_grad():
            for layer in head.layers:
                layer.load_state_dict(last)
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            head.fc.weight.normal_(0.0, 0.02)
            head.fc.weight[:, c.hidden_size :] = torch.eye(c.hidden_size)
            head.fc.bias.zero_()
            head.input_norm2.weight.fill_(feature_rms)  # norm2(h) ~ h: a normed state's RMS is its norm weight's
    return head.float().requires_grad_(True)


def save_eagle_head(head, target_config, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `head` in the layout runtime/eagle.load_eagle_head reads (and CPM.cu's loader expects),
    replacing any earlier head in `folder` only once the new one is complete (its freq_*.pt stay)."""
    import shutil

    from safetensors.torch import save_file

    from training.export import replace_folder

    t, h = target_config, head.config
    raw = {"architectures": ["EagleHead"], "model_type": t.model_type, "hidden_size": t.hidden_size,
           "num_hidden_layers": h.num_hidden_layers, "intermediate_size": h.intermediate_size,
           "num_attention_heads": h.num_attention_heads, "num_key_value_heads": h.num_key_value_heads,
           "head_dim": h.head_dim, "rms_norm_eps": h.rms_norm_eps, "vocab_size": t.vocab_size}
    raw.update({k: getattr(t, k) for k in ("scale_emb", "scale_depth", "dim_model_base") if getattr(t, k) is not None})
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.detach().to(dtype).contiguous() for k, v in head.state_dict().items()},
              str(staging / "model.safetensors"))
    (staging / "config.json").write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    for freq in folder.glob("freq_*.pt"):  # FR-Spec files depend on the tokenizer, not the head: keep them
        shutil.copy2(freq, staging / freq.name)
    replace_folder(staging, folder)
    return folder


def train_eagle(cfg: EagleConfig, log=print, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) the head training cfg describes; returns a summary (the head's folder, the
    held-out agreement before and after)."""
    from runtime.loading import load_torch_model
    from training.sft import Checkpoint, _progress, fingerprint, lr_at

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    texts, data_bytes = [], b""
    for source in [cfg.data] if isinstance(cfg.data, str) else cfg.data:  # before the model loads: bad paths fail fast
        more, raw = read_texts(source, cfg.limit)
        texts, data_bytes = texts + more, data_bytes + raw
    out = Path(cfg.out)
    loaded = load_torch_model(cfg.model, dtype="float32")
    target = loaded.model.eval().requires_grad_(False)
    rows = token_rows(loaded.tokenizer, texts, cfg.seq_len)
    if len(rows) <= cfg.holdout_rows:
        raise TrainingDataError(f"{len(rows)} rows of {cfg.seq_len} tokens from {len(texts)} texts: need more than "
                                f"holdout_rows ({cfg.holdout_rows}); add text or lower seq_len")
    head = new_head(target, cfg)
    trainable = list(head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_n = len(rows) - cfg.holdout_rows
    steps_per_epoch = math.ceil(train_n / cfg.batch_rows)
    total = cfg.epochs * steps_per_epoch
    checkpoint = Checkpoint(out / "checkpoint")
    print_ = fingerprint(cfg, data_bytes)
    step, elapsed = 0, 0.0
    state = checkpoint.resume(head, optimizer, print_, log)
    if state is not None:
        step, elapsed = state["step"], state["elapsed"]
    log(f"Eagle head for {loaded.source.label}: {cfg.layers} layer(s), {sum(p.numel() for p in trainable):,} "
        f"parameters; {train_n} rows of {cfg.seq_len} tokens to train on, {cfg.holdout_rows} held out; {total} steps")
    out.mkdir(parents=True, exist_ok=True)
    first_step = step
    with _progress(progress) as bar:
        features, labels = target_outputs(target, rows, bar)
        held = (features[train_n:], rows[train_n:], labels[train_n:])
        before = agreement(head, target, *held) if step == 0 else None
        task = bar.add_task("eagle", total=total, completed=step, loss="-", speed="-")
        while step < total:
            epoch, index = divmod(step, steps_per_epoch)
            order = torch.randperm(train_n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            batch = order[index * cfg.batch_rows : (index + 1) * cfg.batch_rows]
            feats, tokens, want_h, want_token = head_step_inputs(features[batch], rows[batch], labels[batch])
            noisy = feats + (torch.rand_like(feats) * 2 - 1) * cfg.noise
            lr = lr_at(step, total, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            started = time.perf_counter()
            out_h = head_outputs(head, target, noisy, tokens)
            reg = F.smooth_l1_loss(out_h, want_h)
            logits = target.logits(out_h / target.config.logit_divisor)  # [B, T-1, V]
            cls = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), want_token.reshape(-1))
            loss = cfg.w_reg * reg + cfg.w_cls * cls
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm))
            optimizer.step()
            seconds = time.perf_counter() - started
            step, elapsed = step + 1, elapsed + seconds
            record = {"step": step, "epoch": epoch, "loss": round(loss.item(), 5), "reg": round(reg.item(), 5),
                      "cls": round(cls.item(), 5), "lr": lr, "grad_norm": round(grad_norm, 4),
                      "tokens_per_second": round(tokens.numel() / seconds, 1), "elapsed": round(elapsed, 1)}
            if step % steps_per_epoch == 0 or step == total:
                record["held_out_agreement"] = round(agreement(head, target, *held), 4)
            with open(out / "log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            bar.update(task, advance=1, loss=f"{loss.item():.3f}", speed=f"{tokens.numel() / seconds:.0f}")
            stopping = stop_after is not None and stop_after <= step - first_step and step < total
            if step % cfg.save_every == 0 or step == total or stopping:
                checkpoint.save(head, optimizer, {"step": step, "elapsed": elapsed, "fingerprint": print_,
                                                  "total": total})
            if stopping:
                log(f"stopped after step {step} of {total}; run the same command again to resume")
                return {"steps": step, "stopped": True, "checkpoint": str(checkpoint.folder)}
    after = agreement(head, target, *held)
    folder = save_eagle_head(head, target.config, out / "head")
    log(f"Eagle head -> {folder}")
    summary = {"steps": step, "train_seconds": round(elapsed, 1), "rows": train_n, "seq_len": cfg.seq_len,
               "held_out_agreement_before": None if before is None else round(before, 4),
               "held_out_agreement": round(after, 4), "head": str(folder)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary

