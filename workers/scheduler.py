"""The scheduler: enqueues the periodic sweep and reindex, once per tick, across many schedulers.

Run ``python -m workers.scheduler`` (or ``paglets-artifacts scheduler``) on one host or
on several: every scheduler wakes at every tick, and Redis decides which one acts.

- **One decision per tick.** ``<ns>:periodic:<kind>`` holds the latest claimed tick. A
  scheduler claims a tick by raising that mark in a ``WATCH``/``MULTI`` transaction, so of
  all the schedulers that wake for a tick exactly one wins; the others log that it was
  claimed. A tick at or below the mark can never be claimed again, whatever the clocks say.
- **No pile-up.** The winner enqueues only when the last periodic job of that kind has
  ended (its id is kept in the same hash, its state read from the job record); otherwise
  it logs the skip. Only the latest past tick is ever considered, so ticks missed while
  a scheduler was stopped or paused coalesce into one.
- **High availability.** Nothing belongs to a particular scheduler: when one dies, the
  others claim the next ticks as they always tried to.

This module enqueues through :class:`paglets_artifacts.ArtifactJobs`; it needs neither the
actors nor a worker.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from paglets_artifacts.jobs import contract
from paglets_artifacts.jobs.client import ArtifactJobs, Job
from paglets_artifacts.jobs.records import FINAL_STATES, STATES
from paglets_artifacts.logging_setup import configure_logging
from paglets_artifacts.redis_client import connect_redis
from paglets_artifacts.schedule import Schedule, parse_schedule
from paglets_artifacts.settings import Settings, SettingsError

from .reconcile import message_ids

logger = logging.getLogger("paglets_artifacts.scheduler")

#: Outcomes of a tick, as logged and kept in the decision history.
FIRED = "fired"
SKIPPED_BUSY = "skipped-busy"
SKIPPED_CLAIMED = "skipped-claimed"
FAILED = "failed"

#: How long a claim marked "enqueuing" blocks the next ticks: after that its scheduler is presumed dead.
DEFAULT_ENQUEUE_TIMEOUT_SECONDS = 30.0
#: How soon a tick that could not be decided (Redis unreachable, enqueue failed) is tried again.
DEFAULT_RETRY_SECONDS = 5.0
#: How many decisions per kind ``<ns>:periodic:<kind>:decisions`` keeps (newest first).
DEFAULT_HISTORY_LENGTH = 100
#: Socket and connect timeout of the scheduler's Redis client.
REDIS_TIMEOUT_SECONDS = 10.0
#: Longest sleep between two looks at the clock, so a wall-clock step is noticed.
MAX_SLEEP_SECONDS = 60.0
#: The periodic state outlives this many periods (and at least a week) without a claim.
_STATE_TTL_PERIODS = 3
_STATE_TTL_MIN_SECONDS = 7 * 86400
_BUSY_STATES = frozenset(STATES) - FINAL_STATES


@dataclass(frozen=True)
class Periodic:
    """One periodic job.

    Parameters:
      kind(contract.JobKind): the job kind it enqueues (its name keys the Redis state).
      schedule(Schedule): when it fires.
      enqueue(Callable[[ArtifactJobs], Job]): enqueues one job of that kind.
    """

    kind: contract.JobKind
    schedule: Schedule
    enqueue: Callable[[ArtifactJobs], Job]

    @property
    def name(self) -> str:
        return self.kind.name


@dataclass(frozen=True)
class Decision:
    """What one scheduler did about one tick.

    Parameters:
      kind(str): the job kind.
      tick(float): the tick (Unix seconds).
      outcome(str): ``fired``, ``skipped-busy``, ``skipped-claimed`` or ``failed``.
      job_id(str): the job fired, or the earlier job that is still busy.
      detail(str): the busy job's state, the scheduler that claimed the tick, or the error.
      scheduler(str): the scheduler that decided.
    """

    kind: str
    tick: float
    outcome: str
    job_id: str = ""
    detail: str = ""
    scheduler: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tick": self.tick,
            "outcome": self.outcome,
            "job_id": self.job_id,
            "detail": self.detail,
            "scheduler": self.scheduler,
        }


def periodic_jobs(settings: Settings) -> list[Periodic]:
    """The sweep, the reindex and the job reconciliation, on the schedules ``settings`` names
    (``ValueError`` if invalid)."""
    return [
        Periodic(contract.SWEEP, parse_schedule(settings.sweep_schedule), lambda jobs: jobs.sweep()),
        Periodic(contract.REINDEX, parse_schedule(settings.reindex_schedule), lambda jobs: jobs.reindex()),
        Periodic(contract.RECONCILE, parse_schedule(settings.reconcile_schedule), lambda jobs: jobs.reconcile()),
    ]


def default_scheduler_id() -> str:
    """``host:pid:random``: unique per process, and says where a decision was taken."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def format_tick(moment: float) -> str:
    spec = "seconds" if float(moment).is_integer() else "milliseconds"
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec=spec).replace("+00:00", "Z")


class PeriodicScheduler:
    """Decides, for each tick of each periodic job, whether to enqueue; never sleeps itself.

    Parameters:
      jobs(ArtifactJobs): enqueues the jobs and reads their records (its Redis client and
        namespace hold the periodic state too).
      periodics(Sequence[Periodic]): the periodic jobs.
      scheduler_id(str|None): this scheduler's name in logs and in Redis (default:
        :func:`default_scheduler_id`).
      clock(Callable[[], float]): the wall clock (Unix seconds); tests pass a fake one.
      enqueue_timeout(float): how long a tick whose winner is still enqueuing blocks the
        next ticks (default :data:`DEFAULT_ENQUEUE_TIMEOUT_SECONDS`).
      retry_seconds(float): how soon an undecided tick is tried again (default
        :data:`DEFAULT_RETRY_SECONDS`).
      history_length(int): decisions kept per kind in Redis (default :data:`DEFAULT_HISTORY_LENGTH`).
    """

    def __init__(
        self,
        jobs: ArtifactJobs,
        periodics: Sequence[Periodic],
        *,
        scheduler_id: str | None = None,
        clock: Callable[[], float] = time.time,
        enqueue_timeout: float = DEFAULT_ENQUEUE_TIMEOUT_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        history_length: int = DEFAULT_HISTORY_LENGTH,
    ):
        names = [periodic.name for periodic in periodics]
        if len(set(names)) != len(names):
            raise ValueError(f"periodic job kinds must be distinct, got {names}")
        self.jobs = jobs
        self.client: redis.Redis = jobs.client
        self.namespace = jobs.settings.namespace
        self.periodics = list(periodics)
        self.scheduler_id = scheduler_id or default_scheduler_id()
        self.clock = clock
        self.enqueue_timeout = enqueue_timeout
        self.retry_seconds = retry_seconds
        self.history_length = history_length
        # The latest tick this process has decided, per kind: only a newer one is due.
        self._decided: dict[str, float] = {periodic.name: -math.inf for periodic in self.periodics}
        self._retry_at: float | None = None

    # ------------------------------------------------------------------ keys

    def state_key(self, kind: str) -> str:
        """The hash of a kind: ``tick``, ``scheduler``, ``claimed_at``, ``job_id``, ``fired_tick``..."""
        return contract.periodic_state_key(self.namespace, kind)

    def history_key(self, kind: str) -> str:
        """The list of a kind's latest decisions (JSON, newest first)."""
        return f"{self.namespace}:periodic:{kind}:decisions"

    def history(self, kind: str) -> list[Decision]:
        """The decisions kept for ``kind``, newest first."""
        return [Decision(**json.loads(item)) for item in self.client.lrange(self.history_key(kind), 0, -1)]

    # ------------------------------------------------------------------ timing

    def next_fire_times(self, count: int = 3) -> dict[str, list[float]]:
        """The next ``count`` ticks of each periodic job after now."""
        now = self.clock()
        times: dict[str, list[float]] = {}
        for periodic in self.periodics:
            moments, moment = [], now
            for _ in range(count):
                moment = periodic.schedule.next_after(moment)
                moments.append(moment)
            times[periodic.name] = moments
        return times

    def next_wakeup(self) -> float:
        """When the loop should look again: the next tick, or the retry of an undecided one."""
        now = self.clock()
        wake = min(periodic.schedule.next_after(now) for periodic in self.periodics)
        if self._retry_at is not None:
            wake = min(wake, self._retry_at)
        return wake

    # ------------------------------------------------------------------ decisions

    def run_pending(self) -> list[Decision]:
        """Decide the latest past tick of every periodic job this process has not decided yet.

        Ticks missed in between (this process was stopped, paused or slow) are not
        replayed: only the latest one counts, so they coalesce into one job.
        """
        now = self.clock()
        decisions: list[Decision] = []
        self._retry_at = None
        for periodic in self.periodics:
            tick = periodic.schedule.last_at_or_before(now)
            if tick <= self._decided[periodic.name]:
                continue
            try:
                decision = self.decide(periodic, tick)
            except redis.RedisError as exc:
                logger.warning(
                    "%s tick %s: not decided, Redis failed (%s: %s); retrying in %g s",
                    periodic.name,
                    format_tick(tick),
                    type(exc).__name__,
                    exc,
                    self.retry_seconds,
                )
                self._retry_at = now + self.retry_seconds
                continue
            decisions.append(decision)
            if decision.outcome == FAILED:
                self._retry_at = now + self.retry_seconds
            else:
                self._decided[periodic.name] = tick
        return decisions

    def decide(self, periodic: Periodic, tick: float) -> Decision:
        """Claim ``tick`` for this scheduler and enqueue unless the last periodic job is still busy."""
        now = self.clock()
        key = self.state_key(periodic.name)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    state = {_decoded(name): _decoded(value) for name, value in pipe.hgetall(key).items()}
                    if _number(state.get("tick")) >= tick:
                        pipe.reset()
                        decision = Decision(
                            periodic.name,
                            tick,
                            SKIPPED_CLAIMED,
                            detail=state.get("scheduler", "?"),
                            scheduler=self.scheduler_id,
                        )
                        self._log(decision)
                        return decision
                    busy = self._busy(periodic, state, now)
                    claim: dict[Any, Any] = {
                        "tick": repr(tick),
                        "scheduler": self.scheduler_id,
                        "claimed_at": repr(now),
                    }
                    if busy is None:
                        # Marks the enqueue in progress, so the next tick's winner cannot fire a
                        # second job before this one's id is recorded.
                        claim["enqueuing_since"] = repr(now)
                    pipe.multi()
                    pipe.hset(key, mapping=claim)
                    pipe.expire(key, self._state_ttl(periodic, now))
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue  # another scheduler changed the state meanwhile: read it again
        if busy is not None:
            job_id, state_name = busy
            decision = Decision(
                periodic.name, tick, SKIPPED_BUSY, job_id=job_id, detail=state_name, scheduler=self.scheduler_id
            )
        else:
            decision = self._fire(periodic, tick, previous_tick=_number(state.get("tick")))
        self._remember(decision)
        self._log(decision)
        return decision

    def _busy(self, periodic: Periodic, state: dict[str, str], now: float) -> tuple[str, str] | None:
        """(job id, state) of the earlier periodic job that blocks this tick, or None."""
        enqueuing = state.get("enqueuing_since")
        if enqueuing and now - float(enqueuing) < self.enqueue_timeout:
            return ("", f"being enqueued by {state.get('scheduler', '?')}")
        job_id = state.get("job_id")
        if not job_id:
            return None
        record = self.jobs.records.get(job_id)
        if record is None or record.state not in _BUSY_STATES:
            return None  # ended, or its record expired
        if job_id not in message_ids(self.client, self.namespace, [periodic.kind.queue_name])[0]:
            # A queued or running job always has its message in the queue's hash (until
            # acked, and a retry is in the delay queue first), so a job without one lost it
            # (a flushed queue, writes lost in a failover): waiting for it would block
            # forever. Its record is left to reconciliation.
            logger.warning(
                "%s: previous job %s is recorded %s but queue %s holds no message of it; presumed lost",
                periodic.name,
                job_id,
                record.state,
                periodic.kind.queue_name,
            )
            return None
        return (job_id, record.state)

    def _fire(self, periodic: Periodic, tick: float, *, previous_tick: float) -> Decision:
        key = self.state_key(periodic.name)
        try:
            job = periodic.enqueue(self.jobs)
        except Exception as exc:
            self._release(periodic, tick, previous_tick)
            return Decision(
                periodic.name, tick, FAILED, detail=f"{type(exc).__name__}: {exc}", scheduler=self.scheduler_id
            )
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"job_id": job.id, "fired_tick": repr(tick), "fired_at": repr(self.clock())})
        pipe.hdel(key, "enqueuing_since")
        pipe.execute()
        return Decision(periodic.name, tick, FIRED, job_id=job.id, scheduler=self.scheduler_id)

    def _release(self, periodic: Periodic, tick: float, previous_tick: float) -> None:
        """Give back a claimed tick whose job could not be enqueued, so it can be tried again."""
        key = self.state_key(periodic.name)
        try:
            with self.client.pipeline() as pipe:
                pipe.watch(key)
                current = pipe.hget(key, "tick")
                owner = pipe.hget(key, "scheduler")
                claimed_tick = _number(_decoded(current) if current else None)
                if claimed_tick != tick or _decoded(owner or b"") != self.scheduler_id:
                    return  # a later tick was claimed meanwhile: nothing to give back
                pipe.multi()
                if math.isinf(previous_tick):
                    pipe.hdel(key, "tick", "enqueuing_since")
                else:
                    pipe.hset(key, "tick", repr(previous_tick))
                    pipe.hdel(key, "enqueuing_since")
                pipe.execute()
        except redis.RedisError as exc:
            # The enqueue mark then expires after enqueue_timeout; the next tick fires.
            logger.warning("%s tick %s: could not release the claim (%s)", periodic.name, format_tick(tick), exc)

    def _remember(self, decision: Decision) -> None:
        key = self.history_key(decision.kind)
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(key, json.dumps(decision.to_wire()))
        pipe.ltrim(key, 0, self.history_length - 1)
        pipe.expire(key, _STATE_TTL_MIN_SECONDS)
        try:
            pipe.execute()
        except redis.RedisError as exc:  # the history is for people: losing an entry is no reason to fail
            logger.warning("%s: decision not kept in history (%s)", decision.kind, exc)

    def _state_ttl(self, periodic: Periodic, now: float) -> int:
        period = periodic.schedule.next_after(now) - periodic.schedule.last_at_or_before(now)
        return int(max(_STATE_TTL_MIN_SECONDS, _STATE_TTL_PERIODS * period))

    def _log(self, decision: Decision) -> None:
        when = format_tick(decision.tick)
        if decision.outcome == FIRED:
            logger.info("%s tick %s: fired job %s", decision.kind, when, decision.job_id)
        elif decision.outcome == SKIPPED_BUSY:
            if decision.job_id:
                logger.info(
                    "%s tick %s: skipped, previous %s job %s is still %s",
                    decision.kind,
                    when,
                    decision.kind,
                    decision.job_id,
                    decision.detail,
                )
            else:
                logger.info(
                    "%s tick %s: skipped, previous %s job is still %s",
                    decision.kind,
                    when,
                    decision.kind,
                    decision.detail,
                )
        elif decision.outcome == SKIPPED_CLAIMED:
            logger.info("%s tick %s: skipped, claimed by scheduler %s", decision.kind, when, decision.detail)
        else:
            logger.error(
                "%s tick %s: could not enqueue (%s); retrying in %g s",
                decision.kind,
                when,
                decision.detail,
                self.retry_seconds,
            )

    # ------------------------------------------------------------------ loop

    def log_start(self) -> None:
        """Log who this scheduler is and the next fire times of every periodic job."""
        logger.info("scheduler %s started (namespace %s)", self.scheduler_id, self.namespace)
        for name, moments in self.next_fire_times().items():
            periodic = next(p for p in self.periodics if p.name == name)
            every = (
                f"every {periodic.schedule.interval:g} s"
                if periodic.schedule.interval is not None
                else f"cron {periodic.schedule.text!r} (UTC)"
            )
            logger.info("%s: %s; next fire times %s", name, every, ", ".join(format_tick(m) for m in moments))

    def run_until(self, stop: threading.Event) -> None:
        """Decide due ticks and sleep until the next one, until ``stop`` is set."""
        while not stop.is_set():
            self.run_pending()
            delay = self.next_wakeup() - self.clock()
            stop.wait(min(MAX_SLEEP_SECONDS, max(0.0, delay)))


def _decoded(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def _number(text: str | None) -> float:
    return -math.inf if text in (None, "") else float(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a scheduler until SIGTERM or SIGINT; configuration from the environment."""
    try:
        settings = Settings.from_env()
        periodics = periodic_jobs(settings)
    except (SettingsError, ValueError) as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    stop = threading.Event()
    received: list[str] = []

    def request_stop(signum: int, frame: Any) -> None:
        # Only set the flag: logging here could re-enter a handler the main thread holds.
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # Timeouts, so a Redis that stops answering delays a tick instead of hanging the loop.
    try:
        client = connect_redis(settings, timeout=REDIS_TIMEOUT_SECONDS)
    except SettingsError as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    jobs = ArtifactJobs(client=client, settings=settings)
    try:
        scheduler = PeriodicScheduler(jobs, periodics)
        scheduler.log_start()
        scheduler.run_until(stop)
    finally:
        jobs.close()
    logger.info("scheduler stopped (%s)", received[0] if received else "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
