"""The fault-injection hook the pipeline tests hand to ease.pipeline (EASE_FAULT_HOOK=fault_hook:hook,
with tests/ on PYTHONPATH; the events are listed in ease.pipeline's docstring).

Every call appends one JSON line {"event", "run_id", "pid", "group"} to $FAULT_LOG (group: the
process group, i.e. which pipeline; each test starts a pipeline in a session of its own). Then,
as the environment asks:

- FAULT_KILL_AT=N: at the N-th line of the log, SIGKILL the caller's process group (the pipeline,
  its Dask workers and their runs die at once, as in a crash);
- FAULT_KILL_WHEN="event run_id;event run_id": the same, once every listed event is in the log;
- FAULT_KILL_GROUP_WHEN (same form) and FAULT_KILL_GROUP=PGID: SIGKILL that other process group
  instead (a `dask worker` started by the test: its nannies, workers and their runs);
- FAULT_BARRIER="event:N": at that event, wait until N different pipelines have logged it (so that
  N pipelines are known to be at work at the same time).

Before a kill, a line {"event": "kill", "pids": [...]} lists the processes it is meant for and
the notebook kernels below them (they run in sessions of their own and must exit by themselves).
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil

BARRIER_WAIT_S = 120
TESTS = Path(__file__).resolve().parent


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _append(entry: dict) -> int:
    """Append one line to the log; the number of lines it has now."""
    fd = os.open(os.environ["FAULT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())  # one write: lines of processes never interleave
    finally:
        os.close(fd)
    return len(read_log(os.environ["FAULT_LOG"]))


def _family(leader: int) -> list[psutil.Process]:
    try:
        return psutil.Process(leader).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _all_seen(spec: str, log: list[dict]) -> bool:
    wanted = [tuple(item.split()) for item in spec.split(";") if item.strip()]
    seen = {(entry["event"], entry["run_id"]) for entry in log}
    return all(item in seen for item in wanted)


def hook(event: str, run_id: str) -> None:
    group = os.getpgrp()
    lines = _append({"event": event, "run_id": run_id, "pid": os.getpid(), "group": group})
    barrier = os.environ.get("FAULT_BARRIER", "")
    if barrier.startswith(f"{event}:"):
        wanted, deadline = int(barrier.split(":")[1]), time.monotonic() + BARRIER_WAIT_S
        while len({e["group"] for e in read_log(os.environ["FAULT_LOG"]) if e["event"] == event}) < wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"barrier {barrier}: the other pipelines never got there")
            time.sleep(0.1)
    log = read_log(os.environ["FAULT_LOG"])
    kill_at, kill_when = os.environ.get("FAULT_KILL_AT"), os.environ.get("FAULT_KILL_WHEN")
    if (kill_at and lines >= int(kill_at)) or (kill_when and _all_seen(kill_when, log)):
        _kill(group, run_id)
    group_when = os.environ.get("FAULT_KILL_GROUP_WHEN")
    if group_when and _all_seen(group_when, log) and not any(e["event"] == "kill" for e in log):
        _kill(int(os.environ["FAULT_KILL_GROUP"]), run_id)


def _kill(group: int, run_id: str) -> None:
    """SIGKILL a process group (its leader's pid is the group's id), its processes logged first."""
    family = [psutil.Process(group), *_family(group)]
    _append({"event": "kill", "run_id": run_id, "pid": os.getpid(), "group": os.getpgrp(),
             "pids": [p.pid for p in family]})
    os.killpg(group, signal.SIGKILL)


# --- for the tests --------------------------------------------------------------------------
def hooked_env(log: Path, **rules: str) -> dict[str, str]:
    """The environment of a pipeline with tests/fault_hook.py as its fault-injection hook. Its temporary
    folders (a killed worker leaves its run's behind) go beside the log, into the test's own folder."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    tmp = log.parent / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": path, "TMPDIR": str(tmp), "EASE_FAULT_HOOK": "fault_hook:hook",
            "FAULT_LOG": str(log), **rules}


def wait_for_kernels(log: Path, timeout: float = 30) -> list:
    """The processes the hook killed (or left, kernels run in sessions of their own) that are still
    alive `timeout` seconds later, killed now (the caller asserts there are none)."""
    family = []
    for entry in read_log(log):
        for pid in entry.get("pids", []):
            try:
                family.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for p in alive:
        p.kill()
    return alive
