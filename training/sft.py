"""Supervised fine-tuning on the runtime's torch model: full or LoRA, loss on assistant tokens only.

    minicpm train sft --config training/configs/smollm2_mcp_lora.yaml

The data is JSONL, one conversation per line ({"messages": [...], "tools": [...]?}), rendered as the
runtime renders it at inference (training/batches.py). Samples are packed into rows of at most
max_tokens; an optimizer step takes grad_accum rows and averages the loss over their target tokens.
AdamW, linear warmup then cosine decay to min_lr_ratio * lr, gradients clipped. bfloat16 autocast
where the device has it (precision: auto picks it on CUDA; CPU stays float32 unless asked).

A checkpoint (trainable weights, optimizer, step) is written every save_every steps into
<out>/checkpoint, atomically; running the same config again resumes from it, and a config that
changed what the checkpoint was trained on is refused rather than mixed in. Every step is logged to
<out>/log.jsonl. At the end: the adapter (<out>/adapter, PEFT layout, `--adapter` loads it), and
when asked the merged model as an HF folder (<out>/merged) and as GGUF (<out>/model.gguf).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from training.batches import PackedRow, TrainingDataError, encode_conversation, pack, token_log_probs
from training.config import ConfigError

OUTPUTS = ("adapter", "merged", "gguf")


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SFTConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data", "out")
    MAYBE_PATH_FIELDS: ClassVar[tuple[str, ...]] = ("model",)

    data: str  # JSONL of conversations
    out: str  # run folder: checkpoint, log, outputs
    model: str = "default"  # any model reference the runtime takes (embedded GGUF, HF folder, hub id)
    method: str = "lora"  # lora | full
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    dialect: str | None = "minicpm"  # how tools and calls are rendered (runtime/tool_calls/dialects)
    limit: int | None = None  # use the first N samples
    max_tokens: int = 2048  # packed row length
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (also caps the schedule)
    grad_accum: int = 4  # packed rows per optimizer step
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto | float32 | bfloat16
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None
    seed: int = 0
    save_every: int = 10
    outputs: tuple[str, ...] = ("adapter",)
    gguf_outtype: str = "f16"
    adapter_dtype: str = "float16"  # the saved adapter's tensors: float16 halves the file, float32 is exact

    def __post_init__(self) -> None:
        checks = [
            (self.method in ("lora", "full"), f"method must be lora or full (got {self.method!r})"),
            (self.precision in ("auto", "float32", "bfloat16"), f"precision must be auto, float32 or bfloat16 (got {self.precision!r})"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda (got {self.device!r})"),
            (self.max_tokens >= 16, "max_tokens must be at least 16"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (self.grad_accum >= 1, "grad_accum must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.save_every >= 1, "save_every must be at least 1"),
            (set(self.outputs) <= set(OUTPUTS), f"outputs must be among {', '.join(OUTPUTS)}"),
            (self.method == "lora" or "adapter" not in self.outputs, "a full fine-tune has no adapter output; "
                                                                      "ask for outputs: [merged] or [merged, gguf]"),
            (self.adapter_dtype in ("float16", "float32"), "adapter_dtype must be float16 or float32"),
            (self.limit is None or self.limit >= 1, "limit must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def lr_at(step: int, total: int, cfg: SFTConfig) -> float:
    """Linear warmup over warmup_ratio of the steps, then cosine from lr down to min_lr_ratio * lr."""
    warmup = int(cfg.warmup_ratio * total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for, but torch sees no CUDA GPU")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def autocast_for(precision: str, device: torch.device):
    if precision == "bfloat16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def fingerprint(cfg: SFTConfig, data_bytes: bytes) -> str:
    """What a checkpoint was trained on: the data and every setting that changes the run (not the
    outputs or the save cadence, which may change between resumes)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ("out", "outputs", "save_every", "threads", "gguf_outtype", "adapter_dtype")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(hashlib.sha256(data_bytes).digest())
    return digest.hexdigest()[:16]


def load_examples(cfg: SFTConfig, tokenizer) -> tuple[list, bytes]:
    from training.data.mcp_trajectories import read_jsonl

    path = Path(cfg.data)
    rows = read_jsonl(path, "training data")[: cfg.limit]
    examples = []
    for n, row in enumerate(rows, 1):
        try:
            examples.append(encode_conversation(tokenizer, row["messages"], row.get("tools"), cfg.dialect))
        except TrainingDataError as exc:
            raise TrainingDataError(f"{path}: sample {n} ({row.get('id', 'no id')}): {exc}") from None
        except Exception as exc:  # the runtime's message checks (bad roles, bad tool schemas)
            raise TrainingDataError(f"{path}: sample {n} ({row.get('id', 'no id')}) cannot be rendered: {exc}") from None
    return examples, path.read_bytes()


@dataclass
class Checkpoint:
    folder: Path

    @property
    def exists(self) -> bool:
        old = self.folder.with_name(f".{self.folder.name}.old")
        if not self.folder.exists() and (old / "state.json").is_file():
            old.rename(self.folder)  # a crash between replace_folder's two renames: the last good one
        return (self.folder / "state.json").is_file()

    def save(self, model, optimizer, state: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        from training.export import replace_folder

        import shutil

        staging = self.folder.with_name(f".{self.folder.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)  # left by a crash mid-save
        staging.mkdir(parents=True)
        trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(staging / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        rng = {"cpu": torch.get_rng_state()}  # dropout masks continue as in an uninterrupted run
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, staging / "rng.pt")
        (staging / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        replace_folder(staging, self.folder)

    def resume(self, model, optimizer, fingerprint: str, log) -> dict[str, Any] | None:
        """The saved state when a checkpoint of this run (same fingerprint) exists, its weights and
        optimizer loaded and <out>/log.jsonl cut back to its step; None for a fresh start. A
        checkpoint of other data or settings is refused rather than mixed in."""
        from runtime.atomic import atomic_write_text

        if not self.exists:
            return None
        state = json.loads((self.folder / "state.json").read_text(encoding="utf-8"))
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(f"{self.folder} was trained with other data or settings; use a new `out` folder "
                              "(or delete that checkpoint to start over)")
        state = self.load(model, optimizer)
        log(f"resuming at step {state['step']} of {state['total']} from {self.folder}")
        log_file = self.folder.parent / "log.jsonl"
        if log_file.is_file():  # steps logged after the checkpoint are trained again: log them once
            kept = [line for line in log_file.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= state["step"]]
            atomic_write_text(log_file, "".join(line + "\n" for line in kept))
        return state

    def load(self, model, optimizer) -> dict[str, Any]:
        from safetensors.torch import load_file

        state = json.loads((self.folder / "state.json").read_text(encoding="utf-8"))
        params = dict(model.named_parameters())
        for name, tensor in load_file(str(self.folder / "trainable.safetensors")).items():
            with torch.no_grad():
                params[name].copy_(tensor)
        optimizer.load_state_dict(torch.load(self.folder / "optimizer.pt", weights_only=True))
        rng = torch.load(self.folder / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return state


def row_loss(model, row: PackedRow, device: torch.device, autocast) -> torch.Tensor:
    """Summed negative log-likelihood of the row's targets."""
    row = PackedRow(row.ids.to(device), row.labels.to(device), row.positions.to(device), row.segments)
    with autocast:
        logp, _ = token_log_probs(model, row)
    return -logp.sum()


def train_sft(cfg: SFTConfig, log=print, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) the fine-tune cfg describes; returns a summary with the outputs' paths.
    stop_after: leave after that many steps of this call, checkpointed, without writing outputs (an
    interrupted run; running again resumes), as `minicpm train sft --stop-after N` does."""
    from runtime.loading import load_torch_model
    from training import lora

    if not Path(cfg.data).is_file():  # before the model loads: that takes a while
        raise TrainingDataError(f"{cfg.data} does not exist; build the training data first")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    loaded = load_torch_model(cfg.model, dtype="float32")
    model, tokenizer = loaded.model.to(device), loaded.tokenizer
    examples, data_bytes = load_examples(cfg, tokenizer)
    rows = pack(examples, cfg.max_tokens, seed=cfg.seed, shuffle=False)
    groups_per_epoch = math.ceil(len(rows) / cfg.grad_accum)
    total = cfg.epochs * groups_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * groups_per_epoch)

    settings = lora.LoRASettings(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, tuple(cfg.lora.targets))
    if cfg.method == "lora":
        lora.add_lora(model, settings)
    else:
        model.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    checkpoint = Checkpoint(out / "checkpoint")
    print_ = fingerprint(cfg, data_bytes)
    step, tokens_seen, elapsed = 0, 0, 0.0
    state = checkpoint.resume(model, optimizer, print_, log)
    if state is not None:
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed"]
    n_trainable = sum(p.numel() for p in trainable)
    log(f"{cfg.method} fine-tune of {loaded.source.label}: {len(examples)} samples in {len(rows)} packed rows "
        f"of <= {cfg.max_tokens} tokens, {sum(e.targets for e in examples)} target tokens; {total} steps of "
        f"{cfg.grad_accum} rows; {n_trainable:,} trainable parameters; {device.type}")

    model.train()
    autocast = autocast_for(cfg.precision, device)
    out.mkdir(parents=True, exist_ok=True)
    first_step = step
    losses: list[float] = []
    bar = _progress(progress)
    with bar:
        task = bar.add_task("sft", total=total, completed=step, loss="-", speed="-")
        while step < total:
            epoch, index = divmod(step, groups_per_epoch)
            order = list(range(len(rows)))
            random.Random(cfg.seed * 1000 + epoch).shuffle(order)  # the same order on resume
            group = [rows[i] for i in order[index * cfg.grad_accum : (index + 1) * cfg.grad_accum]]
            targets = sum(r.targets for r in group)
            lr = lr_at(step, total, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for row in group:
                loss = row_loss(model, row, device, autocast) / targets
                loss.backward()
                total_loss += loss.item()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm))
            optimizer.step()
            seconds = time.perf_counter() - started
            tokens = sum(int(r.ids.shape[1]) for r in group)
            step, tokens_seen, elapsed = step + 1, tokens_seen + tokens, elapsed + seconds
            losses.append(total_loss)
            record = {"step": step, "epoch": epoch, "loss": round(total_loss, 5), "lr": lr, "grad_norm": round(grad_norm, 4),
                      "tokens": tokens, "targets": targets, "tokens_per_second": round(tokens / seconds, 1),
                      "elapsed": round(elapsed, 1)}
            with open(out / "log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            bar.update(task, advance=1, loss=f"{total_loss:.3f}", speed=f"{tokens / seconds:.0f}")
            stopping = stop_after is not None and stop_after <= step - first_step and step < total
            if step % cfg.save_every == 0 or step == total or stopping:
                checkpoint.save(model, optimizer, {"step": step, "tokens_seen": tokens_seen, "elapsed": elapsed,
                                                   "fingerprint": print_, "total": total})
            if stopping:
                log(f"stopped after step {step} of {total}; run the same command again to resume")
                return {"steps": step, "stopped": True, "checkpoint": str(checkpoint.folder)}
    model.eval()
    summary: dict[str, Any] = {"steps": step, "tokens_seen": tokens_seen, "train_seconds": round(elapsed, 1),
                               "final_loss": losses[-1] if losses else None, "trainable_parameters": n_trainable}
    summary.update(write_outputs(cfg, model, tokenizer, settings, loaded.source.label, log))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def write_outputs(cfg: SFTConfig, model, tokenizer, settings, base_label: str, log) -> dict[str, str]:
    from training import lora
    from training.export import save_hf_folder

    out, written = Path(cfg.out), {}
    if "adapter" in cfg.outputs:
        dtype = torch.float16 if cfg.adapter_dtype == "float16" else torch.float32
        written["adapter"] = str(lora.save_adapter(model, settings, out / "adapter", cfg.model, dtype, cfg.dialect))
        log(f"adapter -> {written['adapter']}")
    if "merged" in cfg.outputs or "gguf" in cfg.outputs:
        model = model.cpu()
        if cfg.method == "lora":
            lora.merge_lora(model)
        merged = save_hf_folder(model, tokenizer, out / "merged")
        written["merged"] = str(merged)
        log(f"merged model (HF layout) -> {merged}")
        if "gguf" in cfg.outputs:
            from runtime.convert import convert_hf_to_gguf

            gguf_path = convert_hf_to_gguf(merged, out / "model.gguf", cfg.gguf_outtype, force=True)
            written["gguf"] = str(gguf_path)
            log(f"GGUF ({cfg.gguf_outtype}) -> {gguf_path}")
    return written


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled)
