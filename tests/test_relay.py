"""The offline shared relay: every row a non-primary rank logs reaches the primary's run file, or a named fallback."""

from __future__ import annotations

import json
import logging
import pickle
import secrets
import threading
import time

import pytest
import wandb
from conftest import leet_records

from wandbflow import relay
from wandbflow.errors import RelayError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def primary(wandb_env):
    run = wandb.init(mode="offline", project="relay", reinit="create_new", id=f"shared-{secrets.token_hex(4)}")
    yield run
    if not run._is_finished:
        run.finish()


def history(run_dir) -> list[dict]:
    return [r["history"]["item"] for r in leet_records(run_dir) if r["type"] == "history"]


def sender(wandb_env, run_id: str, label: str, *, wait: float = 30) -> relay.RelayRun:
    fallback = relay.fallback_path(wandb_env, run_id, label)
    return relay.RelayRun(run_id, label, path=relay.socket_path(run_id), fallback=fallback, wait=wait)


def test_every_record_of_a_non_primary_rank_reaches_the_primary_run_file(wandb_env, primary):
    path = relay.socket_path(primary.id)
    server = relay.RelayServer(primary, path=path, peers=2, wait=30)
    ranks = [sender(wandb_env, primary.id, f"rank-{r}") for r in (1, 2)]
    count = 1000
    for i in range(count):
        primary.log({"loss": -i})
        for r, rank in enumerate(ranks, start=1):
            rank.log({"loss": r * 10_000 + i, "extra": "x"})
    for rank in ranks:
        rank.close()
    server.close()
    run_dir = primary.settings.sync_dir
    primary.finish()

    rows = history(run_dir)
    assert len(rows) == 3 * count
    for r in (1, 2):
        mine = [row for row in rows if f"rank-{r}/loss" in row]
        assert [row[f"rank-{r}/loss"] for row in mine] == [r * 10_000 + i for i in range(count)]
        assert [row[f"rank-{r}/step"] for row in mine] == list(range(count)), "each label has its own step axis"
        assert all(row[f"rank-{r}/extra"] == "x" for row in mine)
    assert [row["loss"] for row in rows if "loss" in row] == [-i for i in range(count)]
    metrics = [r["metric"] for r in leet_records(run_dir) if r["type"] == "metric"]
    assert any(m.get("glob_name") == "rank-1/*" and m.get("step_metric") == "rank-1/step" for m in metrics)
    assert not any(rank.fallback for rank in ranks)


def test_rows_follow_wandb_step_and_commit_rules(wandb_env, primary):
    path = relay.socket_path(primary.id)
    server = relay.RelayServer(primary, path=path, peers=1, wait=30)
    rank = sender(wandb_env, primary.id, "rank-1")
    rank.log({"a": 1}, step=5)
    rank.log({"b": 2}, step=5)
    rank.log({"c": 3})  # joins step 5 and commits it
    rank.log({"d": 4}, commit=False)
    rank.log({"e": 5}, commit=True)
    rank.log({"f": 6}, step=9)  # pending until close
    rank.close()
    server.close()
    run_dir = primary.settings.sync_dir
    primary.finish()
    rows = [
        {k.removeprefix("rank-1/"): v for k, v in row.items() if k.startswith("rank-1/")} for row in history(run_dir)
    ]
    assert rows == [
        {"step": 5, "a": 1, "b": 2, "c": 3},
        {"step": 6, "d": 4, "e": 5},
        {"step": 9, "f": 6},
    ]
    with pytest.raises(RelayError) as info:
        rank.log({"late": 1})
    assert (info.value.run_id, info.value.label) == (primary.id, "rank-1")


def test_an_unreachable_primary_sends_the_rows_to_a_named_fallback_file(wandb_env, caplog):
    caplog.set_level(logging.WARNING, logger="wandbflow")
    rank = sender(wandb_env, "nobody-serves-this", "rank-3", wait=0.3)
    for i in range(10):
        rank.log({"loss": i})
    rank.close()
    assert rank.fallback == wandb_env / "wandb" / "wandbflow-relay" / "nobody-serves-this.rank-3.jsonl"
    lines = [json.loads(line) for line in rank.fallback.read_text().splitlines()]
    assert [(x["step"], x["data"]["loss"], x["label"]) for x in lines] == [(i, i, "rank-3") for i in range(10)]
    assert str(rank.fallback) in caplog.text and "rank-3" in caplog.text


def test_rows_sent_after_the_primary_closed_go_to_the_fallback_not_lost(wandb_env, primary, caplog):
    path = relay.socket_path(primary.id)
    server = relay.RelayServer(primary, path=path, peers=1, wait=0.2)
    rank = sender(wandb_env, primary.id, "rank-1", wait=5)
    for i in range(5):
        rank.log({"loss": i})
    while rank._sent < 5:  # delivered and acknowledged
        time.sleep(0.01)
    server.close()  # the peer never said it was done: the primary stops waiting after its silence
    for i in range(5, 8):
        rank.log({"loss": i})
    rank.close()
    run_dir = primary.settings.sync_dir
    primary.finish()
    in_run = [row["rank-1/loss"] for row in history(run_dir)]
    in_fallback = [json.loads(line)["data"]["loss"] for line in rank.fallback.read_text().splitlines()]
    assert in_run == [0, 1, 2, 3, 4] and in_fallback == [5, 6, 7]
    assert "did not finish relaying" in caplog.text


def test_the_primary_waits_at_its_end_for_peers_that_were_quiet_until_theirs(wandb_env, primary):
    path = relay.socket_path(primary.id)
    server = relay.RelayServer(primary, path=path, peers=1, wait=2)
    rank = sender(wandb_env, primary.id, "rank-1")
    time.sleep(2.5)  # connected, then silent for longer than the server's patience

    def finish_later() -> None:
        time.sleep(0.5)
        rank.log({"late": 1})
        rank.close()

    thread = threading.Thread(target=finish_later)
    thread.start()
    server.close()
    thread.join()
    run_dir = primary.settings.sync_dir
    primary.finish()
    assert [row["rank-1/late"] for row in history(run_dir)] == [1] and rank.fallback is None


def test_relay_error_pickles_with_its_fields():
    error = pickle.loads(pickle.dumps(RelayError("late", run_id="r", label="rank-1")))
    assert type(error) is RelayError and (error.run_id, error.label, str(error)) == ("r", "rank-1", "late")
