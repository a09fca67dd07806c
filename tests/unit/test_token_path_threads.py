"""bench/token_path_threads.py: per-thread CPU from /proc, named by Python's thread names from py-spy's dump."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from token_path_threads import (by_thread, line, parse_stat, process_label, system_cpu, thread_cpu,  # noqa: E402
                                thread_names)

DUMP = '''Process 19254: ray::ServeReplica:tokenpath:router
Thread 19254 (idle): "MainThread"
    Worker.main_loop (ray/_private/worker.py:1069)
Thread 19312 (active): "Thread-1 (_run_user_code_event_loop)"
    UserCallableWrapper.__init__.<locals>._run_user_code_event_loop (ray/serve/_private/replica.py:3746)
'''


def test_py_spy_thread_lines_name_native_thread_ids():
    assert thread_names(DUMP) == {19254: "MainThread", 19312: "Thread-1 (_run_user_code_event_loop)"}


def test_stat_lines_with_spaces_and_parentheses_in_the_name():
    ticks = os.sysconf("SC_CLK_TCK")
    stat = f"42 (ray::IDLE (x) y) S 1 2 3 4 5 6 7 8 9 10 {3 * ticks} {ticks} 0 0"
    assert parse_stat(stat) == ("ray::IDLE (x) y", 4.0)


def test_cpu_is_attributed_to_the_thread_that_spent_it():
    def spin():
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass

    done, keep = threading.Event(), threading.Event()
    live = threading.Thread(target=lambda: (spin(), done.set(), keep.wait(5)), name="live-spinner")
    before = thread_cpu(os.getpid())
    live.start()
    assert done.wait(10)
    after = thread_cpu(os.getpid())
    keep.set()
    live.join()
    spent = by_thread(before, after, {live.native_id: "live-spinner"})
    assert spent["live-spinner"] >= 0.2
    assert spent["live-spinner"] == max(spent.values())
    assert line("x", spent, 1.0, "s").startswith("x: ") and "live-spinner=" in line("x", spent, 1.0, "s")


def test_ray_processes_are_named_by_title_script_or_program():
    assert process_label(["ray::ServeController", "", ""]) == "ray::ServeController"
    assert process_label(["/venv/bin/python", "-u", "/venv/lib/ray/dashboard/agent.py", "--node-ip=1"]) == "agent.py"
    assert process_label(["/venv/lib/ray/core/src/ray/gcs/gcs_server", "--port=1"]) == "gcs_server"
    assert process_label([]) == "?"


def test_system_cpu_counts_children_by_name_except_the_excluded_and_theirs(tmp_path):
    import subprocess

    spinner = tmp_path / "spinner.py"
    spinner.write_text("import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end:\n    pass\n"
                       "time.sleep(30)\n")
    parent = tmp_path / "parent.py"
    parent.write_text(f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(spinner)!r}])\n"
                      "time.sleep(30)\n")
    counted = subprocess.Popen([sys.executable, str(spinner)])
    excluded = subprocess.Popen([sys.executable, str(parent)], start_new_session=True)  # killed with its child
    try:
        time.sleep(1.5)
        spent = system_cpu({excluded.pid})
        assert 0.25 <= spent["spinner.py"] < 0.6  # the one counted spinner, not the excluded parent's child
        assert "parent.py" not in spent
    finally:
        counted.kill()
        os.killpg(excluded.pid, signal.SIGKILL)
        counted.wait()
        excluded.wait()
