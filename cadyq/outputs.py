"""Writing outputs: one atomic writer, and the plan of what `cadyq upscale` will write.

Every file cadyq writes goes through `atomic_write` (a temporary name in the same folder, then a
rename), so an interrupted or failed write leaves the old file, or nothing, and never a partial
one; its failures are `OutputError`s that name the path and the reason. `plan_upscale` decides
every output name before any work starts: collisions are resolved or refused, inputs are never
overwritten, existing outputs are replaced only when asked.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .errors import OutputError

# A suffix that reads as a file extension (".png", ".gif"), not a folder name such as "runs.2024" or "x.05".
_EXTENSION_LIKE = re.compile(r"^\.[A-Za-z][A-Za-z0-9]{0,4}$")


def reason(e: BaseException) -> str:
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__).rstrip(".")


def _is_io_failure(e: Exception) -> bool:
    # safetensors reports a failed write as SafetensorError("... IoError(Os { code: 28, ... })")
    return isinstance(e, OSError) or "IoError" in str(e)


def ensure_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents) unless it exists; OutputError when that is impossible."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{folder}: cannot create this folder: {blocker} is a file; choose another output path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create this folder ({reason(e)}); choose another output path") from e
    return folder


def writable_target(path: str | Path) -> Path:
    """Where writing `path` puts the bytes: the target of a symbolic link (the link stays), after checking
    that nothing but a regular file would be replaced (a rename over /dev/null would replace the device)."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):  # nothing to replace; the folder checks say the rest
        return target
    except OSError as e:
        raise OutputError(f"{path}: cannot write there ({reason(e)}); choose another output path") from e
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise OutputError(f"{path}: is {kind}; name a file to write")
    return target


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """write(tmp_path), then rename it over `path`. Raises OutputError naming `path` and the reason."""
    shown, path = Path(path), writable_target(path)
    ensure_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:180]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"{shown}: cannot write in {path.parent} ({reason(e)})") from e
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except Exception as e:
        if not _is_io_failure(e):
            raise
        raise OutputError(f"{shown}: cannot write ({reason(e)}); check free space and permissions") from e
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


# ---- checks before work starts ----------------------------------------------------------------------------

def _key(path: Path) -> str:
    return os.path.normcase(str(path.resolve()))  # normcase: A.png and a.png are one file on Windows


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file: two names of one file (a hard link, say) share it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_file(a: Path, b: Path) -> bool:
    ia = _identity(a)
    return ia is not None and ia == _identity(b)


def _os_errors_name_the_path(check):
    """A check that stats paths (a name too long, say) fails with an OutputError, not a bare OSError."""
    def wrapped(path, *a, **k):
        try:
            return check(path, *a, **k)
        except OSError as e:
            raise OutputError(f"{e.filename or path}: cannot write there ({reason(e)}); choose another output path") from e
    wrapped.__doc__, wrapped.__name__ = check.__doc__, check.__name__
    return wrapped


@_os_errors_name_the_path
def check_output_file(path: str | Path, *, inputs: Sequence[str | Path] = (), overwrite: bool = True,
                      option: str = "the output") -> Path:
    """Refuse, before any work, an output file that cannot be written or that would replace an input
    (or, without `overwrite`, any existing file)."""
    path = Path(path)
    for src in map(Path, inputs):
        if _key(src) == _key(path) or _same_file(src, path):
            raise OutputError(f"{path}: {option} is also an input ({src}); writing it would replace the input, "
                              "so choose another name")
    if path.is_dir():
        raise OutputError(f"{path}: {option} is a folder; name a file")
    target = writable_target(path)  # a device or FIFO is refused as such, --overwrite or not
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it, or choose another name")
    _check_folder_can_hold(target.parent)
    return path


def _check_folder_can_hold(folder: Path) -> None:
    """`folder` exists or can be created, and files can be created in it: probed with a temporary folder
    in its nearest existing ancestor (permission bits do not tell for root, /proc or a read-only mount)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise OutputError(f"{folder}: cannot create this folder: {existing} is a file; choose another output path")
    before = existing.stat()
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cadyq-probe-", dir=existing))
    except OSError as e:
        raise OutputError(f"{folder}: cannot write there ({reason(e)} in {existing}); choose another output path") from e
    with contextlib.suppress(OSError):  # the probe leaves the folder as it was, modification time included
        os.utime(existing, ns=(before.st_atime_ns, before.st_mtime_ns))


# ---- cadyq upscale ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UpscaleJob:
    src: Path
    image: Path                 # the SR image
    bit_map: Path | None        # its bit map picture, with --bitmap


@dataclass(frozen=True)
class UpscalePlan:
    jobs: list[UpscaleJob]      # what runs
    skipped: list[UpscaleJob]   # left out by skip_existing: their outputs exist


@_os_errors_name_the_path
def plan_upscale(inputs: Sequence[Path], output: str | Path, scale: int, *, extensions: Sequence[str],
                 bit_map: bool = False, report: str | Path | None = None, overwrite: bool = False,
                 skip_existing: bool = False, video: bool = False) -> UpscalePlan:
    """Every file `cadyq upscale` will write, checked before the first image (or video) runs. skip_existing:
    inputs whose outputs all exist are left out (outputs are written atomically, so an existing file is complete).

    One input and a file name with one of `extensions` for `output`: that file. Otherwise `output` is a folder and
    each input writes `<stem>_x<scale>.png` (videos: `<stem>_x<scale><its extension>`); image inputs whose names
    would collide (photo.png, photo.jpg) get their extension in the name (photo_png_x4.png, photo_jpg_x4.png);
    collisions that remain are refused. The bit map is `<output stem>_bits.png` (videos: the output's extension).
    """
    what = "video" if video else "image"
    output = Path(output)
    inputs = [Path(p) for p in inputs]
    if video and _is_sequence(output):
        return _plan_sequence(inputs, output, bit_map, report, overwrite, skip_existing)
    if _names_a_file(output):
        if output.suffix.lower() not in extensions:
            raise OutputError(f"-o {output}: {output.suffix} is not {'a video' if video else 'an image'} format cadyq "
                              f"writes (use {' '.join(extensions)}); to write into a folder of that name, create it first")
        if len(inputs) > 1:
            raise OutputError(f"-o {output} names one {what} file, but {len(inputs)} {what}s were given; "
                              f"pass a folder for -o (e.g. -o {output.with_suffix('')})")
        _check_folder_can_hold(output.parent)
        outs = [output]
    else:
        if output.exists() and not output.is_dir():
            raise OutputError(f"-o {output}: exists and is not a folder; with {len(inputs)} input(s) "
                              f"-o must be a folder (or {'a video' if video else 'an image'} file name for a single input)")
        _check_folder_can_hold(output)
        outs = ([output / f"{src.stem}_x{scale}{src.suffix.lower()}" for src in inputs] if video
                else _folder_names(inputs, output, scale))
    jobs = [UpscaleJob(src, dst, dst.with_name(f"{dst.stem}_bits{dst.suffix if video else '.png'}") if bit_map else None)
            for src, dst in zip(inputs, outs)]
    skipped = [j for j in jobs if skip_existing and done(j)]
    jobs = [j for j in jobs if j not in skipped]
    _check_outputs(jobs, inputs, _report_to_check(report, skip_existing), overwrite)
    return UpscalePlan(jobs, skipped)


def _is_sequence(output: Path) -> bool:
    from .video import is_sequence

    return is_sequence(output)


def _plan_sequence(inputs, pattern: Path, bit_map: bool, report, overwrite: bool, skip_existing: bool):
    """A video into an image sequence (`-o frames/%06d.png`): one input; refused where its first frame exists."""
    if len(inputs) > 1:
        raise OutputError(f"-o {pattern} names one image sequence, but {len(inputs)} videos were given; pass a folder")
    if skip_existing:
        raise OutputError("--skip-existing resumes whole files; an image sequence is rewritten (pass --overwrite)")
    _check_folder_can_hold(pattern.parent)
    job = UpscaleJob(inputs[0], pattern, pattern.with_name(f"{pattern.stem}_bits{pattern.suffix}") if bit_map else None)
    for p in (job.image, job.bit_map):
        first = None if p is None else p.with_name(p.name % 1)
        if first is not None and first.exists() and not overwrite:
            raise OutputError(f"{first}: exists; pass --overwrite to replace the sequence, or choose another -o")
    _check_outputs([], inputs, _report_to_check(report, False), overwrite)
    return UpscalePlan([job], [])


def _report_to_check(report, skip_existing: bool) -> Path | None:
    """The --json report is checked like an output, except that a resumed run (--skip-existing) replaces its own."""
    if report is None or (skip_existing and Path(report).is_file()):
        return None
    return Path(report)


def done(job: UpscaleJob) -> bool:
    """Every output of the job exists (written atomically: complete)."""
    return job.image.is_file() and (job.bit_map is None or job.bit_map.is_file())


def _names_a_file(output: Path) -> bool:
    return not output.is_dir() and bool(_EXTENSION_LIKE.match(output.suffix))


def _folder_names(inputs: list[Path], folder: Path, scale: int) -> list[Path]:
    def plain(src: Path) -> str:
        return f"{src.stem}_x{scale}.png"

    groups: dict[str, list[int]] = {}
    for i, src in enumerate(inputs):
        groups.setdefault(os.path.normcase(plain(src)), []).append(i)
    names = [plain(src) for src in inputs]
    for idx in groups.values():
        if len(idx) > 1:
            for i in idx:
                names[i] = f"{inputs[i].stem}_{inputs[i].suffix.lstrip('.').lower()}_x{scale}.png"
    return [folder / n for n in names]


def _check_outputs(jobs: list[UpscaleJob], inputs: list[Path], report: Path | None, overwrite: bool) -> None:
    planned: list[tuple[Path, str]] = []
    for job in jobs:
        planned.append((job.image, f"the output of {job.src}"))
        if job.bit_map is not None:
            planned.append((job.bit_map, f"the bit map of {job.src}"))
    if report is not None:
        planned.append((report, "the --json report"))
    folders = _FolderCache()
    key, exists = folders.key, folders.exists
    seen: dict[str, str] = {}
    for path, what in planned:
        k = key(path)
        if k in seen:
            raise OutputError(f"{path} would be written twice ({seen[k]} and {what}); give the inputs "
                              "different names, or upscale them into separate folders")
        seen[k] = what
    input_keys = {key(p): p for p in inputs}
    for path, what in planned:
        src = input_keys.get(key(path))
        if src is not None:
            raise OutputError(f"{path}: {what} would replace the input {src}; choose another -o")
    existing = [(path, what) for path, what in planned if exists(path)]
    if existing:  # only these can be inputs under another name (a hard link) or something that is no file
        input_ids = {i: p for p in inputs if (i := _identity(p)) is not None}
        for path, what in existing:
            if _identity(path) in input_ids:
                raise OutputError(f"{path}: {what} would replace the input {input_ids[_identity(path)]}; "
                                  "choose another -o")
            if path.is_dir():
                raise OutputError(f"{path}: {what} would be written here, but it is a folder; remove it or choose "
                                  "another -o")
            writable_target(path)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more of the outputs)" if len(existing) > 1 else ""
        raise OutputError(f"{existing[0][0]}: exists{more}; pass --overwrite to replace, --skip-existing to keep them and do the rest, or choose another -o")
    if report is not None:
        _check_folder_can_hold(report.parent)


class _FolderCache:
    """Keys and existence of many paths in few folders, with one resolve and one listing per folder."""

    def __init__(self):
        self._resolved: dict[str, str] = {}
        self._listed: dict[str, set[str]] = {}

    def key(self, path: Path) -> str:
        parent, name = os.path.split(str(path))
        if parent not in self._resolved:
            self._resolved[parent] = _key(Path(parent or "."))
        return os.path.join(self._resolved[parent], os.path.normcase(name))

    def exists(self, path: Path) -> bool:
        parent, name = os.path.split(str(path))
        if parent not in self._listed:
            try:
                self._listed[parent] = set(os.listdir(parent or "."))
            except (FileNotFoundError, NotADirectoryError):
                self._listed[parent] = set()
        return name in self._listed[parent]
