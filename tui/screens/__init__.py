"""Screens of the chat app (tui/app.py)."""
