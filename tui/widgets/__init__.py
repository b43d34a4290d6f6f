"""Widgets of the chat app (tui/app.py)."""
