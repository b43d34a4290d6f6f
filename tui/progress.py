"""Progress display for long work in the command line (rich, on stderr, only on a terminal)."""

from __future__ import annotations

import sys


class PrefillProgress:
    """A bar for prompt processing that appears only while a long prompt is still being read.

    Short prompts finish in one step and never show it; pipes and --json never show it.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()
        self.progress = None
        self.task = None

    def __enter__(self) -> PrefillProgress:
        return self

    def update(self, processed: int, total: int) -> None:
        if not self.enabled or processed >= total:
            return
        if self.progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("reading prompt"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("prefill", total=total)
        self.progress.update(self.task, completed=processed)

    def done(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __exit__(self, *exc) -> None:
        self.done()
