"""Claims on run identities, owners and heartbeats: no identity runs twice, no run stays RUNNING after its process died.

A job *claims* its identity by creating its RUNNING run (tagged with the identity, its owner and a heartbeat) and then
looking at every other RUNNING run of that identity:

- a run whose owner process is gone (same host: the pid is dead or was reused) or whose heartbeat is older than the
  claim timeout is **dead**: it is ended KILLED (``quantfid.ended_by`` says by whom) and does not count;
- among the live claims the oldest (start time, then run id) wins; a job that is not the winner gives its claim up
  (its run is deleted) and skips the identity. Two claims created in the same millisecond both back off and retry
  once, so two sweeps never both run one identity.

MLflow has no atomic "create if absent", so "create, then look" is what makes the claim safe: whichever of two
racing jobs looks last sees both claims, and both apply the same order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantfid.api.schema import TAG_ENDED_BY, TAG_HEARTBEAT, TAG_IDENTITY, TAG_OWNER

log = logging.getLogger(__name__)

#: A RUNNING run whose heartbeat is older than this is dead (its machine died or lost the store). Jobs beat every
#: quarter of it.
DEFAULT_CLAIM_TIMEOUT_S = 600.0


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat[stat.rindex(")") + 2 :].split()[19]


def owner_id(pid: int | None = None) -> str:
    """``host:pid:start`` of this process (or ``pid``)."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host (its pid alive with the same start time); None when it cannot be told
    (another host, or no owner tag): then only the heartbeat says."""
    if not owner:
        return None
    host, _, rest = owner.partition(":")
    pid_s, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_s.isdigit():
        return None
    pid = int(pid_s)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _process_start(pid) == start


def is_dead(run: Any, timeout_s: float, now: float | None = None) -> bool:
    """A RUNNING run nobody is running any more: its owner process is gone, or its heartbeat is too old."""
    tags = run.data.tags
    alive = owner_alive(tags.get(TAG_OWNER))
    if alive is not None:
        return not alive
    beat = float(tags.get(TAG_HEARTBEAT) or (run.info.start_time or 0) / 1000.0)
    return (now or time.time()) - beat > timeout_s


def end_dead(client: Any, runs: Iterable[Any], timeout_s: float, by: str) -> list[str]:
    """End every dead RUNNING run of ``runs`` KILLED; returns their ids."""
    ended = []
    for run in runs:
        if run.info.status == "RUNNING" and is_dead(run, timeout_s):
            with contextlib.suppress(Exception):  # another process may end it at the same moment
                client.set_tag(run.info.run_id, TAG_ENDED_BY, by)
                client.set_terminated(run.info.run_id, "KILLED")
                ended.append(run.info.run_id)
                log.warning("run %s (%s) was left RUNNING by a dead process: marked KILLED", run.info.run_id, by)
    return ended


def running_with_identity(client: Any, experiment_id: str, identity: str) -> list[Any]:
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_IDENTITY}` = '{identity}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )


@dataclass(frozen=True)
class ClaimResult:
    won: bool
    holder: str | None = None  # the run that holds (or FINISHED) the identity when we lost
    tie: bool = False  # another live claim started in the same millisecond: back off and retry
    taken_over: tuple[str, ...] = ()  # dead claims ended KILLED on the way


def settle_claim(client: Any, experiment_id: str, identity: str, my_run_id: str, timeout_s: float) -> ClaimResult:
    """After creating ``my_run_id`` (RUNNING, tagged with ``identity``): decide whether this job may run it.

    Dead claims are ended KILLED; the oldest live claim wins. Ties (same start millisecond) are lost by both: the
    caller retries after a random pause.
    """
    finished = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_IDENTITY}` = '{identity}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    if finished:  # someone finished it between our first look and our claim
        return ClaimResult(False, finished[0].info.run_id)
    runs = running_with_identity(client, experiment_id, identity)
    others = [r for r in runs if r.info.run_id != my_run_id]
    taken = tuple(end_dead(client, others, timeout_s, f"claim taken over by run {my_run_id}"))
    live = [r for r in others if r.info.run_id not in taken]
    mine = next((r for r in runs if r.info.run_id == my_run_id), None)
    my_start = mine.info.start_time if mine is not None else time.time() * 1000
    earlier = [r for r in live if (r.info.start_time or 0) < my_start]
    if earlier:
        holder = min(earlier, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        return ClaimResult(False, holder.info.run_id, taken_over=taken)
    same = [r for r in live if (r.info.start_time or 0) == my_start]
    if same:
        return ClaimResult(False, same[0].info.run_id, tie=True, taken_over=taken)
    return ClaimResult(True, None, taken_over=taken)


def backoff() -> None:
    time.sleep(random.uniform(0.05, 0.5))


class Heartbeat:
    """A daemon thread that tags ``run_ids`` with the time every ``interval_s`` (its own MLflow client)."""

    def __init__(self, tracking_uri: str, run_ids: list[str], interval_s: float) -> None:
        self.run_ids = list(run_ids)
        self.interval_s = max(interval_s, 0.5)
        self._stop = threading.Event()
        self._uri = tracking_uri
        self._thread = threading.Thread(target=self._loop, name="quantfid-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _loop(self) -> None:
        import mlflow

        client = mlflow.MlflowClient(self._uri)
        while not self._stop.wait(self.interval_s):
            for run_id in self.run_ids:
                try:
                    client.set_tag(run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
                except Exception as err:  # a busy store must not kill the job; a missed beat is harmless
                    log.debug("heartbeat of %s not written: %s", run_id, err)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def owner_tags() -> dict[str, str]:
    return {TAG_OWNER: owner_id(), TAG_HEARTBEAT: f"{time.time():.0f}"}
