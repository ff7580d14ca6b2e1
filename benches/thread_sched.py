#!/usr/bin/env python3
"""Where a process's threads spend their time: runs a command and samples every thread's
/proc/PID/task/TID/schedstat (time on a CPU, time runnable but waiting for one, timeslices) and
status (voluntary / involuntary context switches) every few milliseconds; prints the last values
seen per thread, in creation order. Used to find out why `isoclip project` slows down more than
its peers when other work shares the cores (see benches/peers.py --load).

    python3 benches/thread_sched.py [--load N] -- target/release/isoclip project ...

For `isoclip project` on one shard the threads are, in creation order: main (hands chunks
over, waits on the pool), writer, reader, then the compute pool's threads.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import BackgroundLoad  # noqa: E402


def sample(pid, seen):
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, wait_ns, slices = (int(v) for v in f.read().split())
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                st = dict(line.split(":", 1) for line in f if ":" in line)
        except (OSError, ValueError):
            continue
        seen[int(tid)] = (
            st["Name"].strip(),
            run_ns / 1e9,
            wait_ns / 1e9,
            slices,
            int(st["voluntary_ctxt_switches"]),
            int(st["nonvoluntary_ctxt_switches"]),
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", type=int, default=0)
    ap.add_argument("--every", type=float, default=0.005, help="seconds between samples")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    seen = {}
    with BackgroundLoad(a.load):
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        while p.poll() is None:
            sample(p.pid, seen)
            time.sleep(a.every)
        wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"exit code {p.returncode}")
    print(f"wall {wall:.3f} s, load {a.load}: {' '.join(cmd)}")
    print(f"{'tid':>8} {'name':<16}{'on CPU s':>10}{'runnable-waiting s':>20}{'slices':>9}{'vol cs':>9}{'invol cs':>9}")
    tot = [0.0, 0.0, 0, 0, 0]
    for tid in sorted(seen):
        name, run_s, wait_s, slices, vcs, ivcs = seen[tid]
        print(f"{tid:>8} {name:<16}{run_s:>10.3f}{wait_s:>20.3f}{slices:>9}{vcs:>9}{ivcs:>9}")
        for i, v in enumerate((run_s, wait_s, slices, vcs, ivcs)):
            tot[i] += v
    print(f"{'all':>8} {'':<16}{tot[0]:>10.3f}{tot[1]:>20.3f}{tot[2]:>9}{tot[3]:>9}{tot[4]:>9}")


if __name__ == "__main__":
    main()
