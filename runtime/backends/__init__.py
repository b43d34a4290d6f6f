"""Backends behind the one generation interface (runtime/events.py): torch and llama.cpp (gguf)."""
