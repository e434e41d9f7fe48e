"""AsyncFlow's data objects: ``InputFile`` and ``OutputFile``.

Passed as positional arguments to a task, they are recorded in its description
(``description["metadata"]["input_files"]`` / ``["output_files"]``, by file name) and reach the
body unchanged. ``InputFile`` classifies what it is given as AsyncFlow does: a URL with a known
scheme (remote), an existing local path (made absolute), or else a file another task will produce.
Unlike AsyncFlow 0.5, a remote URL is not downloaded when the object is made: ``filepath`` is the
URL's file name until the program fetches it (no network access happens in a constructor).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union
from urllib.parse import urlparse

URL_SCHEMES = ("http", "https", "ftp", "ftps", "sftp", "file", "data", "s3", "azure", "r2", "gs")


def _path_text(file: object, what: str) -> str:
    if isinstance(file, os.PathLike):
        file = os.fspath(file)
    if not isinstance(file, str):
        raise TypeError(f"{what} takes a str or a path, not {type(file).__name__}")
    if not file:
        raise ValueError(f"{what} needs a non-empty file name")
    return file


class File:
    """Common base: ``filename`` (the last path component) and ``filepath`` (a Path)."""

    def __init__(self) -> None:
        self.filename: str | None = None
        self.filepath: Path | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.filename!r})"


class InputFile(File):
    """A file a task reads: a remote URL, a local path, or another task's output file."""

    def __init__(self, file: Union[str, Path]) -> None:
        super().__init__()
        text = _path_text(file, "InputFile")
        self.remote_url: str | None = None
        self.local_file: str | None = None
        self.other_task_file: str | None = None
        if urlparse(text).scheme in URL_SCHEMES:
            self.remote_url = text
            self.filepath = Path(urlparse(text).path.rsplit("/", 1)[-1] or "downloaded_file")
        elif os.path.exists(text):
            self.local_file = text
            self.filepath = Path(text).resolve()
        else:
            self.other_task_file = text
            self.filepath = Path(text)
        self.filename = self.filepath.name
        if not self.filename:
            raise ValueError(f"InputFile {text!r} names no file")


class OutputFile(File):
    """A file a task produces; only its name is kept."""

    def __init__(self, filename: Union[str, Path]) -> None:
        super().__init__()
        text = _path_text(filename, "OutputFile")
        self.filename = os.path.basename(text)
        if not self.filename:
            raise ValueError(f"Invalid filename, the path {text} does not include a file")
        self.filepath = Path(text)


__all__ = ["File", "InputFile", "OutputFile", "URL_SCHEMES"]
