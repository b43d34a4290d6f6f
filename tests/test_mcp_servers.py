"""The built-in MCP servers (files, calc, clock, notes), driven through a real MCP client session.

Most tests use the SDK's in-memory client/server pair; one test per server goes over real stdio in a
child process started through the registry, as `minicpm mcp serve NAME` will.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.memory import create_connected_server_and_client_session
from mcp.types import CallToolResult

from mcp_tools.servers import SERVERS, calc, clock, files, get_server, notes, run_stdio
from runtime.errors import MiniCPMError

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def call(server, tool: str, **arguments) -> CallToolResult:
    async with create_connected_server_and_client_session(server) as session:
        return await session.call_tool(tool, arguments)


def text(result: CallToolResult) -> str:
    return result.content[0].text


async def refused(server, tool: str, expected: str, **arguments) -> str:
    """Call a tool that must fail; check the message names the problem."""
    result = await call(server, tool, **arguments)
    assert result.isError, f"{tool}({arguments}) should have been refused, got {result.structuredContent}"
    assert expected in text(result), text(result)
    return text(result)


# ----------------------------------------------------------------------------------------- registry


def test_registry_lists_the_servers_with_help_and_options():
    assert {"files", "calc", "clock", "notes"} <= set(SERVERS)
    for name, spec in SERVERS.items():
        assert spec.help and "\n" not in spec.help
        parser = argparse.ArgumentParser(prog=f"minicpm mcp serve {name}")
        spec.add_arguments(parser)
    with pytest.raises(MiniCPMError, match="built-in servers are: files, calc, clock, notes, papers"):
        get_server("nope")
    with pytest.raises(MiniCPMError, match="no built-in MCP server named 'nope'"):
        run_stdio("nope", argparse.Namespace())


def parse(name: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    SERVERS[name].add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bad_options_fail_before_serving(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(MiniCPMError, match="no such folder"):
        SERVERS["files"].build(parse("files", "--root", str(tmp_path / "missing")))
    with pytest.raises(MiniCPMError, match="not a folder"):
        SERVERS["files"].build(parse("files", "--root", str(a_file)))
    with pytest.raises(MiniCPMError, match="cannot create the folder"):
        SERVERS["notes"].build(parse("notes", "--db", str(a_file / "notes.sqlite")))
    with pytest.raises(MiniCPMError, match="is a folder"):
        SERVERS["notes"].build(parse("notes", "--db", str(tmp_path)))
    with pytest.raises(MiniCPMError, match="not a SQLite database"):
        SERVERS["notes"].build(parse("notes", "--db", str(a_file)))
    with pytest.raises(MiniCPMError, match="unknown time zone 'Mars/Base'"):
        SERVERS["clock"].build(parse("clock", "--timezone", "Mars/Base"))


EXPECTED_READ_ONLY = {
    "read_file": True, "list_dir": True, "find_files": True, "search_text": True, "write_file": False, "make_dir": False,
    "calculate": True, "convert_units": True, "list_units": True,
    "current_time": True, "convert_time": True, "shift_time": True, "time_between": True, "day_of_week": True,
    "add_note": False, "search_notes": True, "list_notes": True, "get_note": True, "delete_note": False,
}
DESTRUCTIVE = {"write_file", "delete_note"}


async def test_every_tool_is_described_and_annotated(tmp_path):
    servers = [files.build_server(tmp_path), calc.build_server(), clock.build_server(), notes.build_server(tmp_path / "n.db")]
    seen = set()
    for server in servers:
        async with create_connected_server_and_client_session(server) as session:
            for tool in (await session.list_tools()).tools:
                seen.add(tool.name)
                assert tool.description and len(tool.description) > 30, tool.name
                assert tool.annotations.readOnlyHint is EXPECTED_READ_ONLY[tool.name], tool.name
                assert tool.annotations.destructiveHint is (tool.name in DESTRUCTIVE), tool.name
                for name, schema in tool.inputSchema.get("properties", {}).items():
                    assert schema.get("description"), f"{tool.name}.{name} has no description"
    assert seen == set(EXPECTED_READ_ONLY)


# ----------------------------------------------------------------------------------------- files


@pytest.fixture
def sandbox(tmp_path):
    """root/ with a few files, and outside/ next to it that symlinks in root point at."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "src").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    (root / "README.md").write_text("# Demo\nhello world\n")
    (root / "src" / "main.py").write_text("def main():\n    return 'hello'\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "link_out.txt").symlink_to(outside / "secret.txt")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "dangling.txt").symlink_to(outside / "created-through-link.txt")
    (root / "link_in.md").symlink_to(root / "README.md")
    (root / "src" / "up").symlink_to("../..", target_is_directory=True)  # a relative link, deeper in the tree
    return root, outside


async def test_files_write_then_read_round_trips(sandbox):
    root, _ = sandbox
    server = files.build_server(root)
    written = await call(server, "write_file", path="notes/2025/todo.txt", content="one\ntwo\nthree — ünïcode\n")
    assert not written.isError, text(written)
    assert written.structuredContent["created"] is True
    assert (root / "notes/2025/todo.txt").read_text() == "one\ntwo\nthree — ünïcode\n"
    read = await call(server, "read_file", path="notes/2025/todo.txt")
    assert read.structuredContent["content"] == "one\ntwo\nthree — ünïcode\n"
    assert read.structuredContent["truncated"] is False
    await refused(server, "write_file", "already exists; pass overwrite=true", path="notes/2025/todo.txt", content="x")
    assert (root / "notes/2025/todo.txt").read_text().startswith("one")
    replaced = await call(server, "write_file", path="notes/2025/todo.txt", content="new", overwrite=True)
    assert replaced.structuredContent == {"path": "notes/2025/todo.txt", "bytes_written": 3, "created": False}
    assert (root / "notes/2025/todo.txt").read_text() == "new"
    made = await call(server, "make_dir", path="a/b/c")
    assert made.structuredContent["created"] is True and (root / "a/b/c").is_dir()


async def test_files_read_ranges_limits_and_binary(sandbox):
    root, _ = sandbox
    (root / "big.txt").write_text("".join(f"line {i}\n" for i in range(1, 1001)))
    server = files.build_server(root)
    part = (await call(server, "read_file", path="big.txt", start_line=10, end_line=12)).structuredContent
    assert part["content"] == "line 10\nline 11\nline 12\n"
    assert part["truncated"] is True and part["next_start_line"] == 13
    capped = (await call(server, "read_file", path="big.txt", max_bytes=100)).structuredContent
    assert len(capped["content"].encode()) <= 100 and capped["content"].endswith("\n")
    assert capped["truncated"] and capped["next_start_line"] == capped["end_line"] + 1
    await refused(server, "read_file", "binary file", path="image.png")
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    await refused(server, "read_file", "not UTF-8 text", path="latin1.txt")
    (root / "one-line.min.js").write_text("x" * 100_000)
    cut = (await call(server, "read_file", path="one-line.min.js", max_bytes=500)).structuredContent
    assert len(cut["content"]) == 500 and cut["truncated"] is True
    await refused(server, "read_file", "past the end", path="big.txt", start_line=5000)
    await refused(server, "read_file", "does not exist", path="nope.txt")
    await refused(server, "read_file", "is a folder", path="src")
    assert (await call(server, "read_file", path="link_in.md")).structuredContent["content"].startswith("# Demo")


async def test_files_list_find_and_search(sandbox):
    root, _ = sandbox
    server = files.build_server(root)
    listing = (await call(server, "list_dir")).structuredContent
    kinds = {entry["path"]: entry["kind"] for entry in listing["entries"]}
    assert kinds["src"] == "dir" and kinds["README.md"] == "file" and kinds["linkdir"] == "symlink"
    deep = (await call(server, "list_dir", recursive=True)).structuredContent
    paths = {entry["path"] for entry in deep["entries"]}
    assert "src/main.py" in paths and not any(p.startswith("linkdir/") for p in paths)
    assert (await call(server, "list_dir", recursive=True, max_entries=2)).structuredContent["truncated"] is True
    found = (await call(server, "find_files", pattern="*.py")).structuredContent
    assert found["matches"] == ["src/main.py"]
    hits = (await call(server, "search_text", query="HELLO")).structuredContent
    assert {(m["path"], m["line"]) for m in hits["matches"]} >= {("README.md", 2), ("src/main.py", 2)}
    assert not any("secret" in m["text"] for m in hits["matches"])  # link_out.txt leads outside: not searched
    regex = (await call(server, "search_text", query=r"def \w+\(", regex=True)).structuredContent
    assert [m["path"] for m in regex["matches"]] == ["src/main.py"]
    await refused(server, "search_text", "invalid regular expression", query="(", regex=True)


ESCAPES = [  # (tool, arguments, what the refusal must say)
    ("read_file", {"path": "../outside/secret.txt"}, "uses '..' to leave the root"),
    ("read_file", {"path": "src/../../outside/secret.txt"}, "uses '..' to leave the root"),
    ("read_file", {"path": "/etc/passwd"}, "is an absolute path"),
    ("read_file", {"path": "link_out.txt"}, "symbolic link that points outside"),
    ("read_file", {"path": "linkdir/secret.txt"}, "symbolic link that points outside"),
    ("read_file", {"path": "src/up/outside/secret.txt"}, "symbolic link that points outside"),
    ("list_dir", {"path": "linkdir"}, "symbolic link that points outside"),
    ("list_dir", {"path": ".."}, "uses '..' to leave the root"),
    ("find_files", {"pattern": "*", "path": "linkdir"}, "symbolic link that points outside"),
    ("search_text", {"query": "secret", "path": "/tmp"}, "is an absolute path"),
    ("write_file", {"path": "../escaped.txt", "content": "x"}, "uses '..' to leave the root"),
    ("write_file", {"path": "/tmp/escaped.txt", "content": "x"}, "is an absolute path"),
    ("write_file", {"path": "linkdir/new.txt", "content": "x"}, "symbolic link that points outside"),
    ("write_file", {"path": "linkdir/sub/new.txt", "content": "x"}, "symbolic link that points outside"),
    ("write_file", {"path": "link_out.txt", "content": "x", "overwrite": True}, "symbolic link that points outside"),
    ("write_file", {"path": "dangling.txt", "content": "x"}, "symbolic link that points outside"),
    ("make_dir", {"path": "linkdir/newdir"}, "symbolic link that points outside"),
    ("make_dir", {"path": "../newdir"}, "uses '..' to leave the root"),
]


async def test_files_refuses_every_escape(sandbox):
    root, outside = sandbox
    before = sorted(p.name for p in outside.rglob("*"))
    async with create_connected_server_and_client_session(files.build_server(root)) as session:
        for tool, arguments, expected in ESCAPES:
            result = await session.call_tool(tool, arguments)
            assert result.isError, f"{tool}({arguments}) was not refused: {result.structuredContent}"
            assert expected in text(result), (tool, arguments, text(result))
    assert sorted(p.name for p in outside.rglob("*")) == before
    assert (outside / "secret.txt").read_text() == "top secret\n"
    assert not (root.parent / "escaped.txt").exists() and not (root.parent / "newdir").exists()


async def test_files_read_only_offers_no_write_tools(sandbox):
    root, _ = sandbox
    async with create_connected_server_and_client_session(files.build_server(root, read_only=True)) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert names == {"read_file", "list_dir", "find_files", "search_text"}
        result = await session.call_tool("write_file", {"path": "x.txt", "content": "x"})
        assert result.isError and not (root / "x.txt").exists()


# ----------------------------------------------------------------------------------------- calc


async def test_calc_is_exact_and_refuses_abuse():
    server = calc.build_server()
    result = await call(server, "calculate", expression="17*23")
    assert not result.isError and result.structuredContent["result"] == 391
    assert "391" in text(result)
    assert (await call(server, "calculate", expression="2**100")).structuredContent["text"] == str(2**100)
    assert (await call(server, "calculate", expression="10/4 + sqrt(16)")).structuredContent["result"] == 6.5
    assert (await call(server, "calculate", expression="0.1 + 0.2")).structuredContent["text"] == "0.3"
    await refused(server, "calculate", "digits; the limit is 4000", expression="9**9**9")
    await refused(server, "calculate", "division by zero", expression="1/(3-3)")
    await refused(server, "calculate", "write powers with **", expression="2^10")
    await refused(server, "calculate", "unknown function '__import__'", expression="__import__('os')")
    await refused(server, "calculate", "only the listed functions can be called", expression="__import__('os').system('ls')")
    await refused(server, "calculate", "Attribute is not allowed", expression="(1).__class__")
    await refused(server, "calculate", "nested too deeply", expression="-" * 500 + "1")
    await refused(server, "calculate", "characters long", expression="1+" * 600 + "1")
    await refused(server, "calculate", "outside the function's domain", expression="sqrt(-1)")
    await refused(server, "calculate", "cannot parse", expression="2 +* 3")


async def test_calc_refuses_code_and_costly_rounding():
    server = calc.build_server()
    await refused(server, "calculate", "decimal places", expression="round(5, -10**9)")
    for code in ("__import__('os').system('true')", "(1).__class__", "open('/etc/passwd')", "[x for x in ()]"):
        result = await call(server, "calculate", expression=code)
        assert result.isError, code


async def test_calc_converts_units():
    server = calc.build_server()
    boiling = await call(server, "convert_units", value=100, from_unit="C", to_unit="F")
    assert boiling.structuredContent["result"] == 212 and boiling.structuredContent["text"] == "100 C = 212 F"
    assert (await call(server, "convert_units", value=0, from_unit="K", to_unit="celsius")).structuredContent["result"] == -273.15
    assert (await call(server, "convert_units", value=1, from_unit="GiB", to_unit="MiB")).structuredContent["result"] == 1024
    assert (await call(server, "convert_units", value=1, from_unit="kB", to_unit="B")).structuredContent["result"] == 1000
    assert (await call(server, "convert_units", value=1, from_unit="mile", to_unit="km")).structuredContent["result"] == 1.609344
    assert (await call(server, "convert_units", value=1, from_unit="m²", to_unit="cm2")).structuredContent["result"] == 10000
    message = await refused(server, "convert_units", "unknown unit 'furlongs'", value=1, from_unit="furlongs", to_unit="m")
    assert "length: m, km" in message and "temperature: C, F, K" in message
    await refused(server, "convert_units", "cannot convert kg (mass) to m (length)", value=1, from_unit="kg", to_unit="m")
    await refused(server, "convert_units", "below absolute zero", value=-300, from_unit="C", to_unit="K")


# ----------------------------------------------------------------------------------------- clock

FIXED_NOW = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)  # 01:30 in Paris, half an hour before DST starts


@pytest.fixture
def clock_server():
    return clock.build_server(now=lambda: FIXED_NOW, local_timezone="Europe/Paris")


async def test_clock_now_and_conversions(clock_server):
    tokyo = (await call(clock_server, "current_time", timezone="Asia/Tokyo")).structuredContent
    assert tokyo["iso"] == "2025-03-30T09:30:00+09:00" and tokyo["weekday"] == "Sunday"
    local = (await call(clock_server, "current_time")).structuredContent
    assert local["timezone"] == "Europe/Paris" and local["utc_offset"] == "+01:00"
    summer = (await call(clock_server, "convert_time", time="2025-07-01T12:00:00Z", to_timezone="America/New_York")).structuredContent
    assert summer["iso"] == "2025-07-01T08:00:00-04:00" and summer["abbreviation"] == "EDT"
    gap = (await call(clock_server, "convert_time", time="2025-03-30T02:30", from_timezone="Europe/Paris", to_timezone="UTC")).structuredContent
    assert "does not exist" in gap["note"]
    await refused(clock_server, "current_time", "unknown time zone 'Mars/Olympus'", timezone="Mars/Olympus")
    await refused(clock_server, "convert_time", "cannot read 'next tuesday'", time="next tuesday", to_timezone="UTC")


async def test_clock_arithmetic(clock_server):
    month_end = (await call(clock_server, "shift_time", time="2025-01-31", amount=1, unit="months")).structuredContent
    assert month_end["result"] == "2025-02-28"
    leap = (await call(clock_server, "shift_time", time="2024-02-29", amount=-1, unit="years")).structuredContent
    assert leap["result"] == "2023-02-28"
    # Across the DST change: a calendar day keeps the wall clock, 24 hours do not.
    day = (await call(clock_server, "shift_time", time="now", amount=1, unit="days")).structuredContent
    hours = (await call(clock_server, "shift_time", time="now", amount=24, unit="hours")).structuredContent
    assert day["result"] == "2025-03-31T01:30:00+02:00" and hours["result"] == "2025-03-31T02:30:00+02:00"
    await refused(clock_server, "shift_time", "whole number", time="2025-01-01", amount=1.5, unit="days")
    between = (await call(clock_server, "time_between", start="2024-01-15", end="2025-03-20")).structuredContent
    assert (between["years"], between["months"], between["days"], between["total_days"]) == (1, 2, 5, 430)
    assert between["text"] == "1 year, 2 months and 5 days"
    christmas = (await call(clock_server, "day_of_week", date="2025-12-25")).structuredContent
    assert christmas["weekday"] == "Thursday" and christmas["iso_week"] == 52
    assert (await call(clock_server, "day_of_week", date="today")).structuredContent["date"] == "2025-03-30"


def test_zoneinfo_has_a_time_zone_database():
    import zoneinfo

    assert "Europe/Paris" in zoneinfo.available_timezones()


# ----------------------------------------------------------------------------------------- notes


async def test_notes_add_search_get_delete(tmp_path):
    server = notes.build_server(tmp_path / "notes.sqlite")
    async with create_connected_server_and_client_session(server) as session:
        added = await session.call_tool("add_note", {"title": "Trip planning", "body": "Book the train to Lyon before Friday", "tags": ["travel"]})
        note_id = added.structuredContent["id"]
        await session.call_tool("add_note", {"title": "Groceries", "body": "eggs, milk"})
        found = (await session.call_tool("search_notes", {"query": "train lyon"})).structuredContent
        assert [hit["id"] for hit in found["hits"]] == [note_id] and found["match"] == "all words"
        assert "[train]" in found["hits"][0]["snippet"]
        listed = (await session.call_tool("list_notes", {})).structuredContent
        assert [n["title"] for n in listed["notes"]] == ["Groceries", "Trip planning"]
        assert (await session.call_tool("list_notes", {"tag": "TRAVEL"})).structuredContent["total"] == 1
        got = (await session.call_tool("get_note", {"id": note_id})).structuredContent
        assert got["body"] == "Book the train to Lyon before Friday" and got["tags"] == ["travel"]
        deleted = await session.call_tool("delete_note", {"id": note_id})
        assert deleted.structuredContent == {"deleted_id": note_id, "title": "Trip planning"}
        assert (await session.call_tool("search_notes", {"query": "train lyon"})).structuredContent["hits"] == []
        gone = await session.call_tool("get_note", {"id": note_id})
        assert gone.isError and f"no note with id {note_id}" in text(gone)
        again = await session.call_tool("delete_note", {"id": note_id})
        assert again.isError and "nothing was deleted" in text(again)


FTS_QUERIES = [  # (query, whether it should find the note below)
    ('what\'s "this"?', True), ('"', True), ("'", True), ("AND", False), ("OR NOT", True), ("*", False),
    ("a* -b NEAR(c d)", True), ('NEAR/3 "quoted', True), ("title:foo", False), ("(((", False), ("^start", False),
    ("", False), ("100%", True), ("under_score", True), ("机器", True),
]


async def test_notes_search_never_fails_on_fts_syntax(tmp_path):
    server = notes.build_server(tmp_path / "notes.sqlite")
    async with create_connected_server_and_client_session(server) as session:
        await session.call_tool("add_note", {"title": "What's this?", "body": 'A "quoted" note about 100% under_score 机器学习'})
        for query, finds in FTS_QUERIES:
            result = await session.call_tool("search_notes", {"query": query})
            assert not result.isError, (query, text(result))
            assert bool(result.structuredContent["hits"]) is finds, query


def test_notes_schema_version_migrations_and_wal(tmp_path):
    db = tmp_path / "notes.sqlite"
    notes.build_server(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == notes.SCHEMA_VERSION == len(notes.MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {notes.SCHEMA_VERSION + 1}")
    with pytest.raises(MiniCPMError, match="newer than this suite"):
        notes.build_server(db)


async def test_notes_two_servers_share_one_notebook(tmp_path):
    db = tmp_path / "shared.sqlite"
    first, second = notes.build_server(db), notes.build_server(db)
    await call(first, "add_note", title="from the first", body="alpha")
    await call(second, "add_note", title="from the second", body="beta")
    titles = {n["title"] for n in (await call(first, "list_notes")).structuredContent["notes"]}
    assert titles == {"from the first", "from the second"}


# ----------------------------------------------------------------------------------------- stdio

ENTRY = (
    "import argparse, sys\n"
    "from mcp_tools.servers import SERVERS, run_stdio\n"
    "parser = argparse.ArgumentParser()\n"
    "SERVERS[sys.argv[1]].add_arguments(parser)\n"
    "run_stdio(sys.argv[1], parser.parse_args(sys.argv[2:]))\n"
)


STDIO_CASES = {  # server: (options, tool, arguments, text the result must contain)
    "files": (["--read-only"], "read_file", {"path": "hello.txt"}, "hi there"),
    "calc": ([], "calculate", {"expression": "17*23"}, "391"),
    "clock": (["--timezone", "Asia/Tokyo"], "day_of_week", {"date": "2025-12-25"}, "Thursday"),
    "notes": ([], "add_note", {"title": "over stdio"}, "over stdio"),
}


async def test_each_server_over_stdio(tmp_path):
    """Each server in its own process through the registry, as `minicpm mcp serve NAME` runs it; all at once,
    since most of the time is each child importing mcp."""
    (tmp_path / "hello.txt").write_text("hi there\n")
    paths = {"files": ["--root", str(tmp_path)], "notes": ["--db", str(tmp_path / "n.sqlite")]}
    outcomes: dict[str, tuple[set[str], CallToolResult]] = {}

    async def session_with(name: str) -> None:
        options, tool, arguments, _ = STDIO_CASES[name]
        params = StdioServerParameters(command=sys.executable, args=["-c", ENTRY, name, *paths.get(name, []), *options],
                                       cwd=str(REPO), env=dict(os.environ))
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            outcomes[name] = names, await session.call_tool(tool, arguments)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for name in STDIO_CASES:
                group.start_soon(session_with, name)
    for name, (_, tool, _, expected) in STDIO_CASES.items():
        names, result = outcomes[name]
        assert tool in names, name
        assert not result.isError and expected in text(result), (name, text(result))
    assert "write_file" not in outcomes["files"][0]  # --read-only reached the server


async def test_a_symlink_loop_is_a_message_and_does_not_break_search(sandbox):
    root, _ = sandbox
    (root / "loop").symlink_to(root / "loop")
    server = files.build_server(root)
    await refused(server, "read_file", "symlink loop", path="loop")
    found = await call(server, "search_text", query="hello")
    assert not found.isError and found.structuredContent["matches"]
