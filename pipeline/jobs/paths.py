"""Where a job file's audio may come from: its own folder, or a folder the caller names.

A job file may be someone else's. Without this check a line such as `"file": "../../home/me/call.wav"`, an
absolute path or a symlink pointing out of the folder would upload any audio file the user can read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def audio_outside(path: Path, name: str, base_dir: Path, roots: Sequence[Path] = ()) -> str | None:
    """The problem with audio file `path` (named `name` in the job file) when, once symlinks are resolved,
    it lies outside `base_dir` (the job file's folder) and outside every folder of `roots`; else None."""
    real = path.resolve()
    allowed = [base_dir, *roots]
    if any(real.is_relative_to(folder.resolve()) for folder in allowed):
        return None
    return (
        f"body.file: {name!r} is outside the job file's folder {str(base_dir)!r}"
        + (" and every --audio-root" if roots else "")
        + "; move it there, or allow its folder with --audio-root DIR"
    )
