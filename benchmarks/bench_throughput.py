"""Throughput benchmark: verified import and export against the machine's own limit.

    .venv/bin/python benchmarks/bench_throughput.py [--size-mib 2048] [--repeat 3] [--no-fsync-rows]

In one run, on one source file and one filesystem, times

- the baselines: a plain copy (``cp`` and ``shutil.copyfile``), ``hashlib.sha256`` over
  the file (one reused buffer), and a reference-style loop (read 1 MiB, copy it into a new
  ``bytes``, hash it, write it, one chunk after another on one thread);
- the store: import (``create_from_path``), import of a ``Content-Length`` request body,
  export (``export_to_path``) and move-import (``create_from_path(delete_source=True)``
  from a fresh copy on the store's filesystem, made before each run and not timed);
- with ``fsync`` on, import, export and move-import beside ``cp`` followed by ``fsync``;
- the same import and export through a worker job: enqueue to result, on one real
  ``paglets-artifacts worker -p 1 -t 1`` (``dramatiq workers.registry``) process serving a store of its own on
  the same filesystem (fsync off, like the in-process rows), over an embedded Redis (or ``REDIS_URL`` when set,
  under a namespace of its own whose keys are deleted afterwards);

and prints medians beside the limit: the slower of the plain copy (the faster of ``cp``
and ``shutil.copyfile``) and hash-only, since a verified copy must both copy and hash and
the two can overlap. Then the peak RSS of a fresh process that imports (and one that
exports) the file, and that of the worker's forked worker process during its jobs. Rows run
round-robin, one repeat after another, so that noise from the machine falls on every row
alike; the first repeat runs in the table's order, later ones in a shuffled (seeded) order:
on a VM the cost of the page-cache pages a write takes depends on what the previous row
freed (pages freed after reaching the disk are often several times dearer to fill again),
and a fixed order would hand the same row the same luck every time.
Before each timed run (and its ``prepare``), untimed, the machine is left alone for a few
seconds and the source is then copied to a scratch file that is deleted at once
(``warm_free_memory``), so every row writes into memory in the same state.

To add a row (the same import through a worker job, say), write a function that does the
timed work and register it with ``@row`` (see ``ROWS``); ``prepare`` and ``cleanup`` hooks
run untimed around each repetition, and ``limit``/``target`` put its ratio in the table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import redis  # noqa: E402

from paglets_artifacts.jobs.client import ArtifactJobs  # noqa: E402
from paglets_artifacts.jobs.worker_process import WORKER_TIMEOUT_MS, WORKER_TIMEOUT_VARIABLE, WorkerProcess  # noqa: E402
from paglets_artifacts.redis_client import connect_redis  # noqa: E402
from paglets_artifacts.redis_server import EmbeddedRedis, delete_namespace  # noqa: E402
from paglets_artifacts.settings import Settings  # noqa: E402
from paglets_artifacts.store.artifacts import ArtifactStore  # noqa: E402

MIB = 1024 * 1024
HOST = "http://bench.invalid"
#: Reads per chunk in the reference-style loop and the hash-only baseline.
REFERENCE_CHUNK = MIB
#: Rows whose ratio is taken against hash-only rather than the copy limit.
HASH_LIMIT = "hash"
COPY_LIMIT = "copy"


@dataclass
class Bench:
    """Paths and stores one run shares; rows keep their own state in ``scratch``."""

    work: Path
    source: Path
    size: int
    store: ArtifactStore
    durable_store: ArtifactStore
    artifact_id: str = ""
    scratch: dict = field(default_factory=dict)
    #: called in reverse order when the run ends, however it ends (worker, Redis)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def output(self, name: str) -> Path:
        return self.work / "out" / name


@dataclass
class Row:
    """One line of the table.

    Parameters:
      name(str): what the row measures.
      run: the timed work, called with the ``Bench``.
      section(str): ``baseline``, ``store`` or ``fsync``; fsync rows run after all others.
      limit(str|None): ``copy`` (the slower of plain copy and hash-only) or ``hash``; the
        row's median is printed as a ratio to it. ``None`` for baselines.
      target(float|None): the ratio the row should stay within, printed beside it.
      reads(str|None): what the row reads, ``source`` or ``blob`` (the stored artifact); it is
        read through once, untimed, right before each run, so it comes from the page cache.
        ``None``: the row's ``prepare`` does its own reading.
      prepare, cleanup: untimed hooks around each repetition.
      note(str): printed under the table.
    """

    name: str
    run: Callable[[Bench], None]
    section: str = "store"
    limit: str | None = COPY_LIMIT
    target: float | None = None
    reads: str | None = "source"
    prepare: Callable[[Bench], None] | None = None
    cleanup: Callable[[Bench], None] | None = None
    note: str = ""
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


ROWS: list[Row] = []


def row(name: str, **options) -> Callable[[Callable[[Bench], None]], Callable[[Bench], None]]:
    """Register the decorated function as the timed work of a new row."""

    def register(run: Callable[[Bench], None]) -> Callable[[Bench], None]:
        ROWS.append(Row(name=name, run=run, **options))
        return run

    return register


def remove_output(name: str) -> Callable[[Bench], None]:
    def cleanup(bench: Bench) -> None:
        bench.output(name).unlink(missing_ok=True)

    return cleanup


def remove_imported(bench: Bench) -> None:
    artifact_id = bench.scratch.pop("imported", None)
    if artifact_id:
        bench.store.remove(artifact_id)


def fresh_copy(bench: Bench) -> None:
    """A private copy of the source on the store's filesystem, for a move to consume."""
    path = bench.output("move-source.bin")
    shutil.copyfile(bench.source, path)
    bench.scratch["move_source"] = path


# ---------------------------------------------------------------- baselines


@row("plain copy: cp", section="baseline", limit=None, cleanup=remove_output("cp.bin"))
def plain_cp(bench: Bench) -> None:
    subprocess.run(["cp", str(bench.source), str(bench.output("cp.bin"))], check=True)


@row("plain copy: shutil.copyfile", section="baseline", limit=None, cleanup=remove_output("copyfile.bin"))
def plain_copyfile(bench: Bench) -> None:
    shutil.copyfile(bench.source, bench.output("copyfile.bin"))


@row(f"hash only: hashlib.sha256, {REFERENCE_CHUNK // MIB} MiB reused buffer", section="baseline", limit=None)
def hash_only(bench: Bench) -> None:
    digest = hashlib.sha256()
    view = memoryview(bytearray(REFERENCE_CHUNK))
    with open(bench.source, "rb", buffering=0) as handle:
        while count := handle.readinto(view):
            digest.update(view[:count])
    bench.scratch["sha256"] = digest.hexdigest()


@row("reference-style loop: read, bytes(), hash, write", section="baseline", cleanup=remove_output("reference.bin"))
def reference_loop(bench: Bench) -> None:
    digest = hashlib.sha256()
    with open(bench.source, "rb") as source, open(bench.output("reference.bin"), "wb") as target:
        while data := source.read(REFERENCE_CHUNK):
            chunk = bytes(memoryview(data))  # the extra in-memory copy the reference makes
            digest.update(chunk)
            target.write(chunk)


# ---------------------------------------------------------------- the store, fsync off


@row("import: create_from_path", target=1.15, cleanup=remove_imported)
def store_import(bench: Bench) -> None:
    bench.scratch["imported"] = bench.store.create_from_path(bench.source).ref.artifact_id


@row("import: Content-Length request body", cleanup=remove_imported)
def store_import_body(bench: Bench) -> None:
    with open(bench.source, "rb") as body:
        result = bench.store.create_from_http_request({"Content-Length": str(bench.size)}, body)
    bench.scratch["imported"] = result.ref.artifact_id


@row("export: export_to_path", target=1.15, reads="blob", cleanup=remove_output("export.bin"))
def store_export(bench: Bench) -> None:
    bench.store.export_to_path(bench.artifact_id, bench.output("export.bin"))


@row(
    "move-import: delete_source, same filesystem",
    limit=HASH_LIMIT,
    target=1.1,
    prepare=fresh_copy,
    cleanup=remove_imported,
)
def store_move(bench: Bench) -> None:
    result = bench.store.create_from_path(bench.scratch.pop("move_source"), delete_source=True)
    bench.scratch["imported"] = result.ref.artifact_id


# ---------------------------------------------------------------- fsync on


@row("plain copy + fsync: cp; sync FILE", section="fsync", limit=None, cleanup=remove_output("cp-sync.bin"))
def plain_cp_fsync(bench: Bench) -> None:
    target = bench.output("cp-sync.bin")
    subprocess.run(["cp", str(bench.source), str(target)], check=True)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_durable(bench: Bench) -> None:
    artifact_id = bench.scratch.pop("durable", None)
    if artifact_id:
        bench.durable_store.remove(artifact_id)


@row("import, fsync on", section="fsync", cleanup=remove_durable)
def durable_import(bench: Bench) -> None:
    bench.scratch["durable"] = bench.durable_store.create_from_path(bench.source).ref.artifact_id


@row("export, fsync on", section="fsync", reads="blob", cleanup=remove_output("export-sync.bin"))
def durable_export(bench: Bench) -> None:
    bench.durable_store.export_to_path(bench.artifact_id, bench.output("export-sync.bin"))


@row(
    "move-import, fsync on",
    section="fsync",
    limit=HASH_LIMIT,
    prepare=fresh_copy,
    cleanup=remove_durable,
    note="move-import, fsync on: the moved blob's data is fsynced before the commit (the fresh copy's dirty pages)",
)
def durable_move(bench: Bench) -> None:
    result = bench.durable_store.create_from_path(bench.scratch.pop("move_source"), delete_source=True)
    bench.scratch["durable"] = result.ref.artifact_id


# ---------------------------------------------------------------- through a worker job

#: How long one job may take before the benchmark gives up on it.
JOB_TIMEOUT = 900.0


class WorkerRig:
    """Redis and one real ``paglets-artifacts worker -p 1 -t 1`` process, for the worker-job rows.

    The worker serves a store of its own (``<bench directory>-worker-store`` beside the bench
    directory, so the same filesystem), with the bench directory as its allowed root, fsync off like the
    in-process rows, no quota and a cap above the source's size.

    Parameters:
      work(Path): the bench directory.
      size(int): the source's size in bytes.
    """

    def __init__(self, work: Path, size: int):
        self.work = work
        self.worker_store = work.with_name(f"{work.name}-worker-store")
        self.size = size
        self.server: EmbeddedRedis | None = None
        self.process: subprocess.Popen | None = None
        self.client: redis.Redis | None = None
        self.namespace = ""
        self.artifact_id = ""  # the worker store's copy of the source, what exports read
        self.peaks: dict[str, list[float]] = {"import": [], "export": []}  # MiB
        self.peak_reset = True
        self.phases: dict[str, list[tuple[float, float]]] = {"import": [], "export": []}  # (queue s, in-worker s)

    def start(self) -> None:
        url = os.environ.get("REDIS_URL")
        if url:  # someone else's server: a namespace nobody else uses, deleted afterwards
            self.namespace = f"bench-throughput-{uuid.uuid4().hex}"
        else:
            self.server = EmbeddedRedis()
            url = self.server.start()
            self.namespace = "bench-throughput"
        self.settings = Settings(
            redis_url=url,
            namespace=self.namespace,
            # beside the bench directory, not in it: an allowed root must not contain a store
            store_root=self.worker_store,
            host_url=HOST,
            fsync=False,
            quota_bytes=None,
            max_artifact_bytes=2 * self.size + MIB,
            allowed_roots=(self.work,),
        )
        self.client = connect_redis(self.settings)
        self.jobs = ArtifactJobs(client=self.client, settings=self.settings)
        # the worker's store seen from here, through the same Redis index, to remove what rows import
        self.store = ArtifactStore.from_settings(self.settings, redis=self.client)
        command = WorkerProcess(settings=self.settings, processes=1, threads=1, pythonpath=[ROOT, ROOT / "src"])
        with open(self.work / "worker.log", "wb") as log:
            self.process = command.start(stdout=log, cwd=ROOT)
        warmup = self.work / "warmup.bin"
        warmup.write_bytes(b"warm up")
        try:  # imports and connections made once, before any timing
            self.store.remove(self.wait(self.jobs.import_file(str(warmup)), timeout=120)["artifact_id"])
        finally:
            warmup.unlink(missing_ok=True)
        self.artifact_id = self.wait(self.jobs.import_file(str(self.work / "source.bin")))["artifact_id"]
        os.sync()  # the first timed row must not pay for writing back this setup import

    def run(self, kind: str, job) -> dict:
        """Wait for a timed job; note how long it queued and how long the worker ran it."""
        enqueued = time.time()  # the record's times come from the worker's clock: the same machine
        result = self.wait(job)
        record = job.status()
        if record.started_at is not None and record.finished_at is not None:
            self.phases[kind].append((record.started_at - enqueued, record.finished_at - record.started_at))
        return result

    def wait(self, job, timeout: float = JOB_TIMEOUT) -> dict:
        try:
            return job.wait(timeout=timeout)
        except Exception:
            log = (self.work / "worker.log").read_text(errors="replace")[-3000:]
            print(f"worker job {job.id} failed; the worker's log ends with:\n{log}", file=sys.stderr)
            raise

    def worker_pid(self) -> int:
        """The forked worker process: a child of the main process with the main's command line."""
        assert self.process is not None
        main = self.process.pid
        with open(f"/proc/{main}/cmdline", "rb") as handle:
            command = handle.read()
        with open(f"/proc/{main}/task/{main}/children") as handle:
            children = [int(pid) for pid in handle.read().split()]
        for pid in children:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read() == command:
                    return pid
        raise RuntimeError(f"no forked worker process under dramatiq's main process {main}")

    def reset_peak(self) -> None:
        """Set the worker process's VmHWM back to its current RSS (``clear_refs`` 5)."""
        try:
            with open(f"/proc/{self.worker_pid()}/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            self.peak_reset = False  # the peak then covers the worker's whole life

    def record_peak(self, kind: str) -> None:
        with open(f"/proc/{self.worker_pid()}/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        self.peaks[kind].append(kib / 1024)

    def stop(self) -> None:
        """Stop the worker (its whole process group) and Redis; delete our keys from a shared Redis."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.client is not None:
            if self.server is None and self.namespace:
                delete_namespace(self.client, self.namespace)
            self.client.close()
            self.client = None
        if self.server is not None:
            self.server.close()
            self.server = None
        shutil.rmtree(self.worker_store, ignore_errors=True)


def worker_rig(bench: Bench) -> WorkerRig:
    """The run's worker, started on first use (untimed) and stopped when the run ends."""
    rig = bench.scratch.get("worker")
    if rig is None:
        rig = bench.scratch["worker"] = WorkerRig(bench.work, bench.size)
        bench.closers.append(rig.stop)
        # An idle Dramatiq consumer backs off up to its worker timeout before polling again.
        timeout = os.environ.get(WORKER_TIMEOUT_VARIABLE, f"{WORKER_TIMEOUT_MS} (the worker command's default)")
        print(
            f"starting Redis and a worker (paglets-artifacts worker -p 1 -t 1, {WORKER_TIMEOUT_VARIABLE}"
            f" {timeout} ms) ...",
            flush=True,
        )
        rig.start()
    return rig


def before_worker_import(bench: Bench) -> None:
    worker_rig(bench).reset_peak()


def after_worker_import(bench: Bench) -> None:
    rig = worker_rig(bench)
    rig.record_peak("import")
    rig.store.remove(bench.scratch.pop("worker_imported"))


def before_worker_export(bench: Bench) -> None:
    rig = worker_rig(bench)
    read_through(rig.store.blob_path(rig.artifact_id))
    rig.reset_peak()


def after_worker_export(bench: Bench) -> None:
    worker_rig(bench).record_peak("export")
    bench.output("worker-export.bin").unlink(missing_ok=True)


@row(
    "worker job: import_file, enqueue to result",
    target=1.25,
    prepare=before_worker_import,
    cleanup=after_worker_import,
    note="worker job rows: cpu s is this process's only (enqueue and wait); the transfer runs in the worker",
)
def worker_import(bench: Bench) -> None:
    rig = worker_rig(bench)
    bench.scratch["worker_imported"] = rig.run("import", rig.jobs.import_file(str(bench.source)))["artifact_id"]


@row(
    "worker job: export, enqueue to result",
    target=1.25,
    reads=None,
    prepare=before_worker_export,
    cleanup=after_worker_export,
)
def worker_export(bench: Bench) -> None:
    rig = worker_rig(bench)
    rig.run("export", rig.jobs.export(rig.artifact_id, str(bench.output("worker-export.bin"))))


# ---------------------------------------------------------------- running


def write_source(path: Path, size: int) -> None:
    block = os.urandom(min(size, 8 * MIB)) or b""
    with open(path, "wb") as handle:
        left = size
        while left:
            step = min(left, len(block))
            handle.write(block[:step])
            left -= step
        handle.flush()
        os.fsync(handle.fileno())


def read_through(path: Path) -> None:
    view = memoryview(bytearray(4 * MIB))
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(view):
            pass


#: Seconds to wait, before a row's warm-up copy, for memory that earlier rows freed to be
#: handed back to a VM's host (Linux reports free pages 2 s after they are freed).
SETTLE_SECONDS = 3.0


def warm_free_memory(bench: Bench) -> None:
    """Let freed memory settle, then copy the source to a scratch file and delete it, so the
    row that follows writes into as much memory as it needs, just written to.

    On a VM whose host takes back the guest's free memory (free page reporting, ballooning),
    the first write into memory the host took back costs several times a copy, and Linux
    hands freed memory back in passes that start 2 s after a free. On the 2-vCPU VM this
    was written on, a 2 GiB ``cp`` took 0.5 s right after another one and 1.9 to 3.3 s when
    started 3 s after the previous one's output was deleted; our import took 1.3 s or 1.9 s
    by whether such a pass fell inside it. Waiting ``SETTLE_SECONDS`` lets the pass that
    earlier rows' frees started finish first; the copy then pays for taking memory back
    from the host, and its deletion leaves warm free memory that the next pass, 2 s away,
    has not yet handed back when the row starts. Rows then measure the row, not the VM.
    """
    time.sleep(SETTLE_SECONDS)
    scratch = bench.output("warm-up.bin")
    shutil.copyfile(bench.source, scratch)
    scratch.unlink()


def time_row(bench: Bench, entry: Row) -> float:
    if entry.reads is not None:
        read_through(bench.store.blob_path(bench.artifact_id) if entry.reads == "blob" else bench.source)
    warm_free_memory(bench)  # before ``prepare``: a fresh copy for a move must stay the only dirty data
    if entry.prepare is not None:
        entry.prepare(bench)
    before = os.times()
    start = time.perf_counter()
    entry.run(bench)
    elapsed = time.perf_counter() - start
    after = os.times()
    if entry.cleanup is not None:
        entry.cleanup(bench)
    entry.times.append(elapsed)
    # CPU seconds of this process's threads and of waited-for children (cp): less noisy than wall time
    entry.cpu.append(sum(after[:4]) - sum(before[:4]))
    return elapsed


RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    from paglets_artifacts.store.artifacts import ArtifactStore

    def high_water():  # this process's own peak: VmHWM belongs to the address space exec made
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    store = ArtifactStore(sys.argv[2], host_url="http://bench.invalid", fsync=False, max_artifact_bytes=None,
                          quota_bytes=None)
    before = high_water()
    if sys.argv[3] == "import":
        store.remove(store.create_from_path(sys.argv[4]).ref.artifact_id)
    else:
        store.export_to_path(sys.argv[4], sys.argv[5])
    print(before, high_water(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def peak_rss(bench: Bench, kind: str) -> tuple[float, float, float]:
    """(MiB before the transfer, peak MiB, ru_maxrss MiB) of a fresh process doing one transfer.

    ``ru_maxrss`` also counts the parent's peak at the time of the spawn (Linux keeps it
    across ``exec``), so the process's own ``VmHWM`` is the figure that counts.
    """
    args = [sys.executable, "-c", RSS_SCRIPT, str(ROOT / "src"), str(bench.store.root), kind]
    args += [str(bench.source)] if kind == "import" else [bench.artifact_id, str(bench.output("rss.bin"))]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout.split()
    bench.output("rss.bin").unlink(missing_ok=True)
    before, peak, maxrss = (int(value) / 1024 for value in out)  # KiB
    return before, peak, maxrss


def page_cache_note(size: int) -> str:
    try:
        with open("/proc/meminfo") as handle:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
    except OSError:
        return "page cache: unknown"
    available = info.get("MemAvailable", 0)
    fits = "fits" if 4 * size < available else "may NOT fit"  # source, blob, output, warm-up copy
    return f"page cache: the source ({size / MIB:.0f} MiB) {fits} in {available / MIB / 1024:.1f} GiB available memory"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the source, outputs and store live")
    parser.add_argument("--no-fsync-rows", action="store_true", help="skip the fsync-on section")
    args = parser.parse_args()
    size = args.size_mib * MIB

    work = Path(tempfile.mkdtemp(prefix="bench-throughput-", dir=args.dir))
    bench: Bench | None = None
    try:
        (work / "out").mkdir()
        source = work / "source.bin"
        print(f"writing a {args.size_mib} MiB source in {work} ...", flush=True)
        write_source(source, size)
        options = dict(host_url=HOST, max_artifact_bytes=None, quota_bytes=None)
        bench = Bench(
            work=work,
            source=source,
            size=size,
            store=ArtifactStore(work / "store", fsync=False, **options),
            durable_store=ArtifactStore(work / "store", fsync=True, **options),
        )
        if os.stat(bench.store.tmp_dir).st_dev != os.stat(source).st_dev:
            raise SystemExit("the store and the source must share a filesystem for move-import")
        bench.artifact_id = bench.store.create_from_path(source).ref.artifact_id  # what export rows read
        hash_only(bench)  # warms the page cache with the source
        expected = bench.scratch.pop("sha256")
        if bench.store.ref(bench.artifact_id).sha256 != expected:
            raise SystemExit("the store's sha256 differs from hashlib's")

        rows = [entry for entry in ROWS if not (args.no_fsync_rows and entry.section == "fsync")]
        load_before = os.getloadavg()[0]
        for section in ("main", "fsync"):
            group = [entry for entry in rows if (entry.section == "fsync") == (section == "fsync")]
            for repeat in range(args.repeat):
                order = list(group)
                if repeat:  # what a row costs depends on what ran before it (see the module docstring)
                    random.Random(repeat).shuffle(order)
                for entry in order:
                    elapsed = time_row(bench, entry)
                    print(f"  [{repeat + 1}/{args.repeat}] {entry.name:55s} {elapsed:7.3f} s", flush=True)
            if section == "main":
                os.sync()  # the fsync rows start with nothing else waiting for the disk
        load_after = os.getloadavg()[0]

        rss = {kind: peak_rss(bench, kind) for kind in ("import", "export")}
        report(bench, rows, args, (load_before, load_after), rss)
    finally:
        try:
            for close in reversed(bench.closers if bench is not None else []):
                close()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def report(bench: Bench, rows: list[Row], args: argparse.Namespace, load: tuple[float, float], rss: dict) -> None:
    median = {entry.name: statistics.median(entry.times) for entry in rows}
    copy = min(median[plain_cp_row.name], median[plain_copyfile_row.name])
    hashed = median[hash_only_row.name]
    limits = {COPY_LIMIT: max(copy, hashed), HASH_LIMIT: hashed}
    durable_limits = {COPY_LIMIT: max(median.get(plain_cp_fsync_row.name, 0.0), hashed), HASH_LIMIT: hashed}
    reference = median[reference_row.name]
    gib = bench.size / (1024 * MIB)

    print()
    print(
        f"{args.size_mib} MiB, medians of {args.repeat}, {os.cpu_count()} CPUs;"
        f" 1-minute load average {load[0]:.2f} before and {load[1]:.2f} after the timed rows"
    )
    print(page_cache_note(bench.size) + "; each row's input (the source, or the stored")
    print("blob for exports) is read through untimed right before the row runs, so reads come from the page cache;")
    print(
        f"then, after {SETTLE_SECONDS:.0f} s idle, the source is copied to a scratch file that is deleted at once "
        "(untimed),"
    )
    print("so every row writes into memory that was just written to (on a VM, memory the host took back costs")
    print("several times a copy; see warm_free_memory).")
    print("Writes land in the page cache; rows without fsync are not flushed, and each output is deleted")
    print("right after its run. The limit is max(plain copy, hash-only); fsync rows use max(cp + fsync, hash-only).")
    print()
    header = (
        f"{'row':55s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'cpu s':>6s} {'GiB/s':>6s}"
        f" {'x limit':>8s} {'target':>7s} {'vs ref':>7s}"
    )
    print(header)
    print("-" * len(header))
    for entry in rows:
        value = median[entry.name]
        limit_table = durable_limits if entry.section == "fsync" else limits
        ratio = f"{value / limit_table[entry.limit]:8.2f}" if entry.limit else f"{'':8s}"
        if entry.limit == HASH_LIMIT:
            ratio = ratio + "h"
        target = f"{entry.target:6.2f}" + ("h" if entry.limit == HASH_LIMIT else " ") if entry.target else f"{'':7s}"
        compared = entry.section != "baseline" or entry is reference_row
        versus = f"{reference / value:6.2f}x" if compared else f"{'':7s}"
        print(
            f"{entry.name:55s} {value:9.3f} {min(entry.times):7.3f} {max(entry.times):7.3f}"
            f" {statistics.median(entry.cpu):6.2f} {gib / value:6.2f}"
            f" {ratio:>8s} {target:>7s} {versus:>7s}"
        )
    print()
    print(
        f"limit = {limits[COPY_LIMIT]:.3f} s (plain copy {copy:.3f} s, hash-only {hashed:.3f} s);"
        " ratios marked h are to hash-only; 'vs ref' is the reference-style loop's time over the row's;"
        " cpu s is the median CPU time of all threads (and of cp)"
    )
    for entry in rows:
        if entry.note:
            print(entry.note)
    for kind, (before, peak, maxrss) in rss.items():
        verdict = "under" if peak * MIB < 150e6 else "OVER"
        print(
            f"peak RSS of a fresh process that {kind}s the file: {peak:.1f} MiB VmHWM, {before:.1f} MiB before"
            f" the transfer (ru_maxrss {maxrss:.1f} MiB); target < 150 MB: {verdict}"
        )
    rig = bench.scratch.get("worker")
    if rig is not None:
        scope = "reset before each job" if rig.peak_reset else "over the worker's whole life (reset refused)"
        for kind, peaks in rig.peaks.items():
            if peaks:
                verdict = "under" if max(peaks) * MIB < 150e6 else "OVER"
                print(
                    f"peak RSS of the dramatiq worker process during its {kind} jobs: {max(peaks):.1f} MiB VmHWM"
                    f" (max of {len(peaks)}; {scope}); target < 150 MB: {verdict}"
                )
        for kind, phases in rig.phases.items():
            if phases:
                queued = ", ".join(f"{queue:.3f}" for queue, _ in phases)
                ran = ", ".join(f"{work:.3f}" for _, work in phases)
                print(f"worker {kind} jobs, in run order: enqueue to start {queued} s; start to finish {ran} s")


plain_cp_row, plain_copyfile_row, hash_only_row, reference_row = ROWS[:4]
plain_cp_fsync_row = next(entry for entry in ROWS if entry.run is plain_cp_fsync)

if __name__ == "__main__":
    main()
