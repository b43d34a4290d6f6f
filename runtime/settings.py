"""Where the suite keeps its data, and the settings read from MINICPM_* environment variables.

Data lives under the XDG data dir (~/.local/share/minicpm, or $XDG_DATA_HOME/minicpm);
MINICPM_HOME replaces that folder entirely. Inside it:

    notes.sqlite        the `notes` MCP server's notebook
    agent.sqlite        tool-agent sessions (LangGraph checkpoints), resumable by id
    corpora/default/    the paper corpus when --corpus is not given
    mcp.json            the mcpServers config when --mcp-config is not given (MINICPM_MCP_CONFIG)
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.errors import MiniCPMError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MINICPM_", extra="ignore")

    home: Path | None = None  # MINICPM_HOME: everything below lives here instead of the XDG data dir
    mcp_config: Path | None = None  # MINICPM_MCP_CONFIG: the default mcpServers file


def settings() -> Settings:
    """Read fresh each call: tests and long-lived processes may change the environment."""
    return Settings()


def data_dir() -> Path:
    """The suite's data folder, created on first use."""
    home = settings().home
    if home is None:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        home = Path(xdg) / "minicpm"
    home = home.expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = "MINICPM_HOME" if settings().home is not None else "the data folder"
        raise MiniCPMError(f"{where} {home} cannot be used: {exc.strerror or exc}; point MINICPM_HOME at a "
                           "folder you can write") from None
    if not home.is_dir():
        raise MiniCPMError(f"the data folder {home} is not a folder; point MINICPM_HOME at a folder")
    return home


def data_path(*parts: str) -> Path:
    """A file or folder under data_dir(); its parent folder exists."""
    path = data_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
