"""The benchmarks' CPU accounting: /proc parsing and replay's split per role (Linux)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks import proc_cpu, replay

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# utime 250, stime 50, cutime 7, cstime 3; the command name holds a space and a ')'.
STAT = (
    "4242 (my) proc) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 7 3 20 0 3 0"
    " 1400 30000000 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
)
PROC_STAT = "cpu  1000 20 300 5000 80 0 40 5 0 0\ncpu0 500 10 150 2500 40 0 20 3 0 0\n"


def test_stat_ticks_reads_utime_and_stime_past_an_odd_command_name() -> None:
    assert proc_cpu.stat_ticks(STAT) == 300
    assert proc_cpu.stat_ticks(STAT, children=True) == 310
    assert proc_cpu.stat_comm(STAT) == "my) proc"


def test_machine_ticks_leave_idle_and_iowait_out_of_busy() -> None:
    busy, total = proc_cpu.machine_ticks(PROC_STAT)
    assert (busy, total) == (1000 + 20 + 300 + 40 + 5, 6445)


def test_cpu_seconds_of_this_process_and_thread_grow_with_work() -> None:
    me = Path("/proc/self/task") / str(threading.get_native_id()) / "stat"
    before_process = proc_cpu.process_cpu(os.getpid())
    before_thread = proc_cpu.cpu_seconds(me)
    spin_until = time.thread_time() + 0.3
    while time.thread_time() < spin_until:
        pass
    after_process = proc_cpu.process_cpu(os.getpid())
    after_thread = proc_cpu.thread_cpu(threading.get_native_id())
    assert before_process is not None and before_thread is not None and after_process
    assert 0.2 <= after_process - before_process < 5
    assert 0.2 <= after_thread - before_thread < 5
    assert proc_cpu.process_cpu(2**22 + 12345) is None  # beyond pid_max: gone


def test_all_processes_finds_this_one_and_the_machine_is_busy_at_times() -> None:
    processes = proc_cpu.all_processes()
    comm, own, tree = processes[os.getpid()]
    assert comm == Path("/proc/self/comm").read_text().strip()
    assert 0 < own <= tree
    busy, total = proc_cpu.machine_cpu()
    assert 0 < busy < total


def test_postgres_split_by_role_keeps_exited_backends_in_the_total() -> None:
    # 10 is the postmaster; 11 a worker session; 12 exits inside the window (its time then
    # lands in the postmaster's cutime); 13 a session opened inside the window.
    start = {10: 5.0, 11: 1.0, 12: 2.0}
    end = {10: 5.0 + 2.5, 11: 4.0, 13: 0.5}
    roles = {11: "worker_sessions", 13: "rig_sessions"}
    split = replay.postgres_split(start, end, roles)
    assert split["worker_sessions"] == 3.0
    assert split["rig_sessions"] == 0.5
    assert split["postmaster_and_exited"] == 0.5  # 2.5 reaped, less 12's 2.0 before
    assert split["total"] == pytest.approx(4.0)
    assert sum(v for k, v in split.items() if k != "total") == pytest.approx(split["total"])


def test_other_processes_leave_out_the_run_and_postgres() -> None:
    first = {
        1: ("pytest", 1.0, 3.0),
        2: ("hub", 9.0, 9.0),  # the run's own
        3: ("postgres", 1.0, 1.0),
        6: ("bash", 4.0, 4.0),  # reaped by 7 inside the window, 0.5 s more by then
        7: ("init", 0.0, 100.0),
    }
    last = {
        1: ("pytest", 1.5, 5.0),  # +0.5 own, +1.5 from children born and reaped inside
        2: ("hub", 20.0, 20.0),
        3: ("postgres", 4.0, 4.0),
        4: ("python", 0.75, 0.75),  # new inside the window
        5: ("python", 0.25, 0.25),
        7: ("init", 0.0, 104.5),
    }
    total, by_comm = proc_cpu.other_processes(first, last, known={2})
    assert total == pytest.approx(2.0 + 1.0 + 0.5)
    assert by_comm == {"python": 1.0, "pytest": 0.5, "init": 0.0}
