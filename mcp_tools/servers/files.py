"""The `files` MCP server: read, list, search and (unless --read-only) write files under one root folder.

Every path a tool takes is relative to the root. A path is refused when it is absolute, when `..`
leaves the root, or when a symbolic link anywhere along it (the file itself or a parent folder)
leads outside the root: `_Root.resolve` follows links with `Path.resolve` and then checks that the
real path is still inside the real root. Writes go through `runtime.atomic.atomic_write_text`, so a
reader never sees half a file.
"""

from __future__ import annotations

import argparse
import codecs
import fnmatch
import os
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from runtime.atomic import atomic_write_text
from runtime.errors import MiniCPMError

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
SNIFF_BYTES = 8192  # how much of a file decides "text or binary"
MAX_READ_BYTES = 1 << 20  # the most read_file returns in one call, whatever max_bytes asks
SEARCH_FILE_LIMIT = 4 << 20  # search_text skips files larger than this


class FileAccessError(ValueError):
    """A path a tool was given cannot be used (escapes the root, missing, wrong kind, binary)."""


# ----------------------------------------------------------------------------------------- the root


class _Root:
    """The folder the server may touch, and the one place where relative paths become real paths."""

    def __init__(self, root: Path):
        self.real = Path(root).expanduser().resolve()

    def resolve(self, rel: str) -> Path:
        """The real path for `rel`, which need not exist; raises FileAccessError if it is outside the root."""
        if "\x00" in rel:
            raise FileAccessError(f"{rel!r}: paths may not contain NUL characters")
        text = rel.strip() or "."
        if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
            raise FileAccessError(
                f"'{rel}' is an absolute path; give a path relative to the root folder (for example 'notes/todo.txt')"
            )
        parts: list[str] = []
        # Backslashes count as separators too, so '..\..' cannot slip past on any system. '..' is applied
        # to the path as written ('a/../b' is 'b'); symlinks are then followed by resolve() below.
        for part in PurePosixPath(text.replace("\\", "/")).parts:
            if part == "..":
                if not parts:
                    raise FileAccessError(f"'{rel}' uses '..' to leave the root folder; only paths inside it are allowed")
                parts.pop()
            elif part != ".":
                parts.append(part)
        try:
            real = self.real.joinpath(*parts).resolve()  # follows every symlink along the way, dangling ones too
        except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on Python 3.11), a path too long
            raise FileAccessError(f"'{rel}' cannot be resolved ({exc}); it may go through a symlink loop") from None
        if not real.is_relative_to(self.real):
            raise FileAccessError(
                f"'{rel}' goes through a symbolic link that points outside the root folder; access refused"
            )
        return real

    def rel(self, real: Path) -> str:
        """The path of a real path inside the root, as the tools show it ('.' for the root)."""
        return real.relative_to(self.real).as_posix() or "."


# ----------------------------------------------------------------------------------------- results


class FileText(BaseModel):
    path: str = Field(description="the file, relative to the root")
    content: str = Field(description="the text of the lines returned")
    start_line: int = Field(description="first line returned (1-based)")
    end_line: int = Field(description="last line returned (1-based); start_line - 1 when no line was returned")
    truncated: bool = Field(description="true when the file goes on after end_line")
    next_start_line: int | None = Field(description="pass this as start_line to read on; null at the end of the file")
    size_bytes: int = Field(description="size of the whole file in bytes")


class Entry(BaseModel):
    path: str = Field(description="relative to the root")
    kind: Literal["file", "dir", "symlink", "other"]
    size_bytes: int | None = Field(description="file size in bytes; null for folders")


class Listing(BaseModel):
    path: str
    entries: list[Entry]
    truncated: bool = Field(description="true when more entries exist than max_entries allowed")


class FoundFiles(BaseModel):
    pattern: str
    matches: list[str] = Field(description="matching file paths, relative to the root")
    truncated: bool


class TextMatch(BaseModel):
    path: str
    line: int = Field(description="1-based line number")
    text: str = Field(description="the matching line (cut to 300 characters)")


class TextMatches(BaseModel):
    query: str
    matches: list[TextMatch]
    files_searched: int
    files_skipped: int = Field(description="binary, unreadable or larger than 4 MiB files that were not searched")
    truncated: bool


class WriteResult(BaseModel):
    path: str
    bytes_written: int
    created: bool = Field(description="true if the file did not exist before")


class MakeDirResult(BaseModel):
    path: str
    created: bool = Field(description="false if the folder already existed")


# ----------------------------------------------------------------------------------------- helpers


def _kind(mode: int) -> Literal["file", "dir", "symlink", "other"]:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _not_text(head: bytes, whole: bool) -> str | None:
    """Why the first bytes of a file (all of it when whole) show it is not UTF-8 text, or None when they look fine."""
    if b"\x00" in head:
        return "is a binary file"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)  # else a character cut at the end is fine
    except UnicodeDecodeError:
        return "is not UTF-8 text (a binary file, or text in another encoding)"
    return None


def _require_file(root: _Root, rel: str) -> Path:
    real = root.resolve(rel)
    if not real.exists():
        raise FileAccessError(f"'{rel}' does not exist under the root folder")
    if real.is_dir():
        raise FileAccessError(f"'{rel}' is a folder, not a file; use list_dir to see what it holds")
    if not real.is_file():
        raise FileAccessError(f"'{rel}' is not a regular file")
    return real


def _require_dir(root: _Root, rel: str) -> Path:
    real = root.resolve(rel)
    if not real.exists():
        raise FileAccessError(f"'{rel}' does not exist under the root folder")
    if not real.is_dir():
        raise FileAccessError(f"'{rel}' is a file, not a folder")
    return real


def _walk(top: Path):
    """(real path, lstat) of everything under top, sorted, without following symlinked folders."""
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = here / name
            try:
                yield path, path.lstat()
            except OSError:
                continue


def _glob_matches(pattern: str, rel_path: str) -> bool:
    """A pattern without '/' matches the file name at any depth; with '/' it matches the whole relative path."""
    if "/" in pattern:
        return fnmatch.fnmatchcase(rel_path, pattern) or fnmatch.fnmatchcase(rel_path, pattern.replace("**/", ""))
    return fnmatch.fnmatchcase(rel_path.rsplit("/", 1)[-1], pattern)


# ----------------------------------------------------------------------------------------- server


def build_server(root: str | os.PathLike, read_only: bool = False) -> FastMCP:
    """The files server for `root` (an existing folder). With read_only, the write tools are not offered."""
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise MiniCPMError(f"--root {root}: no such folder; give an existing folder for the files server")
    if not root_path.is_dir():
        raise MiniCPMError(f"--root {root}: not a folder; give a folder for the files server")
    box = _Root(root_path)

    mode = "read-only" if read_only else "read-write"
    server = FastMCP(
        "files",
        instructions=(
            f"Files in one folder ({mode}). Every path is relative to that folder; absolute paths, '..' out "
            "of it and symbolic links leading outside it are refused."
        ),
        log_level="WARNING",
    )

    @server.tool(annotations=READ_ONLY)
    def read_file(
        path: Annotated[str, Field(description="file to read, relative to the root folder, e.g. 'src/main.py'")],
        start_line: Annotated[int, Field(ge=1, description="first line to return, 1-based (default 1)")] = 1,
        end_line: Annotated[int | None, Field(ge=1, description="last line to return, inclusive; omit to read on to the end or the byte limit")] = None,
        max_bytes: Annotated[int, Field(ge=1, le=MAX_READ_BYTES, description="most bytes of text to return (default 65536, at most 1048576)")] = 65536,
    ) -> FileText:
        """Read a UTF-8 text file, or a range of its lines.

        Returns the text with the line numbers it covers. A long file is cut at whole lines once
        max_bytes is reached (a single longer line is cut), and `next_start_line` then says where to
        continue. Binary files (images, archives, ...) are refused with a message instead of garbage.
        """
        real = _require_file(box, path)
        if end_line is not None and end_line < start_line:
            raise FileAccessError(f"end_line ({end_line}) is before start_line ({start_line})")
        size = real.stat().st_size
        with real.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
            problem = _not_text(head, whole=len(head) == size)
            if problem:
                raise FileAccessError(f"'{path}' {problem} ({size} bytes); read_file only shows UTF-8 text files")
            handle.seek(0)
            chunks: list[str] = []
            used = 0  # bytes in chunks
            number = 1  # the line the next piece read belongs to
            last = start_line - 1  # last line returned
            more = False  # the file goes on after `last`
            open_line = False  # the last piece read had no newline (end of file without one)
            while raw := handle.readline(max_bytes + 1):  # bounded: a file without newlines is not read whole
                line = number
                open_line = not raw.endswith(b"\n")
                if not open_line:
                    number += 1
                if line < start_line:
                    continue
                if (end_line is not None and line > end_line) or used + len(raw) > max_bytes:
                    more = True
                    if not chunks and used + len(raw) > max_bytes:  # one line longer than the limit: cut it
                        chunks.append(raw[:max_bytes].decode("utf-8", errors="ignore"))
                        last = line
                    break
                chunks.append(raw.decode("utf-8", errors="replace"))
                used += len(raw)
                last = line
            if not chunks and start_line > 1:
                total = number if open_line else number - 1
                raise FileAccessError(f"start_line {start_line} is past the end of '{path}', which has {total} lines")
        return FileText(path=box.rel(real), content="".join(chunks), start_line=start_line, end_line=last,
                        truncated=more, next_start_line=last + 1 if more else None, size_bytes=size)

    @server.tool(annotations=READ_ONLY)
    def list_dir(
        path: Annotated[str, Field(description="folder to list, relative to the root; '.' is the root itself")] = ".",
        recursive: Annotated[bool, Field(description="also list everything in sub-folders (symlinked folders are not entered)")] = False,
        max_entries: Annotated[int, Field(ge=1, le=5000, description="most entries to return (default 200)")] = 200,
    ) -> Listing:
        """List a folder: each entry's path (relative to the root), kind (file, dir, symlink, other) and size in bytes."""
        real = _require_dir(box, path)
        entries: list[Entry] = []
        truncated = False
        if recursive:
            items = _walk(real)
        else:
            items = ((child, child.lstat()) for child in sorted(real.iterdir()))
        for child, info in items:
            if len(entries) >= max_entries:
                truncated = True
                break
            kind = _kind(info.st_mode)
            entries.append(Entry(path=box.rel(child), kind=kind, size_bytes=None if kind == "dir" else info.st_size))
        return Listing(path=box.rel(real), entries=entries, truncated=truncated)

    @server.tool(annotations=READ_ONLY)
    def find_files(
        pattern: Annotated[str, Field(description="glob for file names, e.g. '*.py' (any depth) or 'docs/*.md' (matched against the whole relative path)")],
        path: Annotated[str, Field(description="folder to search in, relative to the root (default: the root)")] = ".",
        max_results: Annotated[int, Field(ge=1, le=5000, description="most paths to return (default 100)")] = 100,
    ) -> FoundFiles:
        """Find files whose names match a glob pattern (* ? [abc]), searching sub-folders too."""
        real = _require_dir(box, path)
        matches: list[str] = []
        truncated = False
        for child, info in _walk(real):
            if stat.S_ISDIR(info.st_mode):
                continue
            rel = box.rel(child)
            if _glob_matches(pattern, rel):
                if len(matches) >= max_results:
                    truncated = True
                    break
                matches.append(rel)
        return FoundFiles(pattern=pattern, matches=matches, truncated=truncated)

    @server.tool(annotations=READ_ONLY)
    def search_text(
        query: Annotated[str, Field(min_length=1, description="text to look for in file contents (a plain substring unless regex is true)")],
        path: Annotated[str, Field(description="folder to search in, relative to the root (default: the root)")] = ".",
        regex: Annotated[bool, Field(description="treat query as a Python regular expression")] = False,
        case_sensitive: Annotated[bool, Field(description="match upper/lower case exactly (default false)")] = False,
        glob: Annotated[str, Field(description="only search files whose names match this glob, e.g. '*.md' (default: all)")] = "*",
        max_results: Annotated[int, Field(ge=1, le=2000, description="most matching lines to return (default 100)")] = 100,
    ) -> TextMatches:
        """Search the contents of text files for a substring or regular expression; returns matching lines.

        Binary files and files over 4 MiB are skipped (and counted in files_skipped).
        """
        real = _require_dir(box, path)
        flags = 0 if case_sensitive else re.IGNORECASE
        try:
            pattern = re.compile(query if regex else re.escape(query), flags)
        except re.error as exc:
            raise FileAccessError(f"invalid regular expression {query!r}: {exc}") from None
        matches: list[TextMatch] = []
        searched = skipped = 0
        truncated = False
        for child, info in _walk(real):
            if truncated:
                break
            rel = box.rel(child)
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)) or not _glob_matches(glob, rel):
                continue
            try:
                target = box.resolve(rel)  # a symlinked file counts only if it stays inside the root
                if not target.is_file() or target.stat().st_size > SEARCH_FILE_LIMIT:
                    skipped += 1
                    continue
                data = target.read_bytes()
            except (FileAccessError, OSError):
                skipped += 1
                continue
            if _not_text(data[:SNIFF_BYTES], whole=len(data) <= SNIFF_BYTES):
                skipped += 1
                continue
            searched += 1
            for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
                if pattern.search(line):
                    if len(matches) >= max_results:
                        truncated = True
                        break
                    matches.append(TextMatch(path=rel, line=number, text=line[:300]))
        return TextMatches(query=query, matches=matches, files_searched=searched, files_skipped=skipped, truncated=truncated)

    if read_only:
        return server

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False))
    def write_file(
        path: Annotated[str, Field(description="file to write, relative to the root; missing parent folders are created")],
        content: Annotated[str, Field(description="the complete new text of the file (written as UTF-8)")],
        overwrite: Annotated[bool, Field(description="replace the file if it already exists (default false: refuse)")] = False,
    ) -> WriteResult:
        """Write a text file atomically (readers never see half a file).

        Refuses to replace an existing file unless overwrite is true; the old content is then lost.
        """
        real = box.resolve(path)
        if real == box.real:
            raise FileAccessError("write_file needs a file path, not the root folder")
        if real.is_dir():
            raise FileAccessError(f"'{path}' is a folder; give a file path")
        existed = real.exists()
        if existed and not overwrite:
            raise FileAccessError(f"'{path}' already exists; pass overwrite=true to replace it")
        _make_parents(real.parent, path)
        atomic_write_text(real, content)
        return WriteResult(path=box.rel(real), bytes_written=len(content.encode("utf-8")), created=not existed)

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False))
    def make_dir(
        path: Annotated[str, Field(description="folder to create, relative to the root; parents are created too")],
    ) -> MakeDirResult:
        """Create a folder (and any missing parent folders). Does nothing if it already exists."""
        real = box.resolve(path)
        if real.exists() and not real.is_dir():
            raise FileAccessError(f"'{path}' exists and is a file, not a folder")
        existed = real.exists()
        _make_parents(real, path)
        return MakeDirResult(path=box.rel(real), created=not existed)

    def _make_parents(folder: Path, rel: str) -> None:
        """mkdir -p for a folder already checked to be inside the root; checks again after creating it."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise FileAccessError(f"cannot create the folders for '{rel}': part of that path is a file") from None
        if not folder.resolve().is_relative_to(box.real):  # a link swapped in meanwhile
            raise FileAccessError(f"'{rel}' goes through a symbolic link that points outside the root folder; access refused")

    return server


# ----------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, metavar="DIR",
                        help="the folder the server may read (and write); every path is relative to it")
    parser.add_argument("--read-only", action="store_true",
                        help="offer only the reading tools (read_file, list_dir, find_files, search_text)")


def build(args: argparse.Namespace) -> FastMCP:
    return build_server(root=args.root, read_only=args.read_only)
