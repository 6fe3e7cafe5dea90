"""The scheduler: one decision per tick across schedulers, no pile-up, takeover of a dead one.

Unit tests drive :class:`PeriodicScheduler` with a fake clock against the real Redis;
process tests run real ``python -m workers.scheduler`` processes on a one-second schedule.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conftest import ROOT, wait_until
from paglets_artifacts import ArtifactJobs, Settings
from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.records import SUCCEEDED
from paglets_artifacts.redis_server import free_port
from paglets_artifacts.schedule import parse_schedule
from workers.scheduler import (
    FAILED,
    FIRED,
    SKIPPED_BUSY,
    SKIPPED_CLAIMED,
    Periodic,
    PeriodicScheduler,
    main,
    periodic_jobs,
)

PERIOD = 300.0
T0 = 1_800_000_000.0  # a tick of every schedule used here (divisible by 300 and 3600)


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sweep_every(seconds: float) -> Periodic:
    return Periodic(contract.SWEEP, parse_schedule(str(seconds)), lambda jobs: jobs.sweep())


def reindex_every(seconds: float) -> Periodic:
    return Periodic(contract.REINDEX, parse_schedule(str(seconds)), lambda jobs: jobs.reindex())


def sweep_records(jobs: ArtifactJobs) -> list:
    return jobs.jobs(kind="sweep", limit=10_000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 0.25)


def make(jobs: ArtifactJobs, clock: FakeClock, name: str, *periodics: Periodic, **options) -> PeriodicScheduler:
    return PeriodicScheduler(jobs, list(periodics) or [sweep_every(PERIOD)], scheduler_id=name, clock=clock, **options)


# ---------------------------------------------------------------------- tick claims


def test_first_tick_fires_one_job_and_records_its_id(jobs, clock, redis_client):
    scheduler = make(jobs, clock, "a")
    [decision] = scheduler.run_pending()
    assert (decision.kind, decision.tick, decision.outcome, decision.scheduler) == ("sweep", T0, FIRED, "a")
    assert jobs.job(decision.job_id).status().kind == "sweep"
    state = redis_client.hgetall(scheduler.state_key("sweep"))
    assert state[b"job_id"].decode() == decision.job_id
    assert float(state[b"tick"]) == T0
    assert b"enqueuing_since" not in state  # the enqueue finished
    assert scheduler.history("sweep") == [decision]


def test_second_scheduler_on_the_same_tick_skips_it_as_claimed(jobs, clock):
    first, second = make(jobs, clock, "a"), make(jobs, clock, "b")
    [fired] = first.run_pending()
    [skipped] = second.run_pending()
    assert fired.outcome == FIRED
    assert (skipped.outcome, skipped.detail, skipped.tick) == (SKIPPED_CLAIMED, "a", T0)
    assert len(sweep_records(jobs)) == 1


def test_many_schedulers_racing_for_one_tick_fire_exactly_once(settings, clock):
    count = 8
    clients = [ArtifactJobs(settings=settings) for _ in range(count)]
    schedulers = [make(client, clock, f"s{i}") for i, client in enumerate(clients)]
    barrier = threading.Barrier(count)
    decisions = []

    def race(scheduler: PeriodicScheduler) -> None:
        barrier.wait()
        decisions.extend(scheduler.run_pending())

    threads = [threading.Thread(target=race, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        outcomes = sorted(decision.outcome for decision in decisions)
        assert outcomes == [FIRED] + [SKIPPED_CLAIMED] * (count - 1)
        assert len(sweep_records(clients[0])) == 1
    finally:
        for client in clients:
            client.close()


def test_a_tick_is_decided_once_by_each_scheduler(jobs, clock):
    scheduler = make(jobs, clock, "a")
    assert len(scheduler.run_pending()) == 1
    clock.advance(PERIOD / 2)  # still the same tick
    assert scheduler.run_pending() == []


def test_a_scheduler_with_a_late_clock_cannot_claim_a_tick_again(jobs, clock):
    ahead = make(jobs, FakeClock(clock.now + PERIOD), "ahead")
    behind = make(jobs, clock, "behind")
    [fired] = ahead.run_pending()
    [late] = behind.run_pending()
    assert (fired.tick, fired.outcome) == (T0 + PERIOD, FIRED)
    # The older tick was never claimed itself, but a newer one was: it stays unclaimable.
    assert (late.tick, late.outcome, late.detail) == (T0, SKIPPED_CLAIMED, "ahead")
    assert len(sweep_records(jobs)) == 1


def test_each_kind_has_its_own_ticks_and_pile_up_check(jobs, clock):
    scheduler = make(jobs, clock, "a", sweep_every(PERIOD), reindex_every(3600))
    first = {d.kind: d.outcome for d in scheduler.run_pending()}
    assert first == {"sweep": FIRED, "reindex": FIRED}
    jobs.records.finished(scheduler.history("sweep")[0].job_id, state=SUCCEEDED, result={})
    clock.advance(PERIOD)
    # The reindex is still queued but its tick has not come; the finished sweep fires again.
    assert {d.kind: d.outcome for d in scheduler.run_pending()} == {"sweep": FIRED}
    assert len(jobs.jobs(kind="reindex")) == 1


# ---------------------------------------------------------------------- no pile-up


def test_a_tick_is_skipped_while_the_previous_job_is_queued_then_running(jobs, clock):
    scheduler = make(jobs, clock, "a")
    [fired] = scheduler.run_pending()
    clock.advance(PERIOD)
    [queued] = scheduler.run_pending()
    assert (queued.outcome, queued.job_id, queued.detail) == (SKIPPED_BUSY, fired.job_id, "queued")

    jobs.records.started(fired.job_id, worker="w", kind="sweep", enqueued_at=T0)
    clock.advance(PERIOD)
    [running] = scheduler.run_pending()
    assert (running.outcome, running.job_id, running.detail) == (SKIPPED_BUSY, fired.job_id, "running")

    jobs.records.finished(fired.job_id, state=SUCCEEDED, result={})
    clock.advance(PERIOD)
    [again] = scheduler.run_pending()
    assert again.outcome == FIRED and again.job_id != fired.job_id
    assert len(sweep_records(jobs)) == 2


def test_an_hour_without_workers_leads_to_one_job_not_twelve(jobs, clock):
    schedulers = [make(jobs, clock, "a"), make(jobs, clock, "b")]
    outcomes = []
    for _ in range(12):  # every five minutes for an hour, both schedulers awake
        for scheduler in schedulers:
            outcomes.extend(d.outcome for d in scheduler.run_pending())
        clock.advance(PERIOD)
    assert outcomes.count(FIRED) == 1
    assert outcomes.count(SKIPPED_BUSY) == 11
    assert outcomes.count(SKIPPED_CLAIMED) == 12
    assert len(sweep_records(jobs)) == 1


def test_ticks_missed_while_a_scheduler_was_paused_coalesce_into_one(jobs, clock):
    scheduler = make(jobs, clock, "a")
    [first] = scheduler.run_pending()
    jobs.records.finished(first.job_id, state=SUCCEEDED, result={})
    clock.advance(12 * PERIOD + 10)  # asleep for an hour: twelve ticks went by
    [decision] = scheduler.run_pending()
    assert (decision.tick, decision.outcome) == (T0 + 12 * PERIOD, FIRED)
    assert len(sweep_records(jobs)) == 2


def test_a_winner_still_enqueuing_blocks_the_next_tick_until_it_is_presumed_dead(jobs, clock, redis_client):
    scheduler = make(jobs, clock, "a", enqueue_timeout=30.0)
    # Scheduler "dead" claimed the previous tick and died before it recorded its job.
    redis_client.hset(
        scheduler.state_key("sweep"),
        mapping={"tick": repr(T0 - PERIOD), "scheduler": "dead", "enqueuing_since": repr(clock.now - 1)},
    )
    [blocked] = scheduler.run_pending()
    assert (blocked.outcome, blocked.detail) == (SKIPPED_BUSY, "being enqueued by dead")
    clock.advance(PERIOD)  # far beyond the enqueue timeout
    [fired] = scheduler.run_pending()
    assert fired.outcome == FIRED


def test_a_job_whose_message_was_lost_does_not_block_forever(jobs, clock, caplog):
    scheduler = make(jobs, clock, "a")
    [first] = scheduler.run_pending()
    jobs.broker.flush(contract.MAINTENANCE_QUEUE)  # the record says queued; the message is gone
    clock.advance(PERIOD)
    with caplog.at_level(logging.WARNING, logger="paglets_artifacts.scheduler"):
        [decision] = scheduler.run_pending()
    assert decision.outcome == FIRED
    assert (
        f"previous job {first.job_id} is recorded queued but queue artifact-maintenance holds no message" in caplog.text
    )


def test_a_job_whose_own_message_was_lost_does_not_block_while_others_are_queued(jobs, clock, redis_client):
    """After a failover lost the sweep's message, other jobs' messages still fill the queue:
    the sweep's own message is what is looked for."""
    scheduler = make(jobs, clock, "a")
    [first] = scheduler.run_pending()
    jobs.broker.flush(contract.MAINTENANCE_QUEUE)
    jobs.delete_owner("someone")  # a message of another job on the same queue
    clock.advance(PERIOD)
    [decision] = scheduler.run_pending()
    assert decision.outcome == FIRED and decision.job_id != first.job_id


def test_a_job_whose_message_is_queued_still_blocks(jobs, clock):
    scheduler = make(jobs, clock, "a")
    [first] = scheduler.run_pending()
    clock.advance(PERIOD)
    [decision] = scheduler.run_pending()
    assert (decision.outcome, decision.job_id) == (SKIPPED_BUSY, first.job_id)


def test_a_periodic_state_lost_in_a_failover_does_not_stop_the_ticks(jobs, clock, redis_client):
    """A failover may lose the claim hash (or bring back an older one): the next tick fires."""
    scheduler = make(jobs, clock, "a")
    [first] = scheduler.run_pending()
    jobs.broker.flush(contract.MAINTENANCE_QUEUE)
    redis_client.delete(scheduler.state_key("sweep"))
    clock.advance(PERIOD)
    [decision] = scheduler.run_pending()
    assert decision.outcome == FIRED and decision.tick == T0 + PERIOD
    clock.advance(PERIOD)
    assert scheduler.run_pending()[0].outcome == SKIPPED_BUSY  # and the state is whole again


def test_an_expired_record_of_the_previous_job_does_not_block(jobs, clock, redis_client):
    scheduler = make(jobs, clock, "a")
    [first] = scheduler.run_pending()
    redis_client.delete(jobs.records.key(first.job_id))
    clock.advance(PERIOD)
    assert scheduler.run_pending()[0].outcome == FIRED


# ---------------------------------------------------------------------- failures


def test_a_failed_enqueue_gives_the_tick_back_and_retries_it(jobs, clock, redis_client, caplog):
    attempts = []

    def flaky(client: ArtifactJobs):
        attempts.append(1)
        if len(attempts) == 1:
            raise redis.ConnectionError("broker went away")
        return client.sweep()

    scheduler = make(jobs, clock, "a", Periodic(contract.SWEEP, parse_schedule(str(PERIOD)), flaky), retry_seconds=5)
    with caplog.at_level(logging.ERROR, logger="paglets_artifacts.scheduler"):
        [failed] = scheduler.run_pending()
    assert (failed.outcome, failed.detail) == (FAILED, "ConnectionError: broker went away")
    assert "could not enqueue (ConnectionError: broker went away); retrying in 5 s" in caplog.text
    state = redis_client.hgetall(scheduler.state_key("sweep"))
    assert b"tick" not in state and b"enqueuing_since" not in state  # given back
    assert scheduler.next_wakeup() == clock.now + 5

    clock.advance(5)
    [retried] = scheduler.run_pending()
    assert (retried.tick, retried.outcome) == (T0, FIRED)
    assert len(sweep_records(jobs)) == 1


def test_an_unreachable_redis_delays_the_tick_instead_of_stopping(settings, clock, caplog):
    down = settings.with_changes(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with ArtifactJobs(settings=down) as jobs:
        scheduler = make(jobs, clock, "a", retry_seconds=2)
        with caplog.at_level(logging.WARNING, logger="paglets_artifacts.scheduler"):
            assert scheduler.run_pending() == []
    assert "not decided, Redis failed (ConnectionError" in caplog.text
    assert scheduler.next_wakeup() == clock.now + 2


def test_a_redis_outage_at_a_tick_is_caught_up_when_redis_is_back(jobs, clock, monkeypatch):
    scheduler = make(jobs, clock, "a")
    real_pipeline = jobs.client.pipeline

    def broken(*args, **kwargs):
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(jobs.client, "pipeline", broken)
    assert scheduler.run_pending() == []
    monkeypatch.setattr(jobs.client, "pipeline", real_pipeline)
    clock.advance(2)
    [decision] = scheduler.run_pending()
    assert (decision.tick, decision.outcome) == (T0, FIRED)


def test_duplicate_kinds_are_refused(jobs, clock):
    with pytest.raises(ValueError, match="distinct"):
        make(jobs, clock, "a", sweep_every(60), sweep_every(300))


def test_an_invalid_schedule_is_refused(settings):
    with pytest.raises(ValueError, match="neither a number of seconds nor a cron expression"):
        periodic_jobs(settings.with_changes(sweep_schedule="every tuesday"))


def test_main_exits_2_naming_the_invalid_variable(monkeypatch, capsys):
    monkeypatch.setenv("PAGLETS_ARTIFACTS_REINDEX_SCHEDULE", "0.5")
    assert main() == 2
    assert "PAGLETS_ARTIFACTS_REINDEX_SCHEDULE='0.5' is invalid" in capsys.readouterr().err


# ---------------------------------------------------------------------- start-up, history


def test_start_logs_the_next_fire_times_of_each_schedule(jobs, caplog):
    clock = FakeClock(T0 + 30)  # 2027-01-15T08:00:30Z
    cron = Periodic(contract.REINDEX, parse_schedule("*/20 * * * *"), lambda j: j.reindex())
    scheduler = make(jobs, clock, "a", sweep_every(PERIOD), cron)
    assert scheduler.next_fire_times(2) == {
        "sweep": [T0 + PERIOD, T0 + 2 * PERIOD],
        "reindex": [T0 + 1200, T0 + 2400],
    }
    with caplog.at_level(logging.INFO, logger="paglets_artifacts.scheduler"):
        scheduler.log_start()
    assert (
        "sweep: every 300 s; next fire times 2027-01-15T08:05:00Z, 2027-01-15T08:10:00Z, 2027-01-15T08:15:00Z"
        in caplog.text
    )
    assert (
        "reindex: cron '*/20 * * * *' (UTC); next fire times 2027-01-15T08:20:00Z, 2027-01-15T08:40:00Z, "
        "2027-01-15T09:00:00Z" in caplog.text
    )


def test_history_keeps_the_latest_decisions_newest_first(jobs, clock):
    scheduler = make(jobs, clock, "a", history_length=3)
    for _ in range(5):
        scheduler.run_pending()
        clock.advance(PERIOD)
    ticks = [decision.tick for decision in scheduler.history("sweep")]
    assert ticks == [T0 + 4 * PERIOD, T0 + 3 * PERIOD, T0 + 2 * PERIOD]


# ---------------------------------------------------------------------- real processes


class Schedulers:
    """Real ``python -m workers.scheduler`` processes for a test, stopped after it."""

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings = settings
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        env = {**os.environ, **self.settings.to_env()}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        log = open(self.log_dir / f"scheduler-{len(self.processes)}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        log.close()
        self.processes.append(process)
        return process

    def log(self, process: subprocess.Popen) -> str:
        return (self.log_dir / f"scheduler-{self.processes.index(process)}.log").read_text(errors="replace")

    def by_pid(self, pid: int) -> subprocess.Popen:
        return next(process for process in self.processes if process.pid == pid)

    def terminate(self, process: subprocess.Popen) -> int:
        """SIGTERM, and the exit code."""
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=15)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def schedulers(settings: Settings, tmp_path: Path) -> Iterator[Schedulers]:
    log_dir = tmp_path / "scheduler-logs"
    log_dir.mkdir()
    pool = Schedulers(settings.with_changes(sweep_schedule="1", reindex_schedule="3600"), log_dir)
    yield pool
    pool.stop_all()


@pytest.fixture
def history(jobs: ArtifactJobs, schedulers: Schedulers):
    reader = PeriodicScheduler(jobs, periodic_jobs(schedulers.settings), scheduler_id="reader")
    return lambda: reader.history("sweep")


_TICK_LINE = re.compile(r"sweep tick (\S+): (fired|skipped, previous|skipped, claimed)")


def tick_lines(*logs: str) -> dict[str, list[str]]:
    """What each scheduler's log says about each sweep tick: tick -> ['fired', 'claimed', ...]."""
    by_tick: dict[str, list[str]] = defaultdict(list)
    for log in logs:
        for tick, what in _TICK_LINE.findall(log):
            by_tick[tick].append(what.rsplit(" ", 1)[-1].strip(","))
    return by_tick


def assert_one_decision_per_tick(decisions, jobs: ArtifactJobs) -> None:
    ticks = [decision.tick for decision in decisions]
    assert len(ticks) == len(set(ticks)), "a tick was decided twice"
    fired = {decision.job_id for decision in decisions if decision.outcome == FIRED}
    assert {record.id for record in sweep_records(jobs)} == fired


def test_two_schedulers_fire_exactly_once_per_tick(schedulers, workers, jobs, history):
    workers.start(processes=1, threads=1, settings=schedulers.settings)
    a, b = schedulers.start(), schedulers.start()

    def seen_by_both() -> dict[str, list[str]]:
        return {tick: said for tick, said in tick_lines(schedulers.log(a), schedulers.log(b)).items() if len(said) == 2}

    wait_until(lambda: sum(d.outcome == FIRED for d in history()) >= 3 and len(seen_by_both()) >= 3, timeout=60)
    assert schedulers.terminate(a) == 0 and schedulers.terminate(b) == 0

    assert_one_decision_per_tick(history(), jobs)
    log_a, log_b = schedulers.log(a), schedulers.log(b)
    both = seen_by_both()
    for tick, said in both.items():  # one decided, the other saw it claimed
        assert sorted(said) in (["claimed", "fired"], ["claimed", "previous"]), (tick, said)
    for tick, said in tick_lines(log_a, log_b).items():
        assert said.count("fired") <= 1, (tick, said)
    for log in (log_a, log_b):
        assert "sweep: every 1 s; next fire times" in log
        assert "scheduler stopped (SIGTERM)" in log


def test_a_queued_sweep_blocks_later_ticks_and_the_missed_ones_become_one_job(schedulers, workers, jobs, history):
    a, b = schedulers.start(), schedulers.start()  # no worker yet: the first sweep stays queued
    wait_until(lambda: len(history()) >= 4, timeout=60)
    decisions = history()
    fired = [d for d in decisions if d.outcome == FIRED]
    assert len(fired) == 1
    assert all(d.outcome == SKIPPED_BUSY and d.job_id == fired[0].job_id for d in decisions if d is not fired[0])
    assert len(sweep_records(jobs)) == 1
    assert f"skipped, previous sweep job {fired[0].job_id} is still queued" in schedulers.log(a) + schedulers.log(b)

    workers.start(processes=1, threads=1, settings=schedulers.settings)
    jobs.job(fired[0].job_id).wait(timeout=60)
    wait_until(lambda: sum(d.outcome == FIRED for d in history()) >= 2, timeout=60)
    assert schedulers.terminate(a) == 0 and schedulers.terminate(b) == 0
    decisions = history()
    assert_one_decision_per_tick(decisions, jobs)
    # Every skipped tick lies in the outage; none of them left a job behind.
    second = min(d.tick for d in decisions if d.outcome == FIRED and d.job_id != fired[0].job_id)
    skipped = [d for d in decisions if d.outcome == SKIPPED_BUSY and d.tick < second]
    assert len(skipped) >= 3
    assert len([r for r in sweep_records(jobs) if r.enqueued_at < second]) == 1


def test_a_killed_schedulers_ticks_are_taken_over(schedulers, workers, jobs, history):
    workers.start(processes=1, threads=1, settings=schedulers.settings)
    first, second = schedulers.start(), schedulers.start()
    wait_until(lambda: len(tick_lines(schedulers.log(first), schedulers.log(second))) >= 2, timeout=60)
    # Kill the scheduler that decided the latest tick: the other must take over.
    winner_pid = int(wait_until(lambda: history())[0].scheduler.split(":")[1])
    victim = schedulers.by_pid(winner_pid)
    survivor = second if victim is first else first
    victim.kill()
    victim.wait(timeout=10)
    last_before = max(d.tick for d in history())

    def taken_over():
        after = [d for d in history() if d.tick > last_before]
        return len(after) >= 3 and any(d.outcome == FIRED for d in after)

    wait_until(taken_over, timeout=60)
    assert schedulers.terminate(survivor) == 0
    after = [d for d in history() if d.tick > last_before]
    assert {d.scheduler.split(":")[1] for d in after} == {str(survivor.pid)}
    assert_one_decision_per_tick(history(), jobs)


def test_a_scheduler_process_with_an_invalid_schedule_exits_naming_it(settings):
    env = {**os.environ, **settings.to_env(), "PAGLETS_ARTIFACTS_SWEEP_SCHEDULE": "every tuesday"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "workers.scheduler"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode != 0
    assert "PAGLETS_ARTIFACTS_SWEEP_SCHEDULE='every tuesday' is invalid" in done.stderr


def test_sigint_stops_a_waiting_scheduler_cleanly(schedulers):
    process = schedulers.start()
    wait_until(lambda: "sweep tick" in schedulers.log(process), timeout=30)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=15) == 0
    assert "scheduler stopped (SIGINT)" in schedulers.log(process)
    assert "Traceback" not in schedulers.log(process)
