"""Reading and writing pride's own JSON files, with one set of guarantees.

* `read_json` / `read_jsonl`: strict; a problem is a PrideError naming the file and line.
* `read_record`: a marker file pride wrote, or None when absent or unreadable (redo the work).
* `read_jsonl_tolerant`: for files pride appends to while running (metrics, resumable
  parts): complete lines only, a torn last line (a kill mid-write) is dropped.
* `append_jsonl`: whole lines, synced, so a kill leaves at most one torn last line.
* `write_json` / `write_jsonl` / `write_text`: atomic (a temp file in the same directory, then rename), so a
  reader never sees half a file; a full disk is a PrideError naming the directory, with the
  temp file removed. They replace only regular files, and never an input of the running
  command (`mark_inputs`: the config, data files and model directory it read).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from pride.errors import PrideError


def read_json(path: Path):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PrideError(f"{path}: not UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise PrideError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PrideError(f"{path} line {e.lineno}: bad JSON ({e.msg})") from None


def read_record(path: Path) -> dict | None:
    """A small JSON record pride wrote (a stage's or round's marker), or None when it is absent,
    half-written (an older pride, a copy cut short) or not a record: the caller redoes the work."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def read_jsonl(path: Path) -> list:
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: Path) -> list[tuple[int, object]]:
    """(line number, value) for every non-blank line; strict."""
    rows = []
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as e:
        raise PrideError(f"{path}: cannot read ({e.strerror})") from None
    for n, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrideError(f"{path} line {n}: not UTF-8 (byte {e.start})") from None
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise PrideError(f"{path} line {n}: bad JSON ({e.msg})") from None
    return rows


def read_jsonl_tolerant(path: Path, repair: bool = False) -> list[dict]:
    """Complete lines of a file pride appends to; a torn last line is dropped (and cut off the
    file with `repair`). A bad line before the last is still an error: that is not a kill."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw) and repair:
        with open(path, "r+b") as f:
            f.truncate(end)
    rows = []
    for n, line in enumerate(raw[:end].decode("utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PrideError(f"{path} line {n}: bad JSON ({e.msg})") from None
    return rows


_inputs: set[Path] = set()  # what the running command read: never an output


def mark_inputs(*paths) -> None:
    """Files and directories the running command reads (config, data, model): no pride writer
    may replace them or write inside them until `clear_inputs` (a command's or stage's end)."""
    for p in paths:
        if p:
            _inputs.add(Path(p).expanduser().resolve())


def clear_inputs() -> None:
    _inputs.clear()


def check_not_input(path: Path, may_hold: bool = False) -> None:
    """`path`, a file or directory pride is about to replace or remove, is not an input of this
    command, not inside one, and does not hold one (a run directory's `model/` that is the model
    this run starts from); `may_hold`: a directory written into, never replaced (eval.output_dir)."""
    real = Path(path).expanduser().resolve()
    for inp in _inputs:
        if real == inp or inp in real.parents or (real in inp.parents and not may_hold):
            what = "holds" if real in inp.parents else "is"
            raise PrideError(f"{path}: refusing to write there: it {what} an input of this run ({inp}); "
                             "choose another path or output_dir")


def check_output(path: Path) -> None:
    """An output path pride may write: not an input of this command, and either absent or a
    regular file (a device, directory, pipe or symbolic link is never replaced)."""
    path = Path(path)
    check_not_input(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise PrideError(f"{path}: cannot write there ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode)
                else "a device, pipe or socket")
        raise PrideError(f"{path}: is {kind}, not a regular file; pride replaces only regular files "
                         "(choose another path)")


def make_dir(path: Path) -> Path:
    """An output directory (and its parents), or one line saying why it cannot be: a file in the
    way, a read-only filesystem, no permission."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PrideError(f"{path}: exists and is not a directory; choose another output directory") from None
    except NotADirectoryError:
        raise PrideError(f"{path}: a part of this path is a file, not a directory; choose another output "
                         "directory") from None
    except OSError as e:
        raise PrideError(f"{path}: cannot create the directory ({e.strerror})") from None
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> Path:
    """Atomically (a temp file, then rename), readable as a file `open()` makes (the umask's mode)."""
    path = Path(path)
    check_output(path)
    make_dir(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~umask())  # as open() would make it (mkstemp's is 0600): readable by a team
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise disk_error(e, path.parent) from None
    return path


def share(root: Path) -> None:
    """Files and folders under `root` with the modes the umask gives (0644 and 0755 under 022):
    libraries that write through a temp file (safetensors' model.safetensors) leave 0600, which a
    colleague or a server running as another user cannot read."""
    mask = umask()
    for path in [Path(root), *Path(root).rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def umask() -> int:
    """The process's umask: from /proc (Linux; no race with threads creating files), else read by
    setting it and setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: Path, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: Path, rows: list) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise disk_error(e, Path(path)) from None


WRITE_ERRORS = {  # errno: (the words libraries wrap it in, what it means for the run)
    errno.ENOSPC: (("No space left", "os error 28", "failed writing"), "no space left on the device"),
    errno.EDQUOT: (("Disk quota exceeded", "os error 122"), "no space left on the device"),
    errno.EROFS: (("Read-only file system", "os error 30"), "the filesystem became read-only"),
    errno.EACCES: (("Permission denied", "os error 13"), "permission denied (the directory is read-only or not yours)"),
    errno.EPERM: (("Operation not permitted", "os error 1"), "permission denied (the directory is read-only or not yours)"),
    errno.ENOENT: (("No such file or directory", "os error 2"), "the directory went away while pride wrote to it"),
}


def write_problem(e: BaseException) -> str | None:
    """What went wrong with a write, as words (None: not a filesystem problem). Raised as an
    OSError, or wrapped in a library's own error (safetensors' SafetensorError "I/O error: No
    space left on device (os error 28)", torch's "failed writing")."""
    if isinstance(e, OSError):
        return WRITE_ERRORS[e.errno][1] if e.errno in WRITE_ERRORS else None
    text = str(e)
    return next((what for marks, what in WRITE_ERRORS.values() if any(m in text for m in marks)), None)


def is_disk_full(e: BaseException) -> bool:
    return write_problem(e) == "no space left on the device"


def disk_error(e: BaseException, where: Path, needed: int | None = None) -> BaseException:
    """A full disk, a directory turned read-only or one that vanished, as one clear line whatever
    raised it; other errors as they are."""
    what = write_problem(e)
    if what is None:
        return e
    need = f"; about {needed / 2**20:.0f} MiB needed" if needed and is_disk_full(e) else ""
    return PrideError(f"{where}: {what}{need}. Nothing was left half-written; fix that (or choose another "
                      "output_dir) and run again to resume")
