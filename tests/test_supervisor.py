"""Supervised children (shared/supervisor.py): they die with their parent, even on SIGKILL, and come back
when they crash; a port held by a leftover process is reported with its pid."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import textwrap

import psutil
import pytest

from shared.supervisor import Backoff, Supervisor, describe_holder, port_holder, spawn, terminate

# A parent that spawns a python child, which spawns a sleeping grandchild (like run_embedded -> worker ->
# llama.cpp server), prints both pids and waits to be killed.
PARENT = textwrap.dedent("""
    import asyncio, sys
    from shared.supervisor import spawn

    CHILD = '''
    import asyncio, sys
    from shared.supervisor import spawn
    async def main():
        grandchild = await spawn("sleep", "300")
        print(grandchild.pid, flush=True)
        await asyncio.sleep(300)
    asyncio.run(main())
    '''

    async def main():
        child = await spawn(sys.executable, "-c", CHILD, stdout=asyncio.subprocess.PIPE)
        grandchild = int(await child.stdout.readline())
        print(child.pid, grandchild, flush=True)
        await asyncio.sleep(300)

    asyncio.run(main())
""")


async def _gone(pid: int, within_s: float = 20.0) -> bool:
    """True once ``pid`` no longer runs (a zombie counts as gone); polls up to a generous bound."""
    for _ in range(int(within_s / 0.1)):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_sigkilled_parent_leaves_no_children():
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE)
    line = await asyncio.wait_for(parent.stdout.readline(), 60)
    child, grandchild = map(int, line.split())
    assert psutil.pid_exists(child) and psutil.pid_exists(grandchild)
    parent.send_signal(signal.SIGKILL)
    await parent.wait()
    assert await _gone(child), "the child outlived its SIGKILLed parent"
    assert await _gone(grandchild), "the grandchild outlived its SIGKILLed parent"


async def test_supervisor_restarts_a_crashed_child_and_counts_it():
    events: list[tuple[str, dict]] = []
    sup = Supervisor("sleeper", lambda: spawn("sleep", "300"), backoff=Backoff(initial=0.05),
                     on_event=lambda state, info: events.append((state, info)))
    await sup.start()
    try:
        first = sup.pid
        assert sup.available and sup.restarts == 0
        for n in (1, 2):
            pid = sup.pid
            psutil.Process(pid).kill()
            for _ in range(200):
                if sup.restarts == n and sup.available:
                    break
                await asyncio.sleep(0.05)
            assert sup.restarts == n and sup.available and sup.pid not in (None, pid, first)
        states = [s for s, _ in events]
        assert states == ["starting", "up", "restarting", "up", "restarting", "up"]
        assert events[2][1]["code"] == -signal.SIGKILL
    finally:
        last = sup.pid
        await sup.stop()
    assert sup.status() == {"state": "stopped", "restarts": 2, "pid": None}
    assert await _gone(last)


async def test_failed_restarts_are_retried_and_reported_down():
    attempts = 0

    async def flaky():
        nonlocal attempts
        attempts += 1
        if attempts in (2, 3):
            raise RuntimeError("model missing")
        return await spawn("sleep", "300")

    states: list[str] = []
    sup = Supervisor("flaky", flaky, backoff=Backoff(initial=0.05, maximum=0.1),
                     on_event=lambda state, _info: states.append(state))
    await sup.start()
    try:
        psutil.Process(sup.pid).kill()
        for _ in range(200):
            if attempts == 4 and sup.available:
                break
            await asyncio.sleep(0.05)
        assert sup.available and sup.restarts == 1
        assert states == ["starting", "up", "restarting", "down", "down", "up"]
    finally:
        await sup.stop()


def test_backoff_doubles_up_to_the_maximum_and_resets_after_a_stable_run():
    b = Backoff(initial=0.5, maximum=3.0, reset_after_s=60)
    assert [b.delay(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.delay(120.0) == 0.5


async def test_port_holder_names_the_pid():
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
        "print(s.getsockname()[1], flush=True); time.sleep(300)", stdout=asyncio.subprocess.PIPE)
    try:
        port = int(await asyncio.wait_for(holder.stdout.readline(), 30))
        assert port_holder(port).pid == holder.pid
        assert describe_holder(port).startswith(f"pid {holder.pid} (")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            assert port_holder(s.getsockname()[1]) is None  # bound but not listening
    finally:
        await terminate(holder, 2.0)
