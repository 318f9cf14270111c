"""Claims on run identities against a real sqlite MLflow store: dead owners and stale heartbeats are taken over, live
claims are respected, the oldest claim wins, a FINISHED identity is never claimed again."""

from __future__ import annotations

import subprocess
import sys
import time

import mlflow
import pytest

from quantfid.api import schema as S
from quantfid.tracking import claims


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (each test uses its own identities): MLflow's schema migrations cost seconds."""
    tmp_path = tmp_path_factory.mktemp("claims")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("claims", artifact_location=str(tmp_path / "artifacts"))
    return client, exp


def _claim(client, exp, identity: str, owner: str | None = None, heartbeat: float | None = None) -> str:
    tags = {S.TAG_IDENTITY: identity, **claims.owner_tags()}
    if owner is not None:
        tags[S.TAG_OWNER] = owner
    if heartbeat is not None:
        tags[S.TAG_HEARTBEAT] = f"{heartbeat:.0f}"
    return client.create_run(exp, tags=tags).info.run_id


def _dead_owner() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return claims.owner_id(proc.pid).rsplit(":", 1)[0] + ":12345"  # a pid that exited (and a start that differs)


def test_the_oldest_live_claim_wins_and_the_later_one_yields(store):
    client, exp = store
    first = _claim(client, exp, "id-a")
    time.sleep(0.01)
    second = _claim(client, exp, "id-a")
    assert claims.settle_claim(client, exp, "id-a", first, 600).won
    lost = claims.settle_claim(client, exp, "id-a", second, 600)
    assert not lost.won and lost.holder == first and not lost.tie


def test_a_claim_whose_owner_died_is_ended_killed_and_taken_over(store):
    client, exp = store
    dead = _claim(client, exp, "id-b", owner=_dead_owner())
    time.sleep(0.01)
    mine = _claim(client, exp, "id-b")
    result = claims.settle_claim(client, exp, "id-b", mine, 600)
    assert result.won and result.taken_over == (dead,)
    run = client.get_run(dead)
    assert run.info.status == "KILLED" and mine in run.data.tags[S.TAG_ENDED_BY]


def test_another_hosts_claim_is_judged_by_its_heartbeat(store):
    client, exp = store
    stale = _claim(client, exp, "id-c", owner="other-host:1:1", heartbeat=time.time() - 120)
    fresh = _claim(client, exp, "id-d", owner="other-host:2:1", heartbeat=time.time())
    time.sleep(0.01)
    mine_c, mine_d = _claim(client, exp, "id-c"), _claim(client, exp, "id-d")
    assert claims.settle_claim(client, exp, "id-c", mine_c, timeout_s=60).taken_over == (stale,)
    kept = claims.settle_claim(client, exp, "id-d", mine_d, timeout_s=60)
    assert not kept.won and kept.holder == fresh and client.get_run(fresh).info.status == "RUNNING"


def test_a_finished_identity_is_not_claimed_again(store):
    client, exp = store
    done = _claim(client, exp, "id-e")
    client.set_terminated(done, "FINISHED")
    mine = _claim(client, exp, "id-e")
    result = claims.settle_claim(client, exp, "id-e", mine, 600)
    assert not result.won and result.holder == done


def test_the_heartbeat_thread_updates_the_tag(store):
    client, exp = store
    run = _claim(client, exp, "id-f", heartbeat=0)
    beat = claims.Heartbeat(client.tracking_uri, [run], interval_s=0.5).start()
    try:
        deadline = time.monotonic() + 20
        while float(client.get_run(run).data.tags[S.TAG_HEARTBEAT]) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        beat.stop()
    assert float(client.get_run(run).data.tags[S.TAG_HEARTBEAT]) > time.time() - 60
    assert claims.owner_alive(claims.owner_id()) is True and claims.owner_alive(_dead_owner()) is False
