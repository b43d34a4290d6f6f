"""Shared fixtures: the embedded model (loaded once), tiny random MiniCPM4 checkpoints and their GGUFs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_checkpoint.py

from tiny_checkpoint import make_checkpoint  # noqa: E402

# Never let a test reach the network: hub lookups fail fast and locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_cli(*args: str, input: str | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `minicpm ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "minicpm_suite", *args],
        input=input, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    from runtime.model_ref import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="session")
def embedded_torch():
    """The embedded SmolLM2 on the torch runtime, float32."""
    from runtime.loading import load_torch_model

    return load_torch_model("default", dtype="float32")


@pytest.fixture(scope="session")
def tiny_minicpm(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "minicpm-untied", tied=False)


@pytest.fixture(scope="session")
def tiny_minicpm_tied(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "minicpm-tied", tied=True, seed=1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", minicpm=False, seed=2)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_minicpm) -> Path:
    """The untied tiny MiniCPM4 checkpoint converted to an f32 GGUF."""
    from runtime.convert import convert_hf_to_gguf

    return convert_hf_to_gguf(tiny_minicpm, tmp_path_factory.mktemp("gguf") / "tiny.gguf", outtype="f32")


@pytest.fixture(scope="session")
def english_text() -> str:
    from tiny_checkpoint import training_text

    return training_text()
