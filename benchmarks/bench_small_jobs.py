"""Small jobs against plain Dramatiq, and concurrent large imports against the machine.

    .venv/bin/python benchmarks/bench_small_jobs.py [--jobs 1000] [--runs 3] [--big-mib 1024] [--concurrency 1,2,4]

In one run, on one embedded Redis it starts itself (never ``REDIS_URL``: its statistics are
reset):

1. Small jobs, enqueued one by one from this process, jobs/s from the first enqueue to the
   last final record: a plain Dramatiq no-op actor (``benchmarks/plain_noop_actor.py``:
   bare ``RedisBroker``, default middleware, none of the project's code, completion counted
   with one ``INCR``) as the baseline, then 1 KiB imports, exports of those artifacts and
   deletions of their owners (one artifact each) through a real worker
   (``dramatiq workers.registry -p 1 -t 8``, what ``paglets-artifacts worker -p 1 -t 8``
   runs), with the store's ``fsync`` off and on, and the same imports enqueued with one
   ``import_files`` call. Rows run round-robin, one worker at a time, ``--runs`` times;
   medians.
2. Redis commands per job of each kind, counted on a separate pass of ``--count-jobs`` jobs
   (so that counting slows no timed row): every command Redis ran (``INFO commandstats``
   after ``CONFIG RESETSTAT``, the commands scripts run included) and the round trips
   (``MONITOR`` entries not run by a script, a ``MULTI``...``EXEC`` transaction counted as
   one), enqueue included; idle workers' polling of their queues falls in both.
3. Aggregate throughput of 1, 2 and 4 concurrent 1 GiB imports through one worker
   (``-p 1 -t 8``, fsync off, files copied and hashed, not linked) beside ``cp``,
   ``sha256sum`` and Python's ``hashlib`` (OpenSSL's SHA-256, what imports run; one process
   per file) run as many at once on the same files; ``--jobs 0`` runs these rows only. Before each timed run the machine
   is left alone for a few seconds and the sources are copied to scratch files that are
   deleted at once (as ``bench_throughput.warm_free_memory`` does), so every row writes into
   memory in the same state.

Prints markdown tables. The big files live under a temp dir on the local disk and are
deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from dramatiq import Message  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402

from benchmarks.bench_throughput import MIB, SETTLE_SECONDS, write_source  # noqa: E402
from benchmarks.plain_noop_actor import ACTOR, QUEUE, counter_key  # noqa: E402
from paglets_artifacts import ArtifactJobs, Settings  # noqa: E402
from paglets_artifacts.jobs.records import FAILED, FINAL_STATES  # noqa: E402
from paglets_artifacts.jobs.worker_process import WorkerProcess  # noqa: E402
from paglets_artifacts.redis_server import EmbeddedRedis  # noqa: E402

GIB = 1024 * MIB


# ------------------------------------------------------------------------ workers


@contextmanager
def running(argv_env: tuple[list[str], dict[str, str]]) -> Iterator[None]:
    argv, env = argv_env
    process = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def our_worker(settings: Settings, threads: int) -> tuple[list[str], dict[str, str]]:
    command = WorkerProcess(settings=settings, processes=1, threads=threads, pythonpath=[ROOT])
    return command.argv(), command.env()


def plain_worker(url: str, namespace: str, threads: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "REDIS_URL": url, "PLAIN_NOOP_NAMESPACE": namespace, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "dramatiq", "benchmarks.plain_noop_actor", "-p", "1", "-t", str(threads)]
    return argv, env


# ------------------------------------------------------------------------ counting


@dataclass
class Counts:
    commands: int = 0  # every command Redis ran, those scripts ran included
    round_trips: int = 0  # what clients sent: MONITOR entries not run by a script, a MULTI..EXEC as one


class CommandCounter:
    """Counts the commands Redis runs between :meth:`start` and :meth:`stop`."""

    STOP = "bench-monitor-stop"

    def __init__(self, client: redis.Redis):
        self.client = client
        self._thread: threading.Thread | None = None
        self._round_trips = 0
        self._ready = threading.Event()

    def start(self) -> None:
        self._round_trips = 0
        self._ready.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.client.config_resetstat()

    def _watch(self) -> None:
        in_transaction: set[tuple[str, str]] = set()  # clients between their MULTI and EXEC
        with self.client.monitor() as monitor:
            self._ready.set()
            while True:
                entry = monitor.next_command()
                command = entry.get("command", "")
                if self.STOP in command:
                    return
                client = (entry.get("client_address", ""), entry.get("client_port", ""))
                verb = command.split(" ", 1)[0].upper()
                if entry.get("client_type") == "lua" or verb in ("CONFIG", "INFO"):
                    continue
                if verb == "EXEC":  # a transaction is sent as one round trip
                    in_transaction.discard(client)
                elif client not in in_transaction:
                    self._round_trips += 1
                    if verb == "MULTI":
                        in_transaction.add(client)

    def stop(self, *, minus_calls: int = 0) -> Counts:
        stats = self.client.info("commandstats")
        commands = sum(
            value["calls"] for name, value in stats.items() if name not in ("cmdstat_info", "cmdstat_config")
        )
        self.client.echo(self.STOP)
        assert self._thread is not None
        self._thread.join(30)
        return Counts(commands=commands - minus_calls - 1, round_trips=self._round_trips - minus_calls)


# ------------------------------------------------------------------------ small jobs


class FinalEvents:
    """Waits for jobs' final records on the job-events channel: no command per poll."""

    def __init__(self, jobs: ArtifactJobs):
        self.pubsub = jobs.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(jobs.records.channel)
        self.pubsub.get_message(timeout=1)

    def wait(self, ids: Sequence[str], timeout: float = 600) -> None:
        pending = set(ids)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} jobs did not finish")
            message = self.pubsub.get_message(timeout=1)
            if not message or message.get("type") != "message":
                continue
            event = json.loads(message["data"])
            if event.get("state") in FINAL_STATES and event.get("id") in pending:
                if event["state"] == FAILED:
                    raise RuntimeError(f"benchmark job {event['id']} failed")
                pending.discard(event["id"])

    def close(self) -> None:
        self.pubsub.close()


@dataclass
class SmallRig:
    """One store and one worker's settings; files and owners per pass."""

    url: str
    work: Path
    fsync: bool
    threads: int
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        namespace = f"bench-small-{uuid.uuid4().hex[:8]}"
        self.settings = Settings(
            redis_url=self.url,
            namespace=namespace,
            store_root=self.work.parent / "stores" / namespace,  # beside the allowed root, never in it
            allowed_roots=(self.work,),
            fsync=self.fsync,
            quota_bytes=None,
        )

    def files(self, label: str, count: int) -> list[Path]:
        folder = self.work / f"{self.settings.namespace}-{label}-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        paths = [folder / f"{i}.bin" for i in range(count)]
        for path in paths:
            path.write_bytes(os.urandom(1024))
        return paths


def small_pass(rig: SmallRig, jobs: ArtifactJobs, events: FinalEvents, label: str, count: int, batch: bool) -> dict:
    """One pass of imports, exports and owner deletions: {kind: (seconds, counts)}."""
    sources = rig.files(label, count)
    targets = rig.work / f"{rig.settings.namespace}-{label}-out"
    targets.mkdir()
    owners = [f"{label}-owner-{i}" for i in range(count)]
    out: dict[str, float] = {}

    def timed(name: str, enqueue: Callable[[], list[str]]) -> list[str]:
        start = time.perf_counter()
        ids = enqueue()
        events.wait(ids)
        out[name] = time.perf_counter() - start
        return ids

    if batch:
        enqueue_many = getattr(jobs, "import_files", None)
        if enqueue_many is None:
            return out
        timed(
            "import (batch)",
            lambda: [
                job.id
                for job in enqueue_many(
                    [{"path": str(p), "owner_agent_id": o} for p, o in zip(sources, owners, strict=True)]
                )
            ],
        )
        return out
    imported = timed(
        "import",
        lambda: [jobs.import_file(str(p), owner_agent_id=o).id for p, o in zip(sources, owners, strict=True)],
    )
    artifacts = [uuid.UUID(job_id).hex for job_id in imported]
    timed("export", lambda: [jobs.export(a, str(targets / f"{i}.bin")).id for i, a in enumerate(artifacts)])
    timed("delete owner", lambda: [jobs.delete_owner(o).id for o in owners])
    return out


@contextmanager
def small_session(rig: SmallRig) -> Iterator[tuple[ArtifactJobs, FinalEvents]]:
    with running(our_worker(rig.settings, rig.threads)), ArtifactJobs(settings=rig.settings) as jobs:
        events = FinalEvents(jobs)
        try:
            warm = rig.files("warm", 20)
            events.wait([jobs.import_file(str(p)).id for p in warm], timeout=120)  # boot, connections, scripts
            yield jobs, events
        finally:
            events.close()


def plain_pass(url: str, namespace: str, client: redis.Redis, count: int) -> tuple[float, int]:
    """``count`` plain no-op messages, enqueue to the last ``INCR``: (seconds, polls made)."""
    broker = RedisBroker(client=client, namespace=namespace, middleware=[])
    key = counter_key(namespace)
    goal = int(client.get(key) or 0) + count
    start = time.perf_counter()
    for _ in range(count):
        broker.enqueue(Message(queue_name=QUEUE, actor_name=ACTOR, args=(), kwargs={}, options={}))
    polls = 0
    while int(client.get(key) or 0) < goal:
        polls += 1
        time.sleep(0.002)
    return time.perf_counter() - start, polls + 1


# ------------------------------------------------------------------------ large imports


def settle_and_warm(sources: Sequence[Path], scratch: Path) -> None:
    """Freed memory handed back first, then the sources copied to scratch files and deleted:
    every row then writes into memory in the same state (see ``bench_throughput``)."""
    time.sleep(SETTLE_SECONDS)
    for i, source in enumerate(sources):
        target = scratch / f"warm-{i}.bin"
        shutil.copyfile(source, target)
        target.unlink()


#: Python's hashlib over a file, 1 MiB at a time into one buffer: the hash our imports run
#: (OpenSSL's SHA-256), one process per file.
HASHLIB = (
    "import hashlib, sys\n"
    "h, buf = hashlib.sha256(), memoryview(bytearray(1 << 20))\n"
    "with open(sys.argv[1], 'rb', buffering=0) as f:\n"
    "    while n := f.readinto(buf):\n"
    "        h.update(buf[:n])\n"
)


def all_at_once(commands: list[list[str]]) -> None:
    processes = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in commands]
    for process in processes:
        if process.wait() != 0:
            raise RuntimeError(f"{process.args} failed")


def big_rows(url: str, work: Path, big: int, levels: Sequence[int], runs: int, threads: int) -> list[dict]:
    sources = [work / f"big-{i}.bin" for i in range(max(levels))]
    for source in sources:
        write_source(source, big)
    scratch = work / "scratch"
    scratch.mkdir()
    rig = SmallRig(url, work, fsync=False, threads=threads)
    times: dict[tuple[str, int], list[float]] = {}
    try:
        with running(our_worker(rig.settings, threads)), ArtifactJobs(settings=rig.settings) as jobs:
            jobs.import_file(str(rig.files("warm", 1)[0])).wait(timeout=120)
            for _ in range(runs):
                for n in levels:
                    chosen = sources[:n]
                    outputs = [scratch / f"cp-{i}.bin" for i in range(n)]

                    def cp(chosen=chosen, outputs=outputs) -> None:
                        all_at_once([["cp", str(s), str(o)] for s, o in zip(chosen, outputs, strict=True)])

                    def sha(chosen=chosen) -> None:
                        all_at_once([["sha256sum", str(s)] for s in chosen])

                    def hashlib_sha(chosen=chosen) -> None:
                        all_at_once([[sys.executable, "-c", HASHLIB, str(s)] for s in chosen])

                    def imports(chosen=chosen) -> None:
                        for job in [jobs.import_file(str(s), owner_agent_id="big") for s in chosen]:
                            job.wait(timeout=600)

                    for name, fn in (("cp", cp), ("sha256sum", sha), ("hashlib", hashlib_sha), ("import", imports)):
                        settle_and_warm(chosen, scratch)
                        start = time.perf_counter()
                        fn()
                        times.setdefault((name, n), []).append(time.perf_counter() - start)
                        for output in outputs:
                            output.unlink(missing_ok=True)
                        if name == "import":
                            jobs.delete_owner("big").wait(timeout=600)
    finally:
        for source in sources:
            source.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    hash_one = big / statistics.median(times[("hashlib", levels[0])]) / levels[0]
    rows = []
    for n in levels:
        rate = {
            name: n * big / statistics.median(times[(name, n)]) for name in ("cp", "sha256sum", "hashlib", "import")
        }
        rows.append({"n": n, **rate, "hash_one": hash_one})
    return rows


# ------------------------------------------------------------------------ the run


def run(
    *,
    jobs_per_pass: int = 1000,
    count_jobs: int = 200,
    runs: int = 3,
    threads: int = 8,
    big_bytes: int = GIB,
    levels: Sequence[int] = (1, 2, 4),
    fsync_rows: Sequence[bool] = (False, True),
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Every measurement; what :func:`markdown_tables` prints."""
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory(prefix="bench-small-", dir=work_dir) as tmp:
        url = server.url
        work = Path(tmp) / "files"
        work.mkdir()
        client = redis.Redis.from_url(url)
        small: dict[str, list[float]] = {}
        counts: dict[str, Counts] = {}
        plain_ns = f"bench-plain-{uuid.uuid4().hex[:8]}"
        rigs = {fsync: SmallRig(url, work, fsync=fsync, threads=threads) for fsync in fsync_rows}

        def suffix(fsync: bool) -> str:
            return "fsync on" if fsync else "fsync off"

        if jobs_per_pass > 0:  # --jobs 0: only the large imports
            # The commands each kind costs, on a pass of its own.
            counter = CommandCounter(client)
            with running(plain_worker(url, plain_ns, threads)):
                plain_pass(url, plain_ns, client, 20)
                counter.start()
                _, polls = plain_pass(url, plain_ns, client, count_jobs)
                counts["plain Dramatiq no-op"] = counter.stop(minus_calls=polls)
            rig = rigs[fsync_rows[0]]
            with small_session(rig) as (jobs, events):
                sources = rig.files("count", count_jobs)
                owners = [f"count-owner-{i}" for i in range(count_jobs)]
                out = rig.work / f"{rig.settings.namespace}-count-out"
                out.mkdir()
                steps: list[tuple[str, Callable[[], list[str]]]] = [
                    (
                        "import",
                        lambda: [
                            jobs.import_file(str(p), owner_agent_id=o).id for p, o in zip(sources, owners, strict=True)
                        ],
                    ),
                    (
                        "export",
                        lambda: [
                            jobs.export(uuid.UUID(i).hex, str(out / f"{n}.bin")).id for n, i in enumerate(imported)
                        ],
                    ),
                    ("delete owner", lambda: [jobs.delete_owner(o).id for o in owners]),
                ]
                imported: list[str] = []
                for name, enqueue in steps:
                    counter.start()
                    ids = enqueue()
                    events.wait(ids)
                    counts[name] = counter.stop()
                    if name == "import":
                        imported = ids
                if hasattr(jobs, "import_files"):
                    batch_sources = rig.files("count-batch", count_jobs)
                    counter.start()
                    ids = [j.id for j in jobs.import_files([{"path": str(p)} for p in batch_sources])]
                    events.wait(ids)
                    counts["import (batch)"] = counter.stop()

            # Timed passes, round-robin: the baseline, then ours with fsync off and on.
            for r in range(runs):
                with running(plain_worker(url, plain_ns, threads)):
                    plain_pass(url, plain_ns, client, 20)
                    seconds, _ = plain_pass(url, plain_ns, client, jobs_per_pass)
                    small.setdefault("plain Dramatiq no-op", []).append(jobs_per_pass / seconds)
                for fsync, rig in rigs.items():
                    with small_session(rig) as (jobs, events):
                        for batch in (False, True):
                            for name, seconds in small_pass(
                                rig, jobs, events, f"r{r}{batch:d}", jobs_per_pass, batch
                            ).items():
                                small.setdefault(f"{name}, {suffix(fsync)}", []).append(jobs_per_pass / seconds)
        client.close()
        big = big_rows(url, work, big_bytes, levels, runs, threads) if levels else []
        load = os.getloadavg()
    return {
        "small": {name: statistics.median(values) for name, values in small.items()},
        "counts": counts,
        "big": big,
        "big_bytes": big_bytes,
        "jobs": jobs_per_pass,
        "count_jobs": count_jobs,
        "runs": runs,
        "threads": threads,
        "load": load,
    }


def markdown_tables(results: dict[str, Any]) -> str:
    small, counts = results["small"], results["counts"]
    baseline = small.get("plain Dramatiq no-op")
    lines = (
        []
        if not small
        else [
            f"Small jobs: {results['jobs']} per row, 1 worker process x {results['threads']} threads, "
            f"enqueue to final record, median of {results['runs']} runs; Redis commands per job over "
            f"{results['count_jobs']} jobs (enqueue included).",
            "",
            "| job | jobs/s | / plain no-op | Redis commands / job | round trips / job |",
            "|---|---:|---:|---:|---:|",
        ]
    )
    per_job = results["count_jobs"]
    for name, rate in small.items():
        kind = name.split(",")[0]
        count = counts.get(kind)
        ratio = f"{rate / baseline:.2f}x" if baseline else "-"
        commands = f"{count.commands / per_job:.1f}" if count else ""
        trips = f"{count.round_trips / per_job:.1f}" if count else ""
        lines.append(f"| {name} | {rate:,.0f} | {ratio} | {commands} | {trips} |")
    if results["big"]:
        size = results["big_bytes"] / GIB
        lines += [
            "",
            f"Concurrent large imports: N files of {size:g} GiB at once, aggregate GiB/s, median of "
            f"{results['runs']} runs; the single-transfer hash limit is one hashlib process (the hash imports run).",
            "",
            "| N | cp x N | sha256sum x N | hashlib x N | import x N | import / (N x hash limit) | import / cp |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["big"]:
            lines.append(
                f"| {row['n']} | {row['cp'] / GIB:.2f} | {row['sha256sum'] / GIB:.2f} | {row['hashlib'] / GIB:.2f} | "
                f"{row['import'] / GIB:.2f} | "
                f"{row['import'] / (row['n'] * row['hash_one']):.2f} | {row['import'] / row['cp']:.2f} |"
            )
    one, five, fifteen = results["load"]
    lines += ["", f"Load average at the end: {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per timed row (0: only the large imports)")
    parser.add_argument("--count-jobs", type=int, default=200, help="jobs per kind on the counting pass")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--concurrency", default="1,2,4", help="concurrent large imports per row ('' for none)")
    parser.add_argument("--no-fsync-on", action="store_true", help="only the fsync-off rows")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temp dir goes (a local disk)")
    args = parser.parse_args()
    results = run(
        jobs_per_pass=args.jobs,
        count_jobs=args.count_jobs,
        runs=args.runs,
        threads=args.threads,
        big_bytes=args.big_mib * MIB,
        levels=[int(n) for n in args.concurrency.split(",") if n],
        fsync_rows=(False,) if args.no_fsync_on else (False, True),
        work_dir=args.work_dir,
    )
    print(markdown_tables(results))


if __name__ == "__main__":
    main()
