"""Projection from many Python threads (GIL released), and after os.fork()."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np

from conftest import FEATURES, rows


def test_four_threads_give_identical_results(core_projector):
    x = rows(2000, FEATURES, seed=20)
    want = core_projector.project(x).tobytes()
    results = [None] * 4

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = core_projector.project(x).tobytes()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [want] * 4


def test_another_thread_runs_while_one_projects(core_projector):
    """With a 100 s switch interval the interpreter never takes the GIL from a running thread:
    the main thread can append only if `project` releases it while computing."""
    x = rows(20000, FEATURES, seed=21)
    ticks: list = []
    marks = {}

    def project() -> None:
        marks["enter"] = len(ticks)
        core_projector.project(x, form="full", dtype="f32")
        marks["exit"] = len(ticks)

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        t = threading.Thread(target=project)
        t.start()
        while t.is_alive():
            ticks.append(1)
            time.sleep(0.0005)  # lets the other thread take the GIL
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert marks["exit"] > marks["enter"], "the main thread never ran during project()"


def test_projection_in_a_forked_child(core_projector):
    x = rows(500, FEATURES, seed=22)
    want = core_projector.project(x).tobytes()  # the parent's backend (and its pool) exist now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: project, report, exit without running the parent's cleanup
        code = 1
        try:
            os.close(read_end)
            same = core_projector.project(x).tobytes() == want
            os.write(write_end, b"same" if same else b"different")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child did not finish projecting (a thread pool from before the fork?)")
    answer = os.read(read_end, 64)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == b"same"
    assert core_projector.project(x).tobytes() == want  # the parent still works
