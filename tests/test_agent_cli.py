"""`minicpm agent` and `minicpm mcp` as a user runs them: real built-in servers over stdio, the embedded
model through llama.cpp, sessions in a scratch data dir."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import run_cli


@pytest.fixture
def home(tmp_path):
    return {"MINICPM_HOME": str(tmp_path / "home")}


def config_file(tmp_path, **servers) -> str:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return str(path)


CALC = {"command": sys.executable, "args": ["-m", "minicpm_suite", "mcp", "serve", "calc"]}


def events_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_agent_runs_a_task_on_the_embedded_model_and_the_session_continues(tmp_path, home):
    cfg = config_file(tmp_path, calc=CALC)
    first = run_cli("agent", "What is 17*23?", "--mcp-config", cfg, "--approve", "auto", "--require-tool",
                    "--max-steps", "2", "--max-tokens", "48", "--temperature", "0", "--threads", "1", "--json",
                    env=home)
    assert first.returncode == 0, first.stderr
    events = events_of(first.stdout)
    kinds = [e["event"] for e in events]
    # The first turn had to call a tool, and the calc server answered it (whatever the small model asked).
    assert kinds[0] in ("ToolCallEvent", "InvalidCallEvent")
    if kinds[0] == "ToolCallEvent":
        assert events[0]["name"] in ("calculate", "convert_units", "list_units")
        assert "ToolResultEvent" in kinds
    assert kinds[-1] == "AnswerEvent"
    session = first.stderr.split("--session ")[-1].split(")")[0].strip()
    again = run_cli("agent", "Thanks. And 2+2?", "--session", session, "--mcp-config", cfg, "--approve", "auto",
                    "--max-steps", "1", "--max-tokens", "24", "--temperature", "0", "--threads", "1", "--json", env=home)
    assert again.returncode == 0, again.stderr
    assert events_of(again.stdout)[-1]["event"] == "AnswerEvent"


def test_agent_mistakes_are_one_line_errors(tmp_path, home):
    missing = run_cli("agent", "hi", "--mcp-config", str(tmp_path / "nope.json"), env=home)
    assert missing.returncode == 1 and "nope.json does not exist" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"x": {"command": "a", "url": "http://b"}}}')
    both = run_cli("agent", "hi", "--mcp-config", str(bad), env=home)
    assert both.returncode == 1 and "exactly one of" in both.stderr and "Traceback" not in both.stderr
    no_task = run_cli("agent", env=home)
    assert no_task.returncode == 1 and "say what to do" in no_task.stderr
    unknown = run_cli("agent", "hi", "--session", "abc123", "--mcp-config", config_file(tmp_path), env=home)
    assert unknown.returncode == 1 and "there is no session 'abc123'" in unknown.stderr


def test_mcp_list_shows_tools_and_servers_that_did_not_start(tmp_path, home):
    cfg = config_file(tmp_path, calc=CALC, ghost={"command": "no-such-mcp-binary"})
    result = run_cli("mcp", "list", "--mcp-config", cfg, "--json", env=home)
    assert result.returncode == 1  # one server did not start
    listing = {s["name"]: s for s in json.loads(result.stdout)["servers"]}
    assert {t["name"] for t in listing["calc"]["tools"]} >= {"calculate", "convert_units"}
    assert all(not t["needs_approval"] for t in listing["calc"]["tools"])  # read-only tools
    assert "was not found" in listing["ghost"]["error"]


def test_mcp_serve_checks_its_options():
    no_root = run_cli("mcp", "serve", "files")
    assert no_root.returncode != 0 and "--root" in no_root.stderr
    unknown = run_cli("mcp", "serve", "weather")
    assert unknown.returncode != 0 and "invalid choice" in unknown.stderr


def test_a_missing_config_named_by_the_environment_and_a_bad_data_dir_are_errors(tmp_path, home):
    missing = run_cli("mcp", "list", env={**home, "MINICPM_MCP_CONFIG": str(tmp_path / "typo.json")})
    assert missing.returncode == 1 and "typo.json does not exist" in missing.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    bad_home = run_cli("mcp", "list", env={"MINICPM_HOME": str(a_file)})
    assert bad_home.returncode == 1 and "MINICPM_HOME" in bad_home.stderr and "Traceback" not in bad_home.stderr


@pytest.mark.slow
def test_the_terminal_asks_before_a_side_effect_and_runs_it_on_yes(tmp_path, home):
    """A real terminal (a pty): the approval question appears, 'y' is typed, the call runs."""
    import os
    import pty
    import select
    import subprocess
    import time
    from pathlib import Path

    server = str(Path(__file__).parent / "mcp_test_server.py")
    cfg = config_file(tmp_path, counter={"command": sys.executable, "args": [server, "--only-bump"]})
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "minicpm_suite", "agent", "Bump the counter by 2.", "--mcp-config", cfg,
         "--require-tool", "--max-steps", "2", "--max-tokens", "32", "--temperature", "0", "--threads", "1"],
        stdin=follower, stdout=follower, stderr=follower, env={**os.environ, **home, "COLUMNS": "200"}, close_fds=True)
    os.close(follower)
    seen, answered = b"", False
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"Allow" in seen and b"[y/n]" in seen:
                os.write(leader, b"y\n")
                answered = True
            if process.poll() is not None and not ready:
                break
        process.wait(30)
    finally:
        process.kill()
        os.close(leader)
    text = seen.decode(errors="replace")
    assert answered, text
    assert "counter.bump" in text and "← bump" in text and "denied" not in text, text
    assert process.returncode == 0, text
