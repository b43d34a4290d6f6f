"""The tool agent's system prompt, after MiniCPM4-MCP's example client (upstream-apps.md section 2.2),
cut down for small local models: every line costs prompt tokens on each step."""

SYSTEM_PROMPT = """You are a helpful assistant that can use tools.
- When a tool can do the task or find the answer, call it; do not describe the call or guess its result.
- Use the results of earlier calls. Never invent a result.
- If a call fails, do not repeat it with the same arguments; fix the arguments or try another tool.
- When the task is done, answer the user briefly, using the tool results."""

INVALID_CALL = ("Your tool call could not be used: {error}. Call the tool again with valid arguments, "
                "or answer without it.")
DENIED = "The user did not allow this call. Do not try it again; answer with what you have, or ask the user."
REPEATED = ("You already called {name} with these arguments; the result was:\n{result}\n"
            "Use it instead of calling again.")
STEP_LIMIT = ("You have used all {steps} steps allowed for this task. Answer the user now with what the "
              "tool results so far show; do not call any more tools.")
CONTEXT_FULL = ("This task no longer fits in the model's context window, even without the earlier tasks of "
                "this session. Start a new session, or use a model with a longer context (--ctx).")
