"""The process-wide collector settings of stream jobs and serving workers."""

from __future__ import annotations

import subprocess
import sys

from streams.runtime import GC_THRESHOLDS


def test_tune_gc_freezes_what_is_loaded_once_and_raises_the_thresholds() -> None:
    # gc settings are process-wide: a child process keeps the test session's own untouched.
    code = (
        "import gc, streams.runtime as r\n"
        "before = gc.get_freeze_count()\n"
        "r.tune_gc(); frozen = gc.get_freeze_count(); junk = [[] for _ in range(1000)]\n"
        "r.tune_gc()\n"
        "print(before, frozen, gc.get_freeze_count() == frozen, *gc.get_threshold())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, frozen, once, *thresholds = out.stdout.split()
    assert int(before) == 0
    assert int(frozen) > 1_000  # the imported modules' objects
    assert once == "True"  # a second call freezes nothing more
    assert tuple(int(t) for t in thresholds) == GC_THRESHOLDS
