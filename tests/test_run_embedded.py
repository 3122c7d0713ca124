"""scripts/run_embedded.py as a process manager: the real embedded stack on its own ports; a killed
component comes back by itself (and the restart is printed); a port held by a leftover process is
reported with its pid before anything starts."""

from __future__ import annotations

import asyncio
import sys

import psutil
import pytest

from scripts.embedded_harness import isolated_topology, stack_processes
from scripts.run_embedded import EmbeddedStack
from shared.supervisor import terminate


async def _until(predicate, within_s: float) -> bool:
    for _ in range(int(within_s / 0.2)):
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return predicate()


async def test_a_port_held_by_a_leftover_process_is_reported_with_its_pid(tmp_path):
    config = isolated_topology(tmp_path)
    stack = EmbeddedStack(str(config), tmp_path / "embedded")
    edge_port = stack.site.edges[0].port
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{edge_port})); s.listen();"
        "print('ok', flush=True); time.sleep(300)", stdout=asyncio.subprocess.PIPE)
    try:
        await asyncio.wait_for(holder.stdout.readline(), 30)
        with pytest.raises(RuntimeError) as err:
            await stack.start()
        assert f"port {edge_port} (edge) is held by pid {holder.pid}" in str(err.value)
        assert stack.components == {}  # nothing was started
    finally:
        await terminate(holder, 2.0)


async def test_killed_components_are_restarted_and_printed(tmp_path, capsys):
    stack = EmbeddedStack(str(isolated_topology(tmp_path)), tmp_path / "embedded", worker_args=("--no-cache",))
    try:
        await stack.start()
        leaf, worker = stack.components["leaf"], stack.components["worker worker-1"]
        procs = stack_processes(stack)
        backend = procs["worker worker-1/llama.cpp"]
        for sup in (leaf, worker):
            old = sup.pid
            psutil.Process(old).kill()
            assert await _until(lambda: sup.restarts == 1 and sup.available, 240.0), sup.status()
            assert sup.pid != old
        # the killed worker's own llama.cpp server died with it (no orphan holding its port)
        assert await _until(lambda: not backend.is_running() or backend.status() == psutil.STATUS_ZOMBIE, 20.0)
        assert "llama.cpp" in " ".join(stack_processes(stack))  # the new worker launched a new one
        err = capsys.readouterr().err
        assert "[run] leaf-local-site exited with code -9; restart 1" in err
        assert "[run] worker worker-1 exited with code -9; restart 1" in err
        assert stack.components["edge"].restarts == 0 and stack.components["hub"].restarts == 0
    finally:
        await stack.stop()
    assert all(s.state == "stopped" for s in stack.components.values())
