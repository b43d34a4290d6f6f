"""Dependencies point one way, heavy libraries load only where needed, and our generic package
names fail clearly when another distribution owns them."""

import os
import subprocess
import sys
import textwrap


def python(code: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=120)


def test_the_runtime_never_imports_ui_or_agent_code():
    result = python("""
        import sys
        import runtime.generate, runtime.convert, runtime.backends.torch_backend, runtime.backends.gguf_backend
        leaked = sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'langgraph', 'agents', 'tui', 'survey', 'mcp_tools'})
        assert not leaked, leaked
    """)
    assert result.returncode == 0, result.stderr


def test_the_llama_cpp_path_runs_without_torch():
    result = python("""
        import sys
        from runtime.backends.base import load_backend
        from runtime.events import SamplingParams
        backend = load_backend("gguf", "default", context_length=512)
        events = list(backend.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=3, temperature=0)))
        assert events[-1].completion_tokens == 3
        assert "torch" not in sys.modules, "the gguf backend pulled in torch"
    """)
    assert result.returncode == 0, result.stderr


def test_a_foreign_package_with_one_of_our_names_fails_clearly(tmp_path):
    foreign = tmp_path / "agents"
    foreign.mkdir()
    (foreign / "__init__.py").write_text("VERSION = 'someone else'\n")
    env = {"PYTHONPATH": str(tmp_path)}
    # Run from elsewhere: in the repository root `python -c` would find our own agents/ first.
    result = python("import tui", env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert "another installed distribution owns the name 'agents'" in result.stderr
    cli = subprocess.run([sys.executable, "-m", "minicpm_suite", "--help"], capture_output=True, text=True,
                         env={**os.environ, **env}, cwd=tmp_path)
    assert cli.returncode == 2
    assert cli.stderr.startswith("minicpm: error: 'import agents' found") and "Traceback" not in cli.stderr


def test_mcp_tools_and_survey_never_import_the_ui_or_the_agents():
    result = python("""
        import sys
        import mcp_tools.config, mcp_tools.sessions, mcp_tools.servers.files, mcp_tools.servers.calc
        import mcp_tools.servers.clock, mcp_tools.servers.notes, mcp_tools.servers.papers
        import survey.corpus, survey.corpus.search, survey.corpus.ingest
        leaked = sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'tui', 'agents', 'langgraph'})
        assert not leaked, leaked
    """)
    assert result.returncode == 0, result.stderr


def test_the_agents_never_import_the_ui():
    result = python("""
        import sys
        import agents.chat_model, agents.tool_agent, agents.tool_agent.events
        leaked = sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'tui'})
        assert not leaked, leaked
    """)
    assert result.returncode == 0, result.stderr
