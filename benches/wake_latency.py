"""How long one process takes to wake another over a local socket, busy and after a quiet spell.

A relay in the path adds a process to wake per direction. On a small VM a CPU that has gone idle takes far longer
to wake than one that is busy, which is most of what a relay adds to first audio on an idle machine (see the
README's caller-experience section). Each round trip: the parent, pinned to one CPU, sends a byte to a child
pinned to another (or the same) CPU and waits for it back.

Run: `python benches/wake_latency.py [--rounds 300]` (Linux; needs two CPUs for the cross-CPU rows).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time


def round_trips(parent_cpu: int, child_cpu: int, quiet_s: float, rounds: int) -> list[float]:
    """Round trips in µs, each after `quiet_s` of sleep (0: back to back)."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echoing child
        ours.close()
        os.sched_setaffinity(0, {child_cpu})
        while data := theirs.recv(64):
            theirs.send(data)
        os._exit(0)
    theirs.close()
    os.sched_setaffinity(0, {parent_cpu})
    samples = []
    try:
        for _ in range(rounds):
            if quiet_s:
                time.sleep(quiet_s)
            began = time.perf_counter()
            ours.send(b"x")
            ours.recv(64)
            samples.append((time.perf_counter() - began) * 1e6)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pairs = [(cpus[0], cpus[0])] + ([(cpus[0], cpus[1])] if len(cpus) > 1 else [])
    print(f"{'CPUs':<8}{'quiet':>8}{'p50 µs':>10}{'p90 µs':>10}")
    for parent, child in pairs:
        for quiet_s in (0.0, 0.01):
            samples = sorted(round_trips(parent, child, quiet_s, args.rounds))
            p90 = samples[int(len(samples) * 0.9)]
            print(f"{parent}->{child:<5}{quiet_s * 1000:>6.0f}ms{statistics.median(samples):>10.0f}{p90:>10.0f}")


if __name__ == "__main__":
    main()
