"""The chat app's settings file: theme, keymap, the models the picker offers, the defaults of a new chat.

<data dir>/tui.json (MINICPM_TUI_CONFIG or `minicpm chat --config FILE` names another), for example:

    {
      "theme": "textual-dark",
      "keymap": {"new_chat": "ctrl+n", "cancel": "escape", "survey": "ctrl+s"},
      "models": [
        {"name": "embedded SmolLM2", "model": "default", "backend": "auto"},
        {"name": "MiniCPM4-8B", "model": "~/models/MiniCPM4-8B", "backend": "torch", "sparse": "on"},
        {"name": "vLLM", "model": "openbmb/MiniCPM4-8B", "backend": "openai", "base_url": "http://127.0.0.1:8000/v1"}
      ],
      "new_chat": {"model": "default", "backend": "auto", "temperature": 0.7, "max_tokens": 1024, "tools": []}
    }

keymap maps the app's binding ids (KEYMAP_IDS) to keys in Textual's notation ("ctrl+n", "f2",
several comma-separated). The app writes the theme back when the user picks one; everything else is
the user's, read once at start. A file that is not valid gets one clear message naming the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_write_text
from runtime.errors import MiniCPMError
from tui.engine import ChatOptions

DEFAULT_THEME = "textual-dark"
# Binding ids the keymap may rebind, with their default keys.
KEYMAP_IDS = {
    "send": "enter",  # in the prompt
    "newline": "shift+enter,ctrl+j",  # in the prompt; ctrl+j where a terminal cannot tell shift+enter
    "cancel": "escape",
    "new_chat": "ctrl+n",
    "settings": "ctrl+o",
    "survey": "ctrl+s",
    "toggle_thinking": "ctrl+t",
    "toggle_sidebar": "ctrl+b",
    "copy_last": "ctrl+y",
    "quit": "ctrl+q",
    "survey_back": "escape",  # on the survey screen
    "survey_resume": "ctrl+r",  # on the survey screen
}
EMBEDDED = {"name": "embedded SmolLM2-135M", "model": "default", "backend": "auto"}


class ConfigError(MiniCPMError):
    """The settings file cannot be used as it is."""


@dataclass
class ModelEntry:
    """One model the picker offers."""

    name: str
    options: ChatOptions


@dataclass
class TuiConfig:
    path: Path
    theme: str = DEFAULT_THEME
    keymap: dict[str, str] = field(default_factory=dict)
    models: list[ModelEntry] = field(default_factory=list)
    new_chat: ChatOptions = field(default_factory=ChatOptions)

    @classmethod
    def load(cls, path: Path | str | None = None) -> TuiConfig:
        path = Path(path).expanduser() if path else default_path()
        if not path.exists():
            return cls(path, models=[ModelEntry(EMBEDDED["name"], ChatOptions())])
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the chat settings {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the chat settings {path} are not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return cls.parse(raw, path)

    @classmethod
    def parse(cls, raw: Any, path: Path) -> TuiConfig:
        where = str(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: the settings must be a JSON object")
        unknown = set(raw) - {"theme", "keymap", "models", "new_chat"}
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))} "
                              "(known: theme, keymap, models, new_chat)")
        theme = raw.get("theme", DEFAULT_THEME)
        if not isinstance(theme, str) or not theme:
            raise ConfigError(f"{where}: theme must be a theme's name, e.g. \"{DEFAULT_THEME}\"")
        keymap = raw.get("keymap", {})
        if not isinstance(keymap, dict) or not all(isinstance(v, str) and v.strip() for v in keymap.values()):
            raise ConfigError(f"{where}: keymap must map binding ids to keys, e.g. {{\"new_chat\": \"ctrl+n\"}}")
        bad = set(keymap) - set(KEYMAP_IDS)
        if bad:
            raise ConfigError(f"{where}: keymap: unknown binding id(s) {', '.join(sorted(bad))} "
                              f"(known: {', '.join(KEYMAP_IDS)})")
        new_chat = _options(raw.get("new_chat", {}), f"{where}: new_chat")
        models_raw = raw.get("models", [EMBEDDED])
        if not isinstance(models_raw, list):
            raise ConfigError(f"{where}: models must be a list of {{\"name\", \"model\", \"backend\", ...}} objects")
        models = []
        for i, entry in enumerate(models_raw):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
                raise ConfigError(f"{where}: models[{i}] needs a \"name\"")
            rest = {k: v for k, v in entry.items() if k != "name"}
            models.append(ModelEntry(entry["name"], _options(rest, f"{where}: models[{i}] ({entry['name']})")))
        return cls(path, theme, dict(keymap), models, new_chat)

    def keys(self) -> dict[str, str]:
        """Binding id -> keys: the defaults with the user's keymap on top."""
        return {**KEYMAP_IDS, **self.keymap}

    def save_theme(self, theme: str) -> None:
        """Write the chosen theme back, keeping everything else in the file as the user wrote it."""
        self.theme = theme
        raw: dict[str, Any] = {}
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return  # never overwrite a file we could not read
        raw["theme"] = theme
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(raw, indent=2) + "\n")


def local_models(folders: list[Path] | None = None) -> list[ModelEntry]:
    """Models found on disk, for the picker: .gguf files and HF checkpoint folders (config.json with
    *.safetensors) in <data dir>/models and in the current folder. Never recursive: it runs as the
    settings screen opens."""
    from runtime.settings import data_dir

    found: list[ModelEntry] = []
    for folder in folders or [data_dir() / "models", Path.cwd()]:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix == ".gguf" and path.is_file():
                found.append(ModelEntry(f"{path.name} (llama.cpp)", ChatOptions(model=str(path), backend="gguf")))
            elif path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
                found.append(ModelEntry(f"{path.name} (torch)", ChatOptions(model=str(path), backend="torch")))
    return found


def default_path() -> Path:
    from runtime.settings import data_path

    override = os.environ.get("MINICPM_TUI_CONFIG")
    return Path(override).expanduser() if override else data_path("tui.json")


def _options(raw: Any, where: str) -> ChatOptions:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")
    known = set(ChatOptions.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    values = dict(raw)
    if "tools" in values:
        if not isinstance(values["tools"], list) or not all(isinstance(t, str) for t in values["tools"]):
            raise ConfigError(f"{where}: tools must be a list of MCP server names")
        values["tools"] = tuple(values["tools"])
    try:
        return ChatOptions(**values)
    except (MiniCPMError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
