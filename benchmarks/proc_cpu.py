"""CPU seconds from Linux /proc, for the benchmarks' "where the time goes" figures:
processes (by pid, their live children, or every process on the machine, other users'
too: /proc/PID/stat is world-readable), threads, and the machine's busy time."""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from pathlib import Path

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal (guest is in user).
IDLE_FIELDS = (3, 4)


def stat_ticks(stat: str, *, children: bool = False) -> int:
    """utime+stime (and cutime+cstime, reaped children, with `children`) from the text of
    /proc/PID/stat. The command name may hold spaces and parentheses: split at the last ')'."""
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of the man page), so utime (14) is fields[11].
    ticks = int(fields[11]) + int(fields[12])
    return ticks + (int(fields[13]) + int(fields[14]) if children else 0)


def machine_ticks(proc_stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the text of /proc/stat."""
    values = [int(v) for v in proc_stat.splitlines()[0].split()[1:9]]
    idle = sum(values[i] for i in IDLE_FIELDS)
    return sum(values) - idle, sum(values)


def cpu_seconds(path: Path, *, children: bool = False) -> float | None:
    """CPU seconds of a process or thread by its stat file; None once it is gone."""
    try:
        return stat_ticks(path.read_text(), children=children) / CLOCK_TICK
    except (OSError, ValueError, IndexError):
        return None


def process_cpu(pid: int) -> float | None:
    return cpu_seconds(PROC / str(pid) / "stat")


def thread_cpu(tid: int | None) -> float:
    return (cpu_seconds(PROC / "self" / "task" / str(tid) / "stat") or 0.0) if tid else 0.0


def stat_comm(stat: str) -> str:
    """The command name (/proc/PID/comm) from the text of /proc/PID/stat."""
    return stat[stat.index("(") + 1 : stat.rindex(")")]


def all_processes() -> dict[int, tuple[str, float, float]]:
    """pid -> (command, CPU seconds, CPU seconds with reaped children) of every process.
    Other users' processes too (PostgreSQL's): /proc/PID/stat is world-readable."""
    found = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            own, tree = stat_ticks(stat), stat_ticks(stat, children=True)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        found[int(entry.name)] = (stat_comm(stat), own / CLOCK_TICK, tree / CLOCK_TICK)
    return found


def postgres_cpu(processes: dict[int, tuple[str, float, float]]) -> dict[int, float]:
    """CPU seconds of every `postgres` process, reaped children included: a backend that
    exits inside the window lands in the postmaster's cutime, so the delta of the sum
    still holds it."""
    return {pid: tree for pid, (comm, _, tree) in processes.items() if comm == "postgres"}


def other_processes(
    first: dict[int, tuple[str, float, float]],
    last: dict[int, tuple[str, float, float]],
    known: set[int],
) -> tuple[float, dict[str, float]]:
    """CPU in the window of the processes outside the run (not `known`, not PostgreSQL),
    to explain the gap to the machine's total: (the total, own CPU by command name, the
    busiest first). The total is the delta of the sum with reaped children, as for
    PostgreSQL, so processes born and reaped inside the window count through their
    parent; the names list only the processes alive at the end."""

    def outside(pid: int, comm: str) -> bool:
        return pid not in known and comm != "postgres"

    total = sum(tree for pid, (comm, _, tree) in last.items() if outside(pid, comm))
    total -= sum(tree for pid, (comm, _, tree) in first.items() if outside(pid, comm))
    by_comm: dict[str, float] = defaultdict(float)
    for pid, (comm, own, _) in last.items():
        if outside(pid, comm):
            before = first.get(pid)
            by_comm[comm] += own - (before[1] if before and before[0] == comm else 0.0)
    return total, dict(sorted(by_comm.items(), key=lambda kv: -kv[1]))


def machine_cpu() -> tuple[float, float]:
    busy, total = machine_ticks((PROC / "stat").read_text())
    return busy / CLOCK_TICK, total / CLOCK_TICK


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its children still running (0 for what is gone)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        children = PROC / str(pid) / "task" / str(pid) / "children"
        pids += [int(p) for p in children.read_text().split()]
    return sum(process_cpu(p) or 0.0 for p in pids)
