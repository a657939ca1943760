"""On-disk cache of generated views (DiffTPT's diffusion images), keyed by source-image content + generation settings.

DiffTPT (Feng et al., "Diverse Data Augmentation with Diffusions for Effective Test-time Prompt Tuning", ICCV 2023,
arXiv 2308.09942) generates its diffusion views offline and reads them back from disk (reference
chunmeifeng/DiffTPT@f5522ef, ``image_generator_R.py``: ``<stem>_<t>.<ext>`` files in the source's format, JPEG
quality 75 for JPEG sources); this cache plays that role, with integrity checks and several writers.
Layout under ``root`` (one folder per set of generation settings)::

    <root>/<digest16>/settings.json           generation settings (key part shared by all source images)
    <root>/<digest16>/entries/<sha256>.json   one record per source image: source, label, files + sha256, provenance
    <root>/<digest16>/images/<sha[:2]>/<sha256>_<t>.<ext>
    <root>/<digest16>/manifest.json           derived: settings + every entry (rebuilt from the entry files)

Every file is written to a temporary name in its folder and moved into place with ``os.replace`` (atomic); an entry
is written after its images, so it is the commit point. Reads verify each image's sha256 against its entry.
A corrupt or missing image, an unreadable entry or an entry made under other settings raises ``CacheCorruptError``
/ ``CacheMismatchError`` naming the file (``on_mismatch="raise"``, the default) or is reported as missing so
that exactly those images are regenerated (``on_mismatch="regenerate"``); nothing else is touched.

Concurrency (several processes sharing one cache folder, e.g. torchrun ranks): reads need no lock (an entry names
only images already in place). Writers of a key take its lock, ``writer(key)``: an OS file lock (``flock``, POSIX)
on ``<root>/<digest16>/locks/<sha256>.lock`` (pid, host and time inside), re-``load`` the key (another process may
have generated it meanwhile) and store only what is still missing, so there is exactly one writer per key. The
system releases a lock when its process exits, so a crashed writer never blocks the others (its left-over lock file
is taken over with a warning) and no lock is ever broken by age. A lock file is unlinked by its holder before it
unlocks; a waiter that then gets the lock of the unlinked file sees that the path no longer names it and starts
over (``is_current``), so two processes never hold one key. After ``lock_timeout_s`` a ``CacheError`` names the lock
file and its holder. ``flush`` rebuilds the manifest under its own lock (``locks/manifest.lock``), so the last flush
sees every entry committed before it started; entries written concurrently are complete or not yet visible.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

_JPEG_SUFFIXES = (".jpg", ".jpeg")
_FORMATS = ("source", "jpeg", "png")
_POLL_S = (0.01, 0.5)  # first and longest sleep while waiting for a lock


class CacheError(RuntimeError):
    """Base class of view-cache errors."""


class CacheCorruptError(CacheError):
    """A cached file is missing, unreadable or does not match its recorded sha256."""


class CacheMismatchError(CacheError):
    """A cache folder or entry was made under different generation settings."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings_digest(settings: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``settings`` (sorted keys)."""
    return sha256_bytes(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode())


def source_key(image) -> tuple[str, str]:
    """Content key of a source image and its description: ``(sha256, source)``.

    A path hashes the file's bytes (source = the path); a PIL image hashes mode, size and pixels; a tensor hashes
    dtype, shape and its contiguous CPU bytes.
    """
    if isinstance(image, (str, os.PathLike)):
        return sha256_bytes(Path(image).read_bytes()), str(image)
    if hasattr(image, "tobytes") and hasattr(image, "mode"):  # PIL image
        head = f"PIL:{image.mode}:{image.size}:".encode()
        return sha256_bytes(head + image.tobytes()), "<PIL image>"
    if hasattr(image, "detach"):  # torch tensor
        t = image.detach().cpu().contiguous()
        head = f"tensor:{t.dtype}:{tuple(t.shape)}:".encode()
        return sha256_bytes(head + t.numpy().tobytes()), "<tensor>"
    raise TypeError(f"source image must be a path, a PIL image or a tensor, got {type(image).__name__}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def encode_image(image, fmt: str, quality: int = 75) -> bytes:
    """Serialise a PIL image as ``jpeg`` (RGB, given quality) or ``png`` bytes."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        image.save(buf, format="PNG")
    else:
        raise ValueError(f"image format {fmt!r}; valid: ['jpeg', 'png']")
    return buf.getvalue()


def decode_image(data: bytes):
    """A fully loaded RGB PIL image from encoded bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


@contextlib.contextmanager
def file_lock(path: Path, *, timeout_s: float, stale_s: float | None = None):
    """Hold the exclusive OS lock (``flock``) on the lock file ``path`` for the ``with`` block; removed on exit.

    Waits (polling) while another process (or another ``file_lock`` of this one) holds it. The lock belongs to the
    open file, so the system releases it when its holder exits, crashes included: a lock file left by a crashed
    writer is taken over at once (with a warning naming that writer). ``stale_s`` is accepted for compatibility
    and unused (no lock is ever broken).

    Raises:
        CacheError: still locked after ``timeout_s`` seconds (names the lock file and its holder), or the file
            system of ``path`` has no file locks.
    """
    fd = _acquire(path, timeout_s)
    try:
        yield path
    finally:
        _release(path, fd)


def _acquire(path: Path, timeout_s: float) -> int:
    """Open-or-create ``path``, ``flock`` it, and make sure ``path`` still names the locked file; returns the fd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start, sleep = time.monotonic(), _POLL_S[0]
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if _try_lock(fd, path):
            if is_current(path, fd):  # not a file its holder unlinked (released) while we waited for it
                _write_holder(fd, path)
                return fd
            os.close(fd)
            continue  # try again at once: the released path is free or taken by a new file
        os.close(fd)
        waited = time.monotonic() - start
        if waited >= timeout_s:
            raise CacheError(
                f"{path}: cache key locked by {_holder(path)} (waited {waited:.0f} s); that process is alive (file "
                f"locks are released when their process exits): wait for it or stop it rather than delete this lock "
                f"file, or raise strategy.diffusion.lock_timeout_s"
            )
        time.sleep(min(sleep, timeout_s - waited))
        sleep = min(2 * sleep, _POLL_S[1])


def _try_lock(fd: int, path: Path) -> bool:
    if fcntl is None:
        os.close(fd)
        raise CacheError(f"{path}: the view cache's writer lock needs POSIX file locks (fcntl.flock)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        os.close(fd)
        raise CacheError(
            f"{path}: the file system does not support file locks ({err}); put the cache folder "
            f"(strategy.diffusion.cache_dir) on a local or lock-capable file system"
        ) from err
    return True


def is_current(path: Path, fd: int) -> bool:
    """True if ``path`` names the file open as ``fd`` (same device and inode).

    Lock files are unlinked only by their holder, while it holds the lock (``_release``). A waiter that had the old
    file open gets its lock after that release, and this check sends it back to open ``path`` again: whoever holds
    the lock on the file that ``path`` names is the only holder, so two processes never both hold a key.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _write_holder(fd: int, path: Path) -> None:
    """Record this holder (pid, host, time) in the lock file; warn if a crashed holder left its record there."""
    left = os.pread(fd, 4096, 0)
    if left:
        warnings.warn(
            f"took over cache lock {path} left by {_describe(left)}: its writer presumably crashed", stacklevel=4
        )
    record = _dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)


def _holder(path: Path) -> str:
    try:
        return _describe(path.read_bytes())
    except OSError:
        return "an unknown holder"


def _describe(record: bytes) -> str:
    try:
        rec = json.loads(record)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["time"]))
        return f"pid {rec['pid']} on {rec['host']} since {since}"
    except (ValueError, TypeError, KeyError):
        return "an unknown holder"


def _release(path: Path, fd: int) -> None:
    """Unlink the lock file while still holding it (only if ``path`` still names it), then unlock by closing."""
    try:
        if is_current(path, fd):
            path.unlink()
        else:
            warnings.warn(f"{path}: cache lock file was removed or replaced while held", stacklevel=4)
    finally:
        os.close(fd)


@dataclass
class Lookup:
    """Result of ``ViewCache.load``: verified images by index and the indices still to generate."""

    images: dict[int, Any] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # corrupt/mismatching files found (regenerate mode)


class ViewCache:
    """Generated views on disk, keyed by (source sha256, generation settings); see the module docstring.

    Args:
        root: cache root folder (created if needed; ``~`` expanded).
        settings: JSON-serialisable generation settings; their digest names the cache folder.
        fmt: ``source`` (the source file's suffix; PNG for in-memory sources) | ``jpeg`` | ``png``.
        jpeg_quality: JPEG quality.
        on_mismatch: ``raise`` | ``regenerate`` (see the module docstring).
        flush_every_s: rebuild the manifest after a ``store`` when this many seconds passed since the last one.
        lock_timeout_s: longest wait for another process's lock (``writer``, ``flush``) before ``CacheError``.
        lock_stale_s: unused (kept for existing configs): OS locks of crashed writers are released by the system.
    """

    def __init__(
        self,
        root: str | Path,
        settings: Mapping[str, Any],
        *,
        fmt: str = "source",
        jpeg_quality: int = 75,
        on_mismatch: str = "raise",
        flush_every_s: float = 60.0,
        lock_timeout_s: float = 3600.0,
        lock_stale_s: float = 1800.0,
    ) -> None:
        if fmt not in _FORMATS:
            raise ValueError(f"cache format {fmt!r}; valid: {list(_FORMATS)}")
        if on_mismatch not in ("raise", "regenerate"):
            raise ValueError(f"on_mismatch={on_mismatch!r}; valid: ['raise', 'regenerate']")
        self.settings = json.loads(json.dumps(dict(settings)))  # canonical JSON types
        self.digest = settings_digest(self.settings)
        self.dir = Path(root).expanduser() / self.digest[:16]
        self.fmt, self.jpeg_quality, self.on_mismatch = fmt, int(jpeg_quality), on_mismatch
        self.flush_every_s = flush_every_s
        self.lock_timeout_s, self.lock_stale_s = float(lock_timeout_s), float(lock_stale_s)
        self._last_flush = time.monotonic()
        self._open()

    # ----------------------------------------------------------------- layout
    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def entry_path(self, key: str) -> Path:
        return self.dir / "entries" / f"{key}.json"

    def image_path(self, key: str, index: int, suffix: str) -> Path:
        return self.dir / "images" / key[:2] / f"{key}_{index}{suffix}"

    def lock_path(self, name: str) -> Path:
        return self.dir / "locks" / f"{name}.lock"

    def keys(self) -> list[str]:
        """Keys of all committed entries (sorted; temporaries of writes in progress are not entries)."""
        try:
            names = os.listdir(self.dir / "entries")
        except FileNotFoundError:
            return []
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith("."))

    def _open(self) -> None:
        path = self.dir / "settings.json"
        record = {"digest": self.digest, "settings": self.settings}
        if not path.is_file():
            atomic_write(path, _dumps(record))
            return
        try:
            found = json.loads(path.read_bytes())
            if not isinstance(found, dict) or not isinstance(found.get("settings"), dict):
                raise ValueError("not a settings record")
        except (OSError, ValueError) as err:  # unreadable, truncated or not JSON: corrupt, not "different"
            if self.on_mismatch == "raise":
                raise CacheCorruptError(
                    f"corrupt/unreadable settings.json at {path} ({err}); remove the folder {self.dir} or set "
                    f"strategy.diffusion.on_mismatch=regenerate (the folder is then set aside and rebuilt)"
                ) from err
            found = {}
        if found.get("settings") == self.settings:
            return
        if found and self.on_mismatch == "raise":
            diff = _diff(found["settings"], self.settings)
            raise CacheMismatchError(
                f"{path}: cache settings differ from the requested generation settings ({diff}); "
                f"remove the folder or set strategy.diffusion.on_mismatch=regenerate"
            )
        os.replace(self.dir, self.dir.with_name(f"{self.dir.name}.mismatch-{int(time.time())}"))  # kept aside
        atomic_write(path, _dumps(record))

    # ------------------------------------------------------------------ reads
    def load(self, key: str, n: int) -> Lookup:
        """Verified images ``0..n-1`` of source ``key``; the rest (absent or, in regenerate mode, bad) as missing.

        Raises:
            CacheCorruptError / CacheMismatchError: a bad file, with ``on_mismatch="raise"``.
        """
        out = Lookup()
        entry = self._read_entry(key, out)
        files = (entry or {}).get("files", {})
        for i in range(n):
            rec = files.get(str(i))
            image = self._read_image(key, rec, out) if rec else None
            if image is None:
                out.missing.append(i)
            else:
                out.images[i] = image
        return out

    def _read_entry(self, key: str, out: Lookup) -> dict | None:
        path = self.entry_path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_bytes())
            if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
                raise ValueError("not an entry record")
        except ValueError as err:
            self._problem(CacheCorruptError, f"{path}: unreadable cache entry ({err})", out)
            return None
        if entry.get("settings_digest") != self.digest:
            msg = f"{path}: entry made under settings {entry.get('settings_digest')!r}, expected {self.digest!r}"
            self._problem(CacheMismatchError, msg, out)
            return None
        return entry

    def _read_image(self, key: str, rec: Mapping[str, str], out: Lookup):
        path = self.dir / "images" / key[:2] / rec["name"]
        try:
            data = path.read_bytes()
        except OSError as err:
            return self._problem(CacheCorruptError, f"{path}: cached view missing ({err.strerror})", out)
        got = sha256_bytes(data)
        if got != rec["sha256"]:
            msg = f"{path}: cached view corrupt (sha256 {got[:12]}..., manifest says {rec['sha256'][:12]}...)"
            return self._problem(CacheCorruptError, msg, out)
        try:
            return decode_image(data)
        except Exception as err:  # PIL raises several types on bad data
            return self._problem(CacheCorruptError, f"{path}: cached view not decodable ({err})", out)

    def _problem(self, kind: type[CacheError], msg: str, out: Lookup) -> None:
        if self.on_mismatch == "raise":
            raise kind(f"{msg}; set strategy.diffusion.on_mismatch=regenerate to regenerate it")
        out.problems.append(msg)
        return None

    # ----------------------------------------------------------------- writes
    def writer(self, key: str, *, timeout_s: float | None = None, stale_s: float | None = None):
        """Context manager holding the writer lock of source ``key`` (one writer per key across processes).

        Use: ``load`` -> on a miss ``with cache.writer(key):`` ``load`` again, generate what is still missing,
        ``store``. ``timeout_s`` defaults to ``lock_timeout_s``; ``stale_s`` is unused (see ``file_lock``).

        Raises:
            CacheError: the lock is still held by another writer after ``timeout_s`` (names the lock file).
        """
        return self._lock(key, timeout_s, stale_s)

    def _lock(self, name: str, timeout_s: float | None = None, stale_s: float | None = None):
        timeout_s = self.lock_timeout_s if timeout_s is None else timeout_s
        stale_s = self.lock_stale_s if stale_s is None else stale_s
        return file_lock(self.lock_path(name), timeout_s=timeout_s, stale_s=stale_s)

    def suffix_for(self, source: str | None) -> str:
        """File suffix of generated images: the source's suffix (``source`` format) or .jpg / .png."""
        if self.fmt == "jpeg":
            return ".jpg"
        if self.fmt == "png":
            return ".png"
        suffix = Path(source).suffix if source and not source.startswith("<") else ""
        return suffix if suffix.lower() in (*_JPEG_SUFFIXES, ".png") else ".png"

    def store(
        self,
        key: str,
        images: Mapping[int, Any],
        *,
        source: str | None = None,
        label: int | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> dict[int, Any]:
        """Write ``images`` (index -> PIL image) of source ``key``, then its entry (merged with existing files).

        Returns:
            The stored images decoded back from their files (the lossy JPEG round trip the reference applies).
        """
        suffix = self.suffix_for(source)
        fmt = "jpeg" if suffix.lower() in _JPEG_SUFFIXES else "png"
        entry = self._existing_entry(key)  # valid files of this key are kept; bad ones get replaced
        files = dict(entry.get("files", {})) if entry else {}
        decoded = {}
        for i, image in sorted(images.items()):
            data = encode_image(image, fmt, self.jpeg_quality)
            path = self.image_path(key, i, suffix)
            atomic_write(path, data)
            files[str(i)] = {"name": path.name, "sha256": sha256_bytes(data)}
            decoded[i] = decode_image(data)
        record = {
            "key": key, "settings_digest": self.digest, "source": source, "label": label,
            "files": dict(sorted(files.items(), key=lambda kv: int(kv[0]))), "provenance": dict(provenance or {}),
        }  # fmt: skip
        atomic_write(self.entry_path(key), _dumps(record))
        if time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()
        return decoded

    def _existing_entry(self, key: str) -> dict | None:
        try:
            entry = json.loads(self.entry_path(key).read_bytes())
        except (OSError, ValueError):
            return None
        ok = isinstance(entry, dict) and entry.get("settings_digest") == self.digest
        return entry if ok and isinstance(entry.get("files"), dict) else None

    # --------------------------------------------------------------- manifest
    def rebuild_manifest(self) -> dict:
        """The manifest derived from the settings and every readable entry file (unreadable ones are listed)."""
        entries, unreadable = {}, []
        for key in self.keys():
            entry = self._existing_entry(key) or self._existing_entry(key)  # again: replaced while read (NFS)
            if entry is None:
                if self.entry_path(key).exists():  # not one that vanished meanwhile
                    unreadable.append(str(self.entry_path(key)))
                continue
            entries[key] = {k: entry.get(k) for k in ("source", "label", "files", "provenance")}
        n_images = sum(len(e["files"]) for e in entries.values())
        return {
            "format": 1, "digest": self.digest, "settings": self.settings, "n_entries": len(entries),
            "n_images": n_images, "entries": entries, "unreadable_entries": unreadable,
        }  # fmt: skip

    def flush(self) -> dict:
        """Rebuild ``manifest.json`` from the entry files and write it atomically; returns it.

        Flushes of several processes are serialised (``locks/manifest.lock``), so the manifest written last was
        rebuilt last; entry writers do not take this lock.
        """
        with self._lock("manifest"):
            manifest = self.rebuild_manifest()
            atomic_write(self.manifest_path, _dumps(manifest))
        self._last_flush = time.monotonic()
        return manifest

    def verify(self) -> list[str]:
        """Check every entry and image against its recorded sha256; returns the problems found (never raises)."""
        problems: list[str] = []
        saved, self.on_mismatch = self.on_mismatch, "regenerate"
        try:
            for key in self.keys():
                out = Lookup()
                entry = self._read_entry(key, out)
                for rec in (entry or {}).get("files", {}).values():
                    self._read_image(key, rec, out)
                problems.extend(out.problems)
        finally:
            self.on_mismatch = saved
        return problems


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts) or "unreadable settings file"
