"""The stat-keyed hash memo: reruns hash nothing, stale entries are never trusted, kill -9 leaves it whole."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import featlab.data.dataset as data_module
from featlab.data.dataset import scan_dataset
from featlab.data.hashmemo import HashMemo


@pytest.fixture()
def counted_hashes(monkeypatch):
    calls = []
    original = data_module.sha256_file

    def counting(path):
        calls.append(str(path))
        return original(path)

    monkeypatch.setattr(data_module, "sha256_file", counting)
    return calls


def test_a_rerun_over_unchanged_files_hashes_nothing(synth_root, tmp_path, counted_hashes):
    memo_file = tmp_path / "memo.sqlite"
    first = scan_dataset(synth_root, check_images=False, memo=HashMemo(memo_file))
    assert len(counted_hashes) == len(first) == 56
    counted_hashes.clear()
    again = scan_dataset(synth_root, check_images=False, memo=HashMemo(memo_file))  # a new process's memo
    assert counted_hashes == []
    assert again.equals(first)
    assert again.equals(scan_dataset(synth_root, check_images=False))  # same as without a memo


def test_changed_files_are_hashed_again_even_with_their_old_size_and_mtime(synth_root, tmp_path, counted_hashes):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    memo_file = tmp_path / "memo.sqlite"
    before = scan_dataset(root, check_images=False, memo=HashMemo(memo_file)).set_index("path")
    victim = sorted((root / "train" / "real").iterdir())[0]
    stat = victim.stat()
    content = bytearray(victim.read_bytes())
    content[-3] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(content))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even the old mtime: ctime still moves
    grown = sorted((root / "train" / "fake").iterdir())[0]
    grown.write_bytes(grown.read_bytes() + b"\0")
    counted_hashes.clear()
    after = scan_dataset(root, check_images=False, memo=HashMemo(memo_file)).set_index("path")
    assert sorted(counted_hashes) == sorted([str(victim), str(grown)])
    assert after.loc[str(victim.resolve()), "sha256"] != before.loc[str(victim.resolve()), "sha256"]
    assert after.loc[str(grown.resolve()), "sha256"] != before.loc[str(grown.resolve()), "sha256"]


def test_a_kill_during_commit_leaves_the_memo_before_or_after_never_half(tmp_path):
    memo_file = tmp_path / "memo.sqlite"
    script = (
        "import sys; from featlab.data.hashmemo import HashMemo\n"
        "memo = HashMemo(sys.argv[1])\n"
        "for i in range(300_000): memo.remember(f'/x/{i}', (i, i, i, i), f'{i:064x}')\n"
        "print('committing', flush=True)\n"
        "memo.commit()\n"
        "print('done', flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(memo_file)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "committing"
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    count = sqlite3.connect(memo_file).execute("SELECT COUNT(*) FROM hashes").fetchone()[0]
    assert count in (0, 300_000)
    memo = HashMemo(memo_file).load()
    assert memo.lookup("/x/7", (7, 7, 7, 7)) in (None, f"{7:064x}")
    assert memo.lookup("/x/7", (7, 7, 7, 8)) is None  # another inode: never trusted
