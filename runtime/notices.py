"""Notices from deep inside the runtime, said once: a requested fast path that cannot run, and
what runs instead. The runtime never prints; it logs to the "minicpm" logger, which the command
line shows on stderr as `minicpm: note: ...` and a library user sees through logging.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("minicpm")
_said: set[str] = set()


def notify_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        logger.warning(message)
