"""Build benchmarks/data/mcp_eval.jsonl: tool-call samples over the built-in MCP servers' real tools.

    python -m benchmarks.build_mcp_eval [--out FILE] [--check]

The set that benchmarks/mcp_eval.py scores (MiniCPM4-MCP's func / param / value metrics, see
/work/shared/reference/upstream-apps.md section 2.6). One JSON object per line:

    {"id": "calc-convert_units-03", "server": "calc",
     "tools": [every tool of that server, OpenAI shape, as the server itself lists it],
     "messages": [optional system message, the user's request, and for multi-step samples the
                  earlier assistant tool_calls with the server's real results],
     "expected": {"name": "convert_units", "arguments": {"value": 12, "from_unit": "km", "to_unit": "mi"}}}

How it is made:
- The tool lists come from the servers themselves: each server of mcp_tools.servers.SERVERS is built
  in process (files over a temporary folder, notes over a temporary SQLite file, papers over a
  corpus of the first 40 papers of the suite's shipped arXiv sample, bm25 only) and asked for its
  tools over an in-memory MCP session. No schema is written by hand here. A server added to the
  registry later gets a warning until it has templates (and options in server_argv).
- Requests come from templates with literal values (quoted paths, expressions, note titles; unit
  symbols as the calc server spells them; IANA zone names), so a careful model can produce the
  expected call exactly. Optional arguments appear in the expected call only when the request asks
  for them in words. Values and wordings are drawn with a fixed seed per tool: the same command
  writes the same file, byte for byte.
- Every expected call was verified: the builder executes it (call_tool) against the real server,
  over a fresh copy of a fixed fixture (a small folder tree, a notebook of eight notes, the clock in
  UTC, the paper corpus), after the sample's earlier steps. A call the server refuses stops the
  build, and so does an expected value found neither in the request nor in an earlier result. The
  earlier steps of multi-step samples run the same way: their results in the messages are the
  servers' real outputs, as the MCP client shows them to the model (the structured JSON result).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "data" / "mcp_eval.jsonl"
STAMP = "2025-05-20T08:00:00+00:00"  # created_at / updated_at of every fixture note, so results are stable

SYSTEM_PROMPTS = (
    None,
    ("You are a helpful assistant with access to tools. When a request needs a tool, call it with the "
     "arguments exactly as the user gives them."),
    None,
    ("You can act on the user's behalf through the tools listed below. Prefer calling a tool over "
     "guessing; use the values the user wrote, unchanged."),
)

# ----------------------------------------------------------------------------------------- fixtures

FIXTURE_FILES: dict[str, str] = {
    "README.md": "# Falcon\nA small inventory service.\n\nSee docs/design.md for the architecture.\n",
    "notes/todo.txt": "buy printer paper\nTODO: renew the TLS certificate\ncall the landlord\n"
                      "TODO: back up the laptop\nwater the plants\n",
    "notes/ideas.md": "# Ideas\n- a CLI for the inventory API\n- weekly usage report by email\n",
    "docs/design.md": "# Design\n\nThe service has three parts:\n1. the HTTP API\n2. the worker queue\n"
                      "3. the Postgres database\n\nFIXME: describe the retry policy\n",
    "docs/meeting-2025-05-12.md": "# Meeting 2025-05-12\nAttendees: Ana, Bo, Chen\n"
                                  "Decision: ship v2 on June 3\nAction: Bo writes the migration script\n",
    "docs/api/endpoints.md": "# Endpoints\nGET /items\nPOST /items\nDELETE /items/{id}\n",
    "src/app.py": "from src.utils import slugify\n\n\ndef main():\n    # TODO: read the port from the config\n"
                  "    print(slugify('Hello World'))\n\n\nif __name__ == '__main__':\n    main()\n",
    "src/utils.py": "import re\n\n\ndef slugify(text):\n    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')\n",
    "src/tests/test_app.py": "from src.utils import slugify\n\n\ndef test_slugify():\n"
                             "    assert slugify('Hello World') == 'hello-world'\n",
    "data/sales_2024.csv": "month,units,revenue\n2024-01,120,3600\n2024-02,95,2850\n2024-03,143,4290\n",
    "data/users.json": '{"users": [{"name": "ana", "role": "admin"}, {"name": "bo", "role": "viewer"}]}\n',
    "logs/server.log": "2025-05-19 10:02:11 INFO started on port 8080\n2025-05-19 10:05:42 WARNING slow query (2.3 s)\n"
                       "2025-05-19 10:07:03 ERROR connection refused: db:5432\n2025-05-19 10:07:08 INFO retrying\n",
}

FIXTURE_NOTES: list[tuple[str, str, list[str]]] = [  # ids 1..8 in this order
    ("Dentist appointment", "Dr. Lee on 2025-06-12 at 10:00; bring the insurance card.", ["health"]),
    ("Project Falcon kickoff", "Agenda: scope, milestones, owners. Next sync on Thursday.", ["work"]),
    ("Grocery list", "eggs, spinach, oat milk, coffee beans", ["home", "shopping"]),
    ("Book recommendations", "The Left Hand of Darkness; Piranesi; The Overstory", ["reading"]),
    ("Quarterly budget review", "Cut cloud spend by 10 percent and review the vendor contracts.", ["work", "finance"]),
    ("Bike maintenance", "Replace the chain, check the brake pads, pump the tires to 80 psi.", ["home"]),
    ("Conference talk ideas", "Sparse attention on CPUs; local tool calling with MCP.", ["work", "ideas"]),
    ("Passport renewal", "Renew before the August trip; photos at the pharmacy.", ["travel"]),
]


PAPERS_IN_CORPUS = 40  # the first papers of the suite's shipped arXiv sample, indexed without vectors (bm25)


def server_argv(name: str, workdir: Path) -> list[str]:
    """Command-line options for a registry server whose state lives under workdir (fixture copies)."""
    if name == "files":
        return ["--root", str(workdir / "root")]
    if name == "notes":
        return ["--db", str(workdir / "notes.sqlite")]
    if name == "clock":
        return ["--timezone", "UTC"]  # 'local' means UTC, whatever machine builds the set
    if name == "papers":
        return ["--corpus", str(workdir / "corpus")]
    return []


def make_fixture(workdir: Path) -> None:
    """The fixture state every sample starts from: the folder tree and the notebook."""
    from mcp_tools.servers import notes

    root = workdir / "root"
    for rel, text in FIXTURE_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    db = workdir / "notes.sqlite"
    notes.open_notebook(db)
    with sqlite3.connect(db) as conn:  # the notes table's triggers keep the full-text index in step
        for title, body, tags in FIXTURE_NOTES:
            conn.execute("INSERT INTO notes(title, body, tags, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                         (title, body, json.dumps(tags), STAMP, STAMP))
    conn.close()
    make_corpus(workdir / "corpus")


def corpus_papers() -> list[dict[str, Any]]:
    """The papers of the fixture corpus: the first PAPERS_IN_CORPUS records of the shipped sample."""
    import gzip

    from survey.corpus import shipped_sample

    with gzip.open(shipped_sample(), "rt", encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(PAPERS_IN_CORPUS), handle)]


def make_corpus(folder: Path) -> None:
    from survey.corpus import Corpus

    source = folder.parent / "papers.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in corpus_papers()), encoding="utf-8")
    with Corpus.open(folder, create=True) as corpus:
        corpus.ingest([source], embed=False)


def build_server(name: str, workdir: Path):
    """The registry's server `name` (FastMCP) over the state in workdir."""
    from mcp_tools.servers import SERVERS

    spec = SERVERS[name]
    parser = argparse.ArgumentParser(prog=f"minicpm mcp serve {name}")
    spec.add_arguments(parser)
    return spec.build(parser.parse_args(server_argv(name, workdir)))


# ----------------------------------------------------------------------------------------- talking to a server


def openai_tool(tool) -> dict[str, Any]:
    """An MCP tool (mcp.types.Tool) in the OpenAI function shape, as an MCP client offers it to a model."""
    return {"type": "function", "function": {"name": tool.name, "description": tool.description or "",
                                             "parameters": dict(tool.inputSchema or {"type": "object"})}}


def result_text(result) -> str:
    """What the model reads of a CallToolResult: the structured JSON result (compact), else the text."""
    if result.structuredContent is not None:
        return json.dumps(result.structuredContent, ensure_ascii=False)
    return "\n".join(block.text for block in result.content if getattr(block, "type", None) == "text")


async def list_tools(name: str, workdir: Path) -> list[dict[str, Any]]:
    from mcp.shared.memory import create_connected_server_and_client_session

    async with create_connected_server_and_client_session(build_server(name, workdir)) as session:
        return [openai_tool(t) for t in (await session.list_tools()).tools]


async def execute(name: str, workdir: Path, calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Run calls in order on one session of server `name`; their results as the model reads them.
    Raises RuntimeError naming the call when the server refuses one."""
    from mcp.shared.memory import create_connected_server_and_client_session

    out = []
    async with create_connected_server_and_client_session(build_server(name, workdir)) as session:
        for tool, arguments in calls:
            result = await session.call_tool(tool, arguments)
            if result.isError:
                raise RuntimeError(f"{name}.{tool}({json.dumps(arguments)}) failed: {result_text(result)}")
            out.append(result_text(result))
    return out


async def execute_case(server: str, fixture: Path, case: Case) -> list[str]:
    """Run a case's earlier calls and its expected call over a fresh copy of the fixture."""
    work = fixture.parent / "work"
    shutil.copytree(fixture, work)
    try:
        return await execute(server, work, [*case.history, (case.tool, case.arguments)])
    finally:
        shutil.rmtree(work)


# ----------------------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Case:
    tool: str  # the expected call's tool
    query: str
    arguments: dict[str, Any]
    history: tuple[tuple[str, dict[str, Any]], ...] = ()  # earlier calls, executed for their real results


def fill(templates: list[tuple[str, Any]], values: list[dict[str, Any]], tool: str) -> list[Case]:
    """One case per values entry, cycling through the templates: (wording, arguments-from-values)."""
    cases = []
    for i, v in enumerate(values):
        text, arguments = templates[i % len(templates)]
        cases.append(Case(tool, text.format(**v), arguments(v)))
    return cases


def pick(rng: random.Random, pool: list, n: int) -> list:
    """n items of pool in a seeded order, without repeats while the pool lasts."""
    order = list(pool)
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(n)]


def files_cases() -> list[Case]:
    cases: list[Case] = []
    rng = random.Random("files:read_file")
    readable = ["README.md", "notes/todo.txt", "docs/design.md", "src/app.py", "data/sales_2024.csv",
                "logs/server.log", "src/utils.py", "docs/api/endpoints.md", "data/users.json", "notes/ideas.md"]
    ranges = [(2, 4), (1, 3), (3, 5), (2, 3)]
    values = [{"path": p, "a": a, "b": b} for p, (a, b) in zip(pick(rng, readable, 10), pick(rng, ranges, 10))]
    cases += fill([
        ("Show me the contents of '{path}'.", lambda v: {"path": v["path"]}),
        ("Open the file '{path}' and tell me what it says.", lambda v: {"path": v["path"]}),
        ("Read lines {a} to {b} of '{path}'.", lambda v: {"path": v["path"], "start_line": v["a"], "end_line": v["b"]}),
        ("What's in the file {path}?", lambda v: {"path": v["path"]}),
        ("Print '{path}' starting at line {a}.", lambda v: {"path": v["path"], "start_line": v["a"]}),
    ], values, "read_file")

    rng = random.Random("files:list_dir")
    folders = ["docs", "src", "notes", "data", "logs", "src/tests", "docs/api"]
    cases += fill([
        ("List the files in the '{dir}' folder.", lambda v: {"path": v["dir"]}),
        ("What's inside '{dir}', including everything in its sub-folders?", lambda v: {"path": v["dir"], "recursive": True}),
        ("Show me what the directory '{dir}' contains.", lambda v: {"path": v["dir"]}),
        ("List '{dir}' recursively.", lambda v: {"path": v["dir"], "recursive": True}),
    ], [{"dir": d} for d in pick(rng, folders, 8)], "list_dir")

    rng = random.Random("files:find_files")
    patterns = [("*.py", "src"), ("*.md", "docs"), ("*.csv", "data"), ("*.txt", "notes"), ("test_*.py", "src"),
                ("*.json", "data"), ("*.log", "logs"), ("*.md", "notes")]
    cases += fill([
        ("Find all files matching '{pattern}'.", lambda v: {"pattern": v["pattern"]}),
        ("Which files in the '{dir}' folder match '{pattern}'?", lambda v: {"pattern": v["pattern"], "path": v["dir"]}),
        ("Locate every '{pattern}' file in the project.", lambda v: {"pattern": v["pattern"]}),
        ("Look for '{pattern}' files under '{dir}'.", lambda v: {"pattern": v["pattern"], "path": v["dir"]}),
    ], [{"pattern": p, "dir": d} for p, d in pick(rng, patterns, 8)], "find_files")

    rng = random.Random("files:search_text")
    words = [("TODO", "src", "*.py"), ("slugify", "src", "*.py"), ("retry", "docs", "*.md"), ("ERROR", "logs", "*.log"),
             ("Postgres", "docs", "*.md"), ("landlord", "notes", "*.txt"), ("port", "src", "*.py"),
             ("migration", "docs", "*.md"), ("admin", "data", "*.json")]
    cases += fill([
        ("Search all the files for the text '{q}'.", lambda v: {"query": v["q"]}),
        ("Which files in '{dir}' mention '{q}'?", lambda v: {"query": v["q"], "path": v["dir"]}),
        ("Find the lines containing '{q}' in the '{glob}' files.", lambda v: {"query": v["q"], "glob": v["glob"]}),
        ("Search for '{q}' case-sensitively.", lambda v: {"query": v["q"], "case_sensitive": True}),
        ("Grep the project for '{q}'.", lambda v: {"query": v["q"]}),
    ], [{"q": q, "dir": d, "glob": g} for q, d, g in pick(rng, words, 8)], "search_text")
    cases.append(Case("search_text", "Search the files with the regular expression 'TODO: \\w+'.",
                      {"query": "TODO: \\w+", "regex": True}))

    writes = [("notes/shopping.txt", "milk, bread, apples"), ("drafts/reply.md", "Thanks, see you on Monday."),
              ("notes/todo.txt", "buy stamps"), ("data/limits.csv", "cpu=4, memory=8G"),
              ("src/version.py", "VERSION = '2.0.1'"), ("docs/changelog.md", "v2: new migration script"),
              ("README.md", "Falcon, the inventory service (v2)."), ("notes/phone.txt", "Call Ana at 5 pm")]
    cases += fill([
        ("Create a file '{path}' containing: {content}", lambda v: {"path": v["path"], "content": v["content"]}),
        ("Write the text '{content}' to a new file called '{path}'.", lambda v: {"path": v["path"], "content": v["content"]}),
        ("Replace the contents of '{path}' with '{content}' (overwrite it).",
         lambda v: {"path": v["path"], "content": v["content"], "overwrite": True}),
        ("Save '{content}' as '{path}'.", lambda v: {"path": v["path"], "content": v["content"]}),
    ], [{"path": p, "content": c} for p, c in writes], "write_file")  # in order: entries 2 and 6 overwrite

    rng = random.Random("files:make_dir")
    new_dirs = ["archive", "docs/drafts", "backups/2025", "reports", "src/plugins", "tmp/cache", "data/raw", "exports"]
    cases += fill([
        ("Create a folder called '{dir}'.", lambda v: {"path": v["dir"]}),
        ("Make a new directory '{dir}'.", lambda v: {"path": v["dir"]}),
        ("I need an empty folder at '{dir}', please create it.", lambda v: {"path": v["dir"]}),
        ("mkdir '{dir}'", lambda v: {"path": v["dir"]}),
    ], [{"dir": d} for d in pick(rng, new_dirs, 8)], "make_dir")

    # multi-step: an earlier call's real result tells where the next call goes
    cases += [
        Case("read_file", "Look in the 'docs' folder and read the notes of the meeting.",
             {"path": "docs/meeting-2025-05-12.md"}, (("list_dir", {"path": "docs"}),)),
        Case("read_file", "Find the CSV file under 'data' and show me its contents.",
             {"path": "data/sales_2024.csv"}, (("find_files", {"pattern": "*.csv", "path": "data"}),)),
        Case("read_file", "Which file has a FIXME in it? Open that file.",
             {"path": "docs/design.md"}, (("search_text", {"query": "FIXME"}),)),
        Case("read_file", "List the 'src/tests' folder, then read the test file in it.",
             {"path": "src/tests/test_app.py"}, (("list_dir", {"path": "src/tests"}),)),
        Case("read_file", "Find the log file (pattern '*.log') and read it.",
             {"path": "logs/server.log"}, (("find_files", {"pattern": "*.log"}),)),
        Case("search_text", "List the 'src' folder, then search its '*.py' files for 'TODO'.",
             {"query": "TODO", "path": "src", "glob": "*.py"}, (("list_dir", {"path": "src"}),)),
        Case("write_file", "Read 'notes/ideas.md', then save its first idea as a new file 'notes/next.txt' "
                           "(the text exactly as written after the dash).",
             {"path": "notes/next.txt", "content": "a CLI for the inventory API"}, (("read_file", {"path": "notes/ideas.md"}),)),
        Case("make_dir", "Check whether there is a 'backups' folder at the top level; if not, create it.",
             {"path": "backups"}, (("list_dir", {"path": "."}),)),
    ]
    return cases


def calc_cases() -> list[Case]:
    cases: list[Case] = []
    rng = random.Random("calc:calculate")
    expressions = ["17*23", "(2+3)**2 / 7", "sqrt(2)*pi", "2**100", "log(8, 2)", "1234*5678", "355/113",
                   "factorial(12)", "(45+55)*3", "10 // 3", "7 % 3", "round(22/7, 3)"]
    cases += fill([
        ("Evaluate the expression '{e}' exactly.", lambda v: {"expression": v["e"]}),
        ("What is {e}? Use the calculator.", lambda v: {"expression": v["e"]}),
        ("Compute '{e}' for me.", lambda v: {"expression": v["e"]}),
        ("Please calculate: {e}", lambda v: {"expression": v["e"]}),
    ], [{"e": e} for e in pick(rng, expressions, 10)], "calculate")

    rng = random.Random("calc:convert_units")
    conversions = [(12, "km", "mi"), (70, "kg", "lb"), (100, "F", "C"), (5, "gal", "L"), (250, "mL", "cup"),
                   (60, "mph", "km/h"), (3.5, "GiB", "MB"), (1500, "ft2", "m2"), (37, "C", "F"), (8, "oz", "g"),
                   (2, "h", "min"), (42, "nmi", "km")]
    cases += fill([
        ("Convert {v} {f} to {t}.", lambda v: {"value": v["v"], "from_unit": v["f"], "to_unit": v["t"]}),
        ("How many {t} is {v} {f}?", lambda v: {"value": v["v"], "from_unit": v["f"], "to_unit": v["t"]}),
        ("What is {v} {f} in {t}?", lambda v: {"value": v["v"], "from_unit": v["f"], "to_unit": v["t"]}),
        ("Express {v} {f} in {t}, please.", lambda v: {"value": v["v"], "from_unit": v["f"], "to_unit": v["t"]}),
    ], [{"v": v, "f": f, "t": t} for v, f, t in pick(rng, conversions, 10)], "convert_units")

    wordings = ["Which units can you convert between?", "List the units the unit converter knows.",
                "What units does convert_units support?", "Show me all the supported units, grouped by quantity.",
                "Before I convert anything: which unit symbols are available?", "Give me the list of known units.",
                "Can you list every unit you can convert?", "What measurement units are supported?"]
    cases += [Case("list_units", w, {}) for w in wordings]

    cases += [  # multi-step: the product from calculate feeds convert_units
        Case("convert_units", "I ran 12 laps of 400 m. Compute '12*400' and then convert that distance from m to mi.",
             {"value": 4800, "from_unit": "m", "to_unit": "mi"}, (("calculate", {"expression": "12*400"}),)),
        Case("convert_units", "Three bags of 2.5 kg: calculate '3*2.5', then convert the total from kg to lb.",
             {"value": 7.5, "from_unit": "kg", "to_unit": "lb"}, (("calculate", {"expression": "3*2.5"}),)),
        Case("convert_units", "A room is 5 m by 4 m. Work out '5*4' and convert the area from m2 to ft2.",
             {"value": 20, "from_unit": "m2", "to_unit": "ft2"}, (("calculate", {"expression": "5*4"}),)),
        Case("convert_units", "Compute '(68-32)*5/9', then convert the result from C to K.",
             {"value": 20, "from_unit": "C", "to_unit": "K"}, (("calculate", {"expression": "(68-32)*5/9"}),)),
    ]
    return cases


def clock_cases() -> list[Case]:
    cases: list[Case] = []
    rng = random.Random("clock:current_time")
    zones = ["Asia/Tokyo", "Europe/Paris", "America/New_York", "UTC", "Australia/Sydney", "America/Sao_Paulo",
             "Asia/Kolkata", "Africa/Nairobi", "+05:30"]
    cases += fill([
        ("What time is it right now in {z}?", lambda v: {"timezone": v["z"]}),
        ("Give me the current date and time in the {z} time zone.", lambda v: {"timezone": v["z"]}),
        ("Current time for '{z}', please.", lambda v: {"timezone": v["z"]}),
    ], [{"z": z} for z in pick(rng, zones, 9)], "current_time")

    rng = random.Random("clock:convert_time")
    moments = [("2025-06-01T14:30", "Europe/Paris", "America/New_York"), ("2025-03-30T01:30", "UTC", "Europe/London"),
               ("2025-12-24T18:00", "America/Los_Angeles", "Asia/Tokyo"), ("2025-07-04T09:15", "America/Chicago", "UTC"),
               ("2025-11-02T08:00", "Asia/Kolkata", "Australia/Sydney"), ("2025-01-15T23:45", "Europe/Berlin", "Asia/Singapore")]
    with_offset = [("2025-06-01T14:30:00+02:00", "UTC"), ("2025-09-10T07:00:00-04:00", "Europe/Madrid"),
                   ("2025-02-28T22:00:00Z", "Asia/Shanghai")]
    values = [{"t": t, "fz": fz, "tz": tz} for t, fz, tz in pick(rng, moments, 6)]
    cases += fill([
        ("Convert {t} from {fz} time to {tz}.", lambda v: {"time": v["t"], "from_timezone": v["fz"], "to_timezone": v["tz"]}),
        ("It's {t} in {fz}. What time is that in {tz}?", lambda v: {"time": v["t"], "from_timezone": v["fz"], "to_timezone": v["tz"]}),
    ], values, "convert_time")
    cases += fill([
        ("What is {t} in {tz}?", lambda v: {"time": v["t"], "to_timezone": v["tz"]}),
        ("Convert the time {t} to the {tz} time zone.", lambda v: {"time": v["t"], "to_timezone": v["tz"]}),
    ], [{"t": t, "tz": tz} for t, tz in with_offset], "convert_time")

    rng = random.Random("clock:shift_time")
    shifts = [("2025-03-10", 45, "days"), ("2025-12-24", -3, "weeks"), ("2025-01-31", 1, "months"), ("2024-02-29", 1, "years"),
              ("2025-06-01T09:00", 36, "hours"), ("2025-05-20", 100, "days"), ("2025-08-15T22:30", 90, "minutes"),
              ("2025-10-01", -2, "months"), ("2025-04-01", 6, "weeks")]
    templates = {
        (True, "days"): "What date is {n} days after {t}?", (False, "weeks"): "What was the date {n} weeks before {t}?",
        (True, "months"): "Add {n} month to {t}.", (True, "years"): "What's the date {n} year after {t}?",
        (True, "hours"): "What time is it {n} hours after {t}?", (True, "minutes"): "Shift {t} forward by {n} minutes.",
        (False, "months"): "Go back {n} months from {t}.", (True, "weeks"): "Which date is {n} weeks after {t}?",
    }
    for t, n, unit in pick(rng, shifts, 9):
        text = templates[(n > 0, unit)].format(n=abs(n), t=t)
        cases.append(Case("shift_time", text, {"time": t, "amount": n, "unit": unit}))

    rng = random.Random("clock:time_between")
    spans = [("2025-01-01", "2025-12-25"), ("2024-02-10", "2025-06-01"), ("2025-06-01T09:00", "2025-06-03T17:30"),
             ("1969-07-20", "2025-07-20"), ("2025-03-01", "2025-03-31"), ("2023-11-05", "2025-01-01"),
             ("2025-05-20T08:15", "2025-05-20T19:40"), ("2000-01-01", "2025-01-01"), ("2025-09-01", "2026-01-01")]
    cases += fill([
        ("How long is it from {a} to {b}?", lambda v: {"start": v["a"], "end": v["b"]}),
        ("How much time passes between {a} and {b}?", lambda v: {"start": v["a"], "end": v["b"]}),
        ("Count the time from {a} until {b}.", lambda v: {"start": v["a"], "end": v["b"]}),
    ], [{"a": a, "b": b} for a, b in pick(rng, spans, 9)], "time_between")

    rng = random.Random("clock:day_of_week")
    dates = ["2025-12-25", "2026-01-01", "2025-07-04", "1969-07-20", "2025-02-14", "2024-02-29", "2025-10-31",
             "2030-06-15", "2025-05-20"]
    cases += fill([
        ("What day of the week is {d}?", lambda v: {"date": v["d"]}),
        ("Which weekday was {d}?", lambda v: {"date": v["d"]}),
        ("Is {d} on a weekend?", lambda v: {"date": v["d"]}),
    ], [{"d": d} for d in pick(rng, dates, 9)], "day_of_week")

    cases += [  # multi-step: the date shift_time found goes to day_of_week
        Case("day_of_week", "What weekday is 100 days after 2025-01-01?", {"date": "2025-04-11"},
             (("shift_time", {"time": "2025-01-01", "amount": 100, "unit": "days"}),)),
        Case("day_of_week", "My visa ends 90 days after 2025-06-10. Which day of the week is that?", {"date": "2025-09-08"},
             (("shift_time", {"time": "2025-06-10", "amount": 90, "unit": "days"}),)),
        Case("day_of_week", "Six weeks before 2025-12-24, what weekday was it?", {"date": "2025-11-12"},
             (("shift_time", {"time": "2025-12-24", "amount": -6, "unit": "weeks"}),)),
        Case("day_of_week", "Find the date 2 months after 2025-01-31 and tell me its weekday.", {"date": "2025-03-31"},
             (("shift_time", {"time": "2025-01-31", "amount": 2, "unit": "months"}),)),
    ]
    return cases


def notes_cases() -> list[Case]:
    cases: list[Case] = []
    rng = random.Random("notes:add_note")
    new = [("Call the plumber", "Ask about the kitchen sink leak.", "home"),
           ("Flight to Lisbon", "TP 1353 departs 07:40 on 2025-07-02.", "travel"),
           ("Gift ideas for Ana", "a fountain pen, a board game", "personal"),
           ("Retro action items", "Shorter standups; write the runbook.", "work"),
           ("Running plan", "5 km on Monday, intervals on Wednesday, 10 km on Saturday.", "health"),
           ("Wi-Fi password", "Guest network: falcon-guest", "home"),
           ("Podcast to try", "Episode 42 on sparse attention.", "listening"),
           ("Car service", "Oil change due at 60000 km.", "car"),
           ("Recipe: lentil soup", "lentils, carrots, cumin, lemon", "cooking")]
    cases += fill([
        ("Add a note titled '{t}' with the text '{b}'", lambda v: {"title": v["t"], "body": v["b"]}),
        ("Save a note called '{t}'.", lambda v: {"title": v["t"]}),
        ("Make a note '{t}' saying '{b}', tagged '{tag}'.", lambda v: {"title": v["t"], "body": v["b"], "tags": [v["tag"]]}),
        ("Create a note with the title '{t}' and the tag '{tag}'.", lambda v: {"title": v["t"], "tags": [v["tag"]]}),
    ], [{"t": t, "b": b, "tag": tag} for t, b, tag in pick(rng, new, 9)], "add_note")

    rng = random.Random("notes:search_notes")
    searches = [("dentist", "health", 3), ("budget", "work", 5), ("coffee", "shopping", 2), ("chain", "home", 1),
                ("Piranesi", "reading", 3), ("passport", "travel", 2), ("sparse attention", "ideas", 5),
                ("Thursday", "work", 4), ("insurance card", "health", 1)]
    cases += fill([
        ("Search my notes for '{q}'.", lambda v: {"query": v["q"]}),
        ("Find notes about '{q}' that are tagged '{tag}'.", lambda v: {"query": v["q"], "tag": v["tag"]}),
        ("Show at most {n} notes matching '{q}'.", lambda v: {"query": v["q"], "limit": v["n"]}),
        ("Do I have any notes that mention '{q}'?", lambda v: {"query": v["q"]}),
    ], [{"q": q, "tag": tag, "n": n} for q, tag, n in pick(rng, searches, 9)], "search_notes")

    rng = random.Random("notes:list_notes")
    lists = [("work", 3), ("home", 5), ("health", 2), ("travel", 10), ("ideas", 4), ("reading", 1), ("finance", 2),
             ("shopping", 6)]
    cases += fill([
        ("List my notes tagged '{tag}'.", lambda v: {"tag": v["tag"]}),
        ("Show my {n} most recent notes.", lambda v: {"limit": v["n"]}),
        ("List the latest {n} notes with the tag '{tag}'.", lambda v: {"limit": v["n"], "tag": v["tag"]}),
        ("Which notes carry the tag '{tag}'?", lambda v: {"tag": v["tag"]}),
    ], [{"tag": tag, "n": n} for tag, n in pick(rng, lists, 8)], "list_notes")

    rng = random.Random("notes:get_note")
    cases += fill([
        ("Show me note {id} in full.", lambda v: {"id": v["id"]}),
        ("Open note number {id}.", lambda v: {"id": v["id"]}),
        ("What does note #{id} say?", lambda v: {"id": v["id"]}),
        ("Read the note with id {id}.", lambda v: {"id": v["id"]}),
    ], [{"id": i} for i in pick(rng, list(range(1, 9)), 8)], "get_note")

    rng = random.Random("notes:delete_note")
    cases += fill([
        ("Delete note {id}.", lambda v: {"id": v["id"]}),
        ("Remove the note with id {id} from my notebook.", lambda v: {"id": v["id"]}),
        ("I don't need note #{id} anymore; delete it.", lambda v: {"id": v["id"]}),
        ("Please erase note {id}.", lambda v: {"id": v["id"]}),
    ], [{"id": i} for i in pick(rng, list(range(1, 9)), 8)], "delete_note")

    cases += [  # multi-step: ids come from an earlier search or listing
        Case("get_note", "Find my dentist note and show it to me in full.", {"id": 1},
             (("search_notes", {"query": "dentist"}),)),
        Case("get_note", "Search my notes for 'Piranesi' and open the note that mentions it.", {"id": 4},
             (("search_notes", {"query": "Piranesi"}),)),
        Case("get_note", "Open the full text of my budget review note.", {"id": 5},
             (("search_notes", {"query": "budget review"}),)),
        Case("delete_note", "List my notes tagged 'shopping' and delete the grocery list.", {"id": 3},
             (("list_notes", {"tag": "shopping"}),)),
        Case("delete_note", "Find the note about the passport renewal and delete it.", {"id": 8},
             (("search_notes", {"query": "passport renewal"}),)),
        Case("get_note", "Which of my 'work' notes is about conference talks? Show it in full.", {"id": 7},
             (("list_notes", {"tag": "work"}),)),
        Case("add_note", "Look up my bike maintenance note, then add a new note titled 'Bike shop' "
                         "with the text 'Buy a new chain'.",
             {"title": "Bike shop", "body": "Buy a new chain"}, (("search_notes", {"query": "bike maintenance"}),)),
        Case("get_note", "List my 3 most recent 'work' notes and open the Falcon kickoff one.",
             {"id": 2}, (("list_notes", {"tag": "work", "limit": 3}),)),
    ]
    return cases


def papers_cases() -> list[Case]:
    cases: list[Case] = []
    rng = random.Random("papers:search_papers")
    topics = [("mixture of experts", 3), ("federated recommendation", 5), ("membership inference", 2),
              ("music generation", 4), ("GUI agents", 3), ("entity resolution", 2), ("behaviour cloning", 5),
              ("climate downscaling", 1), ("in-context learning", 10), ("backdoor attack", 3)]
    cases += fill([
        ("Search the paper corpus for '{q}'.", lambda v: {"query": v["q"]}),
        ("Find {k} papers about '{q}'.", lambda v: {"query": v["q"], "k": v["k"]}),
        ("Look up papers on '{q}' with a bm25 (exact word) search.", lambda v: {"query": v["q"], "mode": "bm25"}),
        ("What papers do we have on '{q}'?", lambda v: {"query": v["q"]}),
    ], [{"q": q, "k": k} for q, k in pick(rng, topics, 10)], "search_papers")

    rng = random.Random("papers:get_paper")
    ids = [p["id"] for p in corpus_papers()]
    cases += fill([
        ("Show me the full record of paper {id}.", lambda v: {"id": v["id"]}),
        ("Get the abstract of the arXiv paper '{id}'.", lambda v: {"id": v["id"]}),
        ("Who wrote paper {id}? Fetch its record.", lambda v: {"id": v["id"]}),
        ("Open the paper with id {id}.", lambda v: {"id": v["id"]}),
    ], [{"id": i} for i in pick(rng, ids, 10)], "get_paper")

    cases += [  # multi-step: the id comes from the search result
        Case("get_paper", "Find the MoE-Mamba paper and show me its full record.", {"id": "2401.04081"},
             (("search_papers", {"query": "MoE-Mamba"}),)),
        Case("get_paper", "Search for 'SeeClick' and open that paper's record.", {"id": "2401.10935"},
             (("search_papers", {"query": "SeeClick"}),)),
        Case("get_paper", "Find the survey on in-context learning with retrieved demonstrations and show its authors.",
             {"id": "2401.11624"}, (("search_papers", {"query": "in-context learning retrieved demonstrations"}),)),
        Case("get_paper", "Look for the paper on the risks of customized GPTs and open its full record.",
             {"id": "2401.09075"}, (("search_papers", {"query": "customized GPTs"}),)),
    ]
    return cases


TEMPLATES = {"files": files_cases, "calc": calc_cases, "clock": clock_cases, "notes": notes_cases,
             "papers": papers_cases}


# ----------------------------------------------------------------------------------------- building


def messages_for(case: Case, results: list[str], system: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": case.query})
    for i, ((tool, arguments), result) in enumerate(zip(case.history, results), start=1):
        call_id = f"call_{i}"
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": tool, "arguments": json.dumps(arguments, ensure_ascii=False)}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    return messages


async def build_samples(log=print) -> list[dict[str, Any]]:
    """Every sample, each expected call verified against its server (see the module docstring)."""
    from jsonschema import Draft202012Validator

    from mcp_tools.servers import SERVERS
    from runtime.errors import MiniCPMError

    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mcp_eval_") as tmp:
        base = Path(tmp) / "fixture"
        make_fixture(base)
        for server in SERVERS:
            try:
                tools = await list_tools(server, base)
            except MiniCPMError as exc:
                if server in TEMPLATES:
                    raise
                log(f"warning: server '{server}' cannot be built with the builder's options ({exc}); "
                    f"teach server_argv in {Path(__file__).name} its options. It gets no samples")
                continue
            if server not in TEMPLATES:
                log(f"warning: server '{server}' ({len(tools)} tools) has no templates in {Path(__file__).name}; "
                    "it gets no samples")
                continue
            by_name = {t["function"]["name"]: t for t in tools}
            cases = TEMPLATES[server]()
            missing = set(by_name) - {c.tool for c in cases}
            if missing:
                log(f"warning: server '{server}' has no samples for: {', '.join(sorted(missing))}")
            counts: Counter[str] = Counter()
            for case in cases:
                if case.tool not in by_name:
                    raise RuntimeError(f"a template expects {server}.{case.tool}, which the server does not offer")
                schema = by_name[case.tool]["function"]["parameters"]
                problems = [e.message for e in Draft202012Validator(schema).iter_errors(case.arguments)]
                if problems:
                    raise RuntimeError(f"{server}.{case.tool}({case.arguments}): {'; '.join(problems)}")
                results = await execute_case(server, base, case)
                unseen = [v for k, v in case.arguments.items() if not derivable(k, v, schema, case.query, results[:-1])]
                if unseen:
                    raise RuntimeError(f"{server}.{case.tool}: {unseen} appear neither in the request nor in the "
                                       "earlier results, so no model could write them")
                counts[case.tool, bool(case.history)] += 1
                kind = "multi" if case.history else ""
                sample_id = f"{server}-{case.tool}-{kind}{counts[case.tool, bool(case.history)]:02d}"
                system = SYSTEM_PROMPTS[len(samples) % len(SYSTEM_PROMPTS)]
                samples.append({"id": sample_id, "server": server, "tools": tools,
                                "messages": messages_for(case, results[:-1], system),
                                "expected": {"name": case.tool, "arguments": case.arguments}})
    return samples


def derivable(name: str, value: Any, schema: dict[str, Any], query: str, earlier: list[str]) -> bool:
    """Whether a model could write value for the argument `name`: it is written in the request or an
    earlier result (a number up to its sign: "3 weeks before" is -3), or it is one of the argument's
    enum values (the request says "1 year", the enum has "years"). Lists and booleans are not checked."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return True
    if value in schema.get("properties", {}).get(name, {}).get("enum", []):
        return True
    text = str(abs(value)) if isinstance(value, int | float) else value
    return text in query or any(text in result for result in earlier)


def composition(samples: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """{server: {tool: samples}}, plus the multi-step count under "multi_step"."""
    table: dict[str, dict[str, int]] = {}
    for s in samples:
        tools = table.setdefault(s["server"], {})
        tools[s["expected"]["name"]] = tools.get(s["expected"]["name"], 0) + 1
    table["multi_step"] = {"samples": sum(any(m["role"] == "tool" for m in s["messages"]) for s in samples)}
    return table


def render(samples: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(s, ensure_ascii=False, separators=(",", ":")) + "\n" for s in samples)


def main(argv: list[str] | None = None) -> int:
    import anyio

    from runtime.atomic import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the set (default {OUT.name} in benchmarks/data)")
    parser.add_argument("--check", action="store_true", help="build, and fail if --out differs instead of writing it")
    args = parser.parse_args(argv)

    samples = anyio.run(build_samples, lambda m: print(m, file=sys.stderr))
    text = render(samples)
    for server, tools in composition(samples).items():
        print(f"{server}: " + ", ".join(f"{t} {n}" for t, n in tools.items()))
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh build'} ({len(samples)} samples)")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}: {len(samples)} samples, {len(text.encode()) // 1024} KiB, every expected call verified")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
