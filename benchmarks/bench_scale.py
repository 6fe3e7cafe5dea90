"""Scale benchmark: store operations with the Redis index beside the scanning baseline.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000,10000,100000] [--imports 500]
                                               [--rounds 3] [--baseline-seconds 3] [--sweep-only 1000000] [--dir DIR]

For each store size N, two store directories are filled with the same N artifacts (512-byte
blobs, written directly in the on-disk format a paglets host writes: 100 owners of 1% each,
1% expired). One store uses the Redis index (built from disk by ``rebuild()``, timed), the
other the scanning ``ScanIndex`` (the reference store's semantics). On both, in this order:

1. imports through ``ArtifactStore.create_from_stream`` (1 KiB, declared size, a quota that
   is checked but never reached, fsync off); the baseline runs at least 5 imports and at most
   ``--baseline-seconds`` of them (its cost grows with N); the imported artifacts are then
   deleted again so both stores hold the same data;
2. ``list(owner_agent_id=...)`` of one owner (1% of N);
3. ``cleanup_temporary()`` with 1% of the artifacts expired;
4. ``delete_owner()`` of one owner (1% of N).

Steps 2-4 run ``--rounds`` times (default 3) on fresh targets: other owners, and expiry
cohorts of 1% each that the successive sweeps find expired; the median is shown.

The files are flushed (``sync``) before every timed operation, so writeback left by the
fill or by the previous operation is not billed to the next one. Both stores must give the
same answers (checked); times are printed side by side with the ratio baseline / index.
``--sweep-only`` sizes measure only the sweep (and the index build).
The targets of the scale issue are printed at the end.

Uses ``REDIS_URL`` when set (in its own namespace, whose keys are removed afterwards), else
an embedded Redis. Data goes to a temporary directory (or ``--dir``) removed per size.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from paglets_artifacts import ArtifactRef, ArtifactStore, Settings  # noqa: E402
from paglets_artifacts.redis_client import connect_redis  # noqa: E402
from paglets_artifacts.redis_server import redis_url_or_embedded  # noqa: E402
from paglets_artifacts.store.artifacts import metadata_json  # noqa: E402
from paglets_artifacts.store.layout import StoreLayout  # noqa: E402
from paglets_artifacts.store.redis_index import RedisIndex  # noqa: E402

HOST = "http://127.0.0.1:8470"
OWNERS = 100
BLOB = bytes(range(256)) * 2
BLOB_SHA256 = hashlib.sha256(BLOB).hexdigest()
QUOTA = 1 << 40


def cohort_expiry(now: float, cohort: int) -> float:
    """``expires_at`` of expiry cohort ``cohort`` (1% of the store each); sweeping at
    ``cohort_expiry(now, c) + 50`` finds exactly cohort ``c`` expired once the earlier ones are gone."""
    return now - 1000 + 100 * cohort


def fill(roots: list[Path], count: int, now: float, cohorts: int) -> None:
    """Write ``count`` artifacts into every root, the way a paglets host lays them out."""
    for root in roots:
        StoreLayout.at(root).ensure()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for number in range(count):
        artifact_id = uuid.UUID(int=number + 1).hex
        # Cohorts of 1% that expire one sweep after the other, spread over owners; 1% more
        # expire in the future; the rest never.
        spread = (number + number // OWNERS) % 100  # one in each run of 100, a different owner each run
        if spread % 10 == 7 and spread // 10 < cohorts:
            expires = cohort_expiry(now, spread // 10)
        else:
            expires = now + 86400 if spread == 8 else 0.0
        ref = ArtifactRef(
            host_url=HOST,
            artifact_id=artifact_id,
            name=f"a{number}.bin",
            size_bytes=len(BLOB),
            sha256=BLOB_SHA256,
            compression="",
            created_at=now,
            expires_at=expires,
            owner_agent_id=f"owner-{number % OWNERS:02d}",
        )
        meta = metadata_json(ref).encode()
        for layout in map(StoreLayout.at, roots):
            for path, data in ((layout.blob(artifact_id), BLOB), (layout.metadata(artifact_id), meta)):
                fd = os.open(path, flags, 0o644)
                os.write(fd, data)
                os.close(fd)


def timed(fn):
    # Flush first: writeback left by the previous operation (even atime updates of a
    # scan) must not be billed to this one.
    os.sync()
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def imports(store: ArtifactStore, *, count: int, budget_seconds: float | None) -> tuple[list[float], list[str]]:
    """Per-import seconds and the ids imported (after 3 unmeasured warm-up imports; stops
    after ``budget_seconds`` once 5 are measured)."""
    payload = b"i" * 1024
    costs, ids = [], []
    os.sync()
    started = time.perf_counter()
    for number in range(count + 3):
        t0 = time.perf_counter()
        result = store.create_from_stream(io.BytesIO(payload), size_bytes=len(payload), owner_agent_id="bench-import")
        if number >= 3:
            costs.append(time.perf_counter() - t0)
        ids.append(result.ref.artifact_id)
        if budget_seconds is not None and len(costs) >= 5 and time.perf_counter() - started > budget_seconds:
            break
    return costs, ids


def row(name: str, size: int, index_s: float, scan_s: float, unit: str = "s") -> dict:
    ratio = scan_s / index_s if index_s > 0 else float("inf")
    if unit == "imports/s":
        print(
            f"  {name:<32} {size:>9,}  {1 / index_s:>10,.0f}/s  {1 / scan_s:>10,.1f}/s  {ratio:>9,.1f}x"
            f"   ({index_s * 1000:.2f} ms vs {scan_s * 1000:.1f} ms per import, medians)"
        )
    else:
        print(f"  {name:<32} {size:>9,}  {index_s * 1000:>10,.1f}ms  {scan_s * 1000:>10,.1f}ms  {ratio:>9,.1f}x")
    return {"metric": name, "n": size, "index_seconds": index_s, "scan_seconds": scan_s, "ratio": ratio}


def measure(size: int, client: redis.Redis, base: Path, args: argparse.Namespace, *, sweep_only: bool) -> list[dict]:
    now = time.time()
    indexed_root, scanned_root = base / f"indexed-{size}", base / f"scanned-{size}"
    rounds = args.rounds
    fill_s, _ = timed(lambda: fill([indexed_root, scanned_root], size, now, rounds))
    os.sync()  # measure the operations, not the writeback of the files just written
    namespace = f"bench-scale-{uuid.uuid4().hex[:8]}"
    indexed = ArtifactStore(indexed_root, host_url=HOST, quota_bytes=QUOTA, fsync=False)
    indexed.index = RedisIndex(indexed.layout, indexed.layout.read_ref, client, namespace=namespace)
    scanned = ArtifactStore(scanned_root, host_url=HOST, quota_bytes=QUOTA, fsync=False)
    build_s, built = timed(indexed.index.rebuild)
    assert built["artifacts"] == size, built
    os.sync()
    print(
        f"\nN = {size:,}: filled 2 x {size:,} artifacts in {fill_s:.1f} s; index built by rebuild() in {build_s:.2f} s"
    )
    print(f"  {'operation':<32} {'artifacts':>9}  {'redis index':>12}  {'scan':>12}  {'scan/index':>10}")
    rows = [{"metric": "index rebuild", "n": size, "index_seconds": build_s, "scan_seconds": None, "ratio": None}]
    try:
        if not sweep_only:
            index_costs, index_ids = imports(indexed, count=args.imports, budget_seconds=None)
            scan_costs, scan_ids = imports(scanned, count=args.imports, budget_seconds=args.baseline_seconds)
            # Medians: this machine may be shared, and a median shrugs off another process's burst.
            index_median, scan_median = statistics.median(index_costs), statistics.median(scan_costs)
            result = row(
                f"imports ({len(index_costs)} / {len(scan_costs)})", size, index_median, scan_median, unit="imports/s"
            )
            result.update(
                metric="imports",
                index_imports=len(index_costs),
                scan_imports=len(scan_costs),
                index_mean_seconds=statistics.fmean(index_costs),
                scan_mean_seconds=statistics.fmean(scan_costs),
                index_p99_seconds=sorted(index_costs)[max(0, int(len(index_costs) * 0.99) - 1)],
            )
            rows.append(result)
            for store, ids in ((indexed, index_ids), (scanned, scan_ids)):
                for artifact_id in ids:
                    store.remove(artifact_id)

            # Each destructive or cached operation runs ``rounds`` times on fresh targets
            # (other owners, the next expiry cohort): the median shrugs off an I/O stall.
            index_times, scan_times = [], []
            for number in range(rounds):
                owner = f"owner-{10 + number:02d}"
                index_s, index_list = timed(lambda owner=owner: indexed.list(owner_agent_id=owner))
                scan_s, scan_list = timed(lambda owner=owner: scanned.list(owner_agent_id=owner))
                assert [r.artifact_id for r in index_list] == [r.artifact_id for r in scan_list]
                assert len(index_list) == size // OWNERS
                index_times.append(index_s)
                scan_times.append(scan_s)
            rows.append(
                row(
                    f"list one owner ({len(index_list):,})",
                    size,
                    statistics.median(index_times),
                    statistics.median(scan_times),
                )
            )

        index_times, scan_times = [], []
        for number in range(rounds):
            sweep_now = cohort_expiry(now, number) + 50
            index_s, index_report = timed(lambda sweep_now=sweep_now: indexed.cleanup_temporary(now=sweep_now))
            scan_s, scan_report = timed(lambda sweep_now=sweep_now: scanned.cleanup_temporary(now=sweep_now))
            assert index_report.expired_removed == scan_report.expired_removed == size // 100, (
                index_report,
                scan_report,
            )
            index_times.append(index_s)
            scan_times.append(scan_s)
        rows.append(
            row(
                f"sweep, 1% expired ({index_report.expired_removed:,})",
                size,
                statistics.median(index_times),
                statistics.median(scan_times),
            )
        )

        if not sweep_only:
            index_times, scan_times = [], []
            for number in range(rounds):
                owner = f"owner-{20 + number:02d}"
                index_s, index_deleted = timed(lambda owner=owner: indexed.delete_owner(owner).deleted)
                scan_s, scan_deleted = timed(lambda owner=owner: scanned.delete_owner(owner).deleted)
                assert sorted(r.artifact_id for r in index_deleted) == sorted(r.artifact_id for r in scan_deleted)
                index_times.append(index_s)
                scan_times.append(scan_s)
            rows.append(
                row(
                    f"delete one owner ({len(index_deleted):,})",
                    size,
                    statistics.median(index_times),
                    statistics.median(scan_times),
                )
            )
            assert indexed.index.used_bytes() == scanned.index.used_bytes()
    finally:
        keys = indexed.index.keys.existing(client)
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        shutil.rmtree(indexed_root, ignore_errors=True)
        shutil.rmtree(scanned_root, ignore_errors=True)
    return rows


def report_targets(rows: list[dict]) -> None:
    def find(metric: str, n: int) -> dict | None:
        return next((r for r in rows if r["metric"].startswith(metric) and r["n"] == n), None)

    sizes = sorted({r["n"] for r in rows if r["metric"] == "imports"})
    print("\nTargets")
    if len(sizes) >= 2:
        small, large = find("imports", sizes[0]), find("imports", sizes[-1])
        growth = large["index_seconds"] / small["index_seconds"]
        print(
            f"  median per-import cost at {sizes[-1]:,} / at {sizes[0]:,}: {growth:.2f}x (target <= 1.5x): "
            f"{'met' if growth <= 1.5 else 'NOT met'}"
        )
    for metric in ("sweep", "delete one owner"):
        measured = [r for r in rows if r["metric"].startswith(metric)]
        for item in measured:
            if item["n"] >= 100_000:
                ok = item["index_seconds"] < 1.0
                print(
                    f"  {metric} at {item['n']:,}: {item['index_seconds']:.3f} s (target < 1 s): "
                    f"{'met' if ok else 'NOT met'}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="store sizes to measure (comma-separated)")
    parser.add_argument("--sweep-only", default="", help="further sizes at which only the sweep is measured")
    parser.add_argument("--imports", type=int, default=500, help="imports through the Redis-indexed store per size")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        choices=range(1, 10),
        help="listings, sweeps and owner deletions per size (the median is shown)",
    )
    parser.add_argument("--baseline-seconds", type=float, default=3.0, help="time budget of the baseline's imports")
    parser.add_argument("--dir", default=None, help="where the stores are written (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    sizes = [int(item) for item in args.sizes.split(",") if item.strip()]
    sweep_sizes = [int(item) for item in args.sweep_only.split(",") if item.strip()]

    started = time.perf_counter()
    print(
        f"bench_scale: sizes {sizes}, sweep-only sizes {sweep_sizes}, {args.imports} indexed imports per size, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    rows: list[dict] = []
    with redis_url_or_embedded() as url, tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.dir) as tmp:
        client = connect_redis(Settings(redis_url=url))
        try:
            for size in sizes:
                rows += measure(size, client, Path(tmp), args, sweep_only=False)
            for size in sweep_sizes:
                rows += measure(size, client, Path(tmp), args, sweep_only=True)
        finally:
            client.close()
    report_targets(rows)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
