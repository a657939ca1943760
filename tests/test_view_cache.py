"""View cache with several writers (torchrun ranks sharing one folder): per-key writer lock (an OS file lock: one
holder at a time, crashed holders release it, no lock is broken by age), flush."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import threading
import time

import pytest
from ctta.strategies.difftpt.view_cache import CacheError, ViewCache, is_current, sha256_bytes
from PIL import Image

SETTINGS = {"pipeline": "fake", "seed": 0}
KEY = "ab" + "0" * 62
N = 3


def _fake_view(key: str, index: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (int(key[:2], 16), 40 * index, 7))


def _views_once(root, key: str, n: int, generations, barrier, delay_s: float) -> list[str]:
    """``DiffusionViews.images``' protocol: load; on a miss lock, load again, generate what is missing, store."""
    cache = ViewCache(root, SETTINGS)
    barrier.wait()
    found = cache.load(key, n)
    if found.missing:
        with cache.writer(key, timeout_s=60):
            found = cache.load(key, n)
            if found.missing:
                with generations.get_lock():
                    generations.value += 1
                time.sleep(delay_s)  # a slow generator: the other writer waits on the lock meanwhile
                found.images.update(cache.store(key, {i: _fake_view(key, i) for i in found.missing}))
    return [sha256_bytes(found.images[i].tobytes()) for i in range(n)]


def _worker(root, key, n, generations, barrier, results) -> None:
    results.put(_views_once(root, key, n, generations, barrier, delay_s=0.5))


def test_two_processes_generate_a_missing_key_once(tmp_path):
    ctx = mp.get_context("spawn")
    generations, barrier, results = ctx.Value("i", 0), ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), KEY, N, generations, barrier, results)) for _ in "ab"]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert generations.value == 1  # exactly one writer generated the views
    assert got[0] == got[1] and len(got[0]) == N  # both processes see the same stored images
    cache = ViewCache(tmp_path, SETTINGS)
    assert cache.keys() == [KEY] and cache.verify() == []
    assert not any(cache.lock_path(KEY).parent.iterdir())  # every lock released


def test_stale_lock_is_broken_with_a_warning(tmp_path):
    cache = ViewCache(tmp_path, SETTINGS)
    lock = cache.lock_path(KEY)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": 999999, "host": "crashed-node", "time": time.time() - 120}))
    os.utime(lock, (time.time() - 120, time.time() - 120))
    with pytest.warns(UserWarning, match=re.escape(str(lock)) + r".*crashed-node.*presumably crashed"):
        with cache.writer(KEY, timeout_s=5, stale_s=60):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_held_lock_times_out_naming_the_lock_file(tmp_path):
    holder, other = ViewCache(tmp_path, SETTINGS), ViewCache(tmp_path, SETTINGS)
    lock = holder.lock_path(KEY)
    with holder.writer(KEY):
        t0 = time.monotonic()
        with pytest.raises(CacheError, match=re.escape(str(lock)) + r".*delete this lock file"):
            with other.writer(KEY, timeout_s=0.3):
                pass
        assert 0.25 < time.monotonic() - t0 < 5
        assert lock.exists()  # the holder's lock is untouched
    assert not lock.exists()
    with pytest.raises(ValueError), other.writer(KEY):
        raise ValueError("generation failed")
    assert not lock.exists()  # released on exceptions too


def test_waiting_writer_gets_the_lock_when_released(tmp_path):
    holder, other = ViewCache(tmp_path, SETTINGS), ViewCache(tmp_path, SETTINGS)
    order = []

    def wait_then_write():
        with other.writer(KEY, timeout_s=30):
            order.append("b")

    with holder.writer(KEY):
        thread = threading.Thread(target=wait_then_write)
        thread.start()
        time.sleep(0.2)
        order.append("a")
    thread.join(timeout=30)
    assert order == ["a", "b"]


def test_flush_while_other_writers_store(tmp_path):
    reader, writer = ViewCache(tmp_path, SETTINGS), ViewCache(tmp_path, SETTINGS)
    keys = [f"{i:02x}" + "1" * 62 for i in range(12)]
    entries = writer.entry_path(keys[0]).parent
    entries.mkdir(parents=True)
    (entries / f".{keys[0]}.json.123.abcd1234.tmp").write_bytes(b'{"half": ')  # a write in progress elsewhere

    def store_all():
        for k in keys:
            with writer.writer(k):
                writer.store(k, {0: _fake_view(k, 0)})

    thread = threading.Thread(target=store_all)
    thread.start()
    while thread.is_alive():
        manifest = reader.flush()  # never fails while entries appear
        assert manifest["unreadable_entries"] == [] and manifest["n_entries"] <= len(keys)
    thread.join()
    manifest = reader.flush()
    assert sorted(manifest["entries"]) == keys and manifest["n_images"] == len(keys)
    assert json.loads(reader.manifest_path.read_text()) == manifest


def test_a_slow_writer_is_never_broken(tmp_path):
    """The old age-based break let a second writer in while a slow (alive) writer still held the key."""
    holder, other = ViewCache(tmp_path, SETTINGS), ViewCache(tmp_path, SETTINGS)
    lock = holder.lock_path(KEY)
    with holder.writer(KEY):
        os.utime(lock, (time.time() - 3600, time.time() - 3600))  # held for an hour, as it looks
        with pytest.raises(CacheError, match=re.escape(str(lock))):
            with other.writer(KEY, timeout_s=0.3, stale_s=0.1):
                pytest.fail("two writers hold one key")
        assert lock.exists()


def test_a_waiter_on_a_released_lock_file_starts_over(tmp_path):
    """The holder unlinks its lock file before it unlocks; a waiter that had that file open then gets a lock on a
    file the path no longer names, and must not count as holding the key (``is_current``)."""
    import fcntl

    cache = ViewCache(tmp_path, SETTINGS)
    lock = cache.lock_path(KEY)
    with cache.writer(KEY):
        waiter_fd = os.open(lock, os.O_RDWR)  # opened while held, as a waiting writer does
        assert is_current(lock, waiter_fd)
    try:
        fcntl.flock(waiter_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the released file: the lock is free
        assert not is_current(lock, waiter_fd)  # the path is gone: start over
        with cache.writer(KEY, timeout_s=5):  # a new lock file, unaffected by the waiter's lock on the old one
            assert lock.exists() and not is_current(lock, waiter_fd)
    finally:
        os.close(waiter_fd)


def _count_under_lock(root: str, n: int, barrier) -> None:
    cache = ViewCache(root, SETTINGS)
    counter = os.path.join(root, "counter")
    barrier.wait()
    for _ in range(n):
        with cache.writer(KEY, timeout_s=60):
            value = int(open(counter).read())  # read-modify-write: lost updates if two processes hold the key
            time.sleep(0.002)
            with open(counter, "w") as fh:
                fh.write(str(value + 1))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_processes_hold_a_key_one_at_a_time(tmp_path):
    (tmp_path / "counter").write_text("0")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_count_under_lock, args=(str(tmp_path), 20, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert (tmp_path / "counter").read_text() == "60"  # no lost update: never two holders
    assert not ViewCache(tmp_path, SETTINGS).lock_path(KEY).exists()


def _hold_and_crash(root: str, ready) -> None:
    cache = ViewCache(root, SETTINGS)
    with cache.writer(KEY):
        ready.set()
        time.sleep(60)  # killed here, lock held


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_a_crashed_writers_lock_is_taken_over_at_once(tmp_path):
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_and_crash, args=(str(tmp_path), ready))
    proc.start()
    assert ready.wait(60)
    proc.kill()  # SIGKILL: no cleanup, the lock file stays
    proc.join(timeout=30)
    cache = ViewCache(tmp_path, SETTINGS)
    lock = cache.lock_path(KEY)
    assert lock.exists() and json.loads(lock.read_text())["pid"] == proc.pid
    with pytest.warns(UserWarning, match=re.escape(str(lock)) + rf".*pid {proc.pid}.*presumably crashed"):
        with cache.writer(KEY, timeout_s=5):  # default lock_stale_s (30 min) plays no part
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
