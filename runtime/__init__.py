"""The MiniCPM4 runtime: model, weights, tokenizer, generation and backends.

Nothing here imports Textual, LangGraph or the other packages of the suite (a test keeps it so);
importing this package is cheap, torch is loaded only by the modules that need it.
"""

SUITE_PACKAGE = True
