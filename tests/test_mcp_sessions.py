"""MCP client sessions against a real stdio server (tests/mcp_test_server.py) and the config reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mcp_tools.config import McpConfigError, load_config, parse_config
from mcp_tools.sessions import McpSessions

SERVER = str(Path(__file__).parent / "mcp_test_server.py")


def server(*extra: str, **entry) -> dict:
    return {"command": sys.executable, "args": [SERVER, *extra], **entry}


# -- the mcpServers file ------------------------------------------------------------------------

def test_config_reads_the_claude_desktop_shape_with_variables():
    servers = parse_config({"mcpServers": {
        "local": {"command": "npx", "args": ["-y", "pkg", "${HOME}/x"], "env": {"KEY": "${env:TOKEN}"}},
        "remote": {"url": "https://${HOST:-example.org}/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}},
        "old": {"type": "sse", "url": "http://127.0.0.1:9/sse"},
        "off": {"command": "x", "disabled": True},
    }}, environ={"HOME": "/home/u", "TOKEN": "t0k"})
    by_name = {s.name: s for s in servers}
    assert set(by_name) == {"local", "remote", "old"}
    assert by_name["local"].args == ("-y", "pkg", "/home/u/x") and by_name["local"].env == {"KEY": "t0k"}
    assert by_name["remote"].transport == "streamable_http" and by_name["remote"].url == "https://example.org/mcp"
    assert by_name["remote"].headers == {"Authorization": "Bearer t0k"}
    assert by_name["old"].transport == "sse"


@pytest.mark.parametrize("entry, message", [
    ({"command": "x", "args": ["${NOPE}"]}, "${NOPE}, which is not set"),
    ({"command": "x", "url": "http://a"}, "exactly one of"),
    ({}, "exactly one of"),
    ({"url": "ftp://a"}, "http:// or https://"),
    ({"command": "x", "args": "not a list"}, "args must be a list"),
    ({"command": "x", "timeout": 0}, "timeout must be a positive"),
    ({"type": "websocket", "url": "http://a"}, "unknown type"),
])
def test_config_mistakes_are_named(entry, message):
    with pytest.raises(McpConfigError, match=message.replace("$", r"\$").replace("{", r"\{").replace("}", r"\}")):
        parse_config({"mcpServers": {"s": entry}}, environ={})


def test_config_file_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPM_HOME", str(tmp_path / "home"))
    assert load_config() == []  # no default file: no servers
    with pytest.raises(McpConfigError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(McpConfigError, match="not valid JSON"):
        load_config(bad)
    bad.write_text(json.dumps({"servers": {}}))
    with pytest.raises(McpConfigError, match="mcpServers"):
        load_config(bad)


# -- live sessions ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sessions():
    reports: list[str] = []
    config = parse_config({"mcpServers": {
        "test": server(env={"GIVEN": "yes"}, timeout=3),
        "missing": {"command": "no-such-command-for-minicpm-tests"},
        "broken": server("--fail-at-start"),
    }})
    with McpSessions(config, connect_timeout=20, report=reports.append) as live:
        live.reports = reports
        yield live


def test_servers_that_cannot_start_are_reported_and_the_rest_run(sessions):
    status = sessions.status()
    assert status["test"] is None
    assert "no-such-command-for-minicpm-tests' was not found" in status["missing"]
    assert "cannot open the database" in status["broken"]  # the tail of its stderr
    assert any("'missing' did not start" in r for r in sessions.reports)
    assert {t.name for t in sessions.tools()} >= {"bump", "fail", "hang", "crash", "echo_env"}


def test_a_session_keeps_server_state_between_calls(sessions):
    first = json.loads(sessions.call("bump", {"by": 5}).text)["value"]
    second = json.loads(sessions.call("bump", {"by": 1}).text)["value"]
    assert second == first + 1


def test_tool_errors_and_bad_calls_come_back_as_results(sessions):
    failed = sessions.call("fail", {"message": "disk on fire"})
    assert failed.is_error and "disk on fire" in failed.text
    wrong_type = sessions.call("bump", {"by": "three"})
    assert wrong_type.is_error and "'three' is not of type 'integer'" in wrong_type.text
    unknown = sessions.call("launch_rockets", {})
    assert unknown.is_error and "no tool named 'launch_rockets'" in unknown.text and "bump" in unknown.text


def test_the_parent_environment_is_not_inherited(sessions, monkeypatch):
    assert sessions.call("echo_env", {"name": "GIVEN"}).text == "yes"
    assert sessions.call("echo_env", {"name": "PATH"}).text != "<unset>"  # the SDK's safe minimum
    # Something only the test process has never reaches the server.
    assert sessions.call("echo_env", {"name": "PYTEST_CURRENT_TEST"}).text == "<unset>"


def test_a_hanging_call_times_out_and_the_server_restarts(sessions):
    hung = sessions.call("hang", {"seconds": 30})
    assert hung.is_error and "did not answer within 3 s" in hung.text
    after = sessions.call("bump", {"by": 1})
    assert not after.is_error and json.loads(after.text)["value"] == 1  # a fresh process: state starts over
    assert any("restarting" in r for r in sessions.reports)


def test_a_crashed_server_is_reported_and_restarted_on_next_use(sessions):
    crashed = sessions.call("crash", {})
    assert crashed.is_error and "crashed" in crashed.text
    assert any("crashed" in r and "about to crash" in r for r in sessions.reports)
    assert not sessions.call("bump", {}).is_error


def test_inherit_env_passes_the_whole_environment(monkeypatch):
    monkeypatch.setenv("MINICPM_TEST_MARKER", "here")
    config = parse_config({"mcpServers": {"t": server(inheritEnv=True)}})
    with McpSessions(config) as live:
        assert live.call("echo_env", {"name": "MINICPM_TEST_MARKER"}).text == "here"


def test_a_server_that_hangs_at_start_is_given_up_on():
    config = parse_config({"mcpServers": {"slow": server("--hang-at-start")}})
    with McpSessions(config, connect_timeout=2) as live:
        assert "did not finish the MCP handshake within 2 s" in live.status()["slow"]
        assert live.tools() == []


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("transport, path", [("--http", "/mcp"), ("--sse", "/sse")])
def test_remote_servers_over_streamable_http_and_sse(transport, path):
    import socket
    import subprocess
    import time

    port = free_port()
    process = subprocess.Popen([sys.executable, SERVER, transport, str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the server listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        entry = {"url": f"http://127.0.0.1:{port}{path}", "headers": {"X-Test": "1"}}
        if transport == "--sse":
            entry["type"] = "sse"
        with McpSessions(parse_config({"mcpServers": {"remote": entry}})) as live:
            assert live.status()["remote"] is None, live.status()
            first = json.loads(live.call("bump", {"by": 2}).text)["value"]
            assert json.loads(live.call("bump", {"by": 1}).text)["value"] == first + 1
            assert live.call("fail", {"message": "remote boom"}).is_error
    finally:
        process.terminate()
        process.wait(10)


def test_an_unreachable_remote_server_is_reported():
    config = parse_config({"mcpServers": {"gone": {"url": f"http://127.0.0.1:{free_port()}/mcp"}}})
    with McpSessions(config, connect_timeout=10) as live:
        assert "cannot reach http://127.0.0.1" in live.status()["gone"]  # a reason, not a crash
        assert live.call("anything", {}).is_error
