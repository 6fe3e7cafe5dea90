"""The small-job benchmark's module imports and its tables print (no timing is asserted)."""

from __future__ import annotations

from benchmarks.bench_small_jobs import GIB, Counts, markdown_tables


def test_the_tables_show_every_row_its_ratio_and_its_commands_per_job():
    results = {
        "small": {"plain Dramatiq no-op": 1000.0, "import, fsync off": 500.0, "import, fsync on": 250.0},
        "counts": {
            "plain Dramatiq no-op": Counts(commands=24, round_trips=6),
            "import": Counts(commands=100, round_trips=16),
        },
        "big": [
            {
                "n": 2,
                "cp": 2 * GIB,
                "sha256sum": 1.6 * GIB,
                "hashlib": 1.6 * GIB,
                "import": 1.2 * GIB,
                "hash_one": 0.8 * GIB,
            }
        ],
        "big_bytes": GIB,
        "jobs": 10,
        "count_jobs": 2,
        "runs": 1,
        "threads": 8,
        "load": (0.5, 0.4, 0.3),
    }
    text = markdown_tables(results)
    assert "| plain Dramatiq no-op | 1,000 | 1.00x | 12.0 | 3.0 |" in text
    assert "| import, fsync off | 500 | 0.50x | 50.0 | 8.0 |" in text
    assert "| import, fsync on | 250 | 0.25x | 50.0 | 8.0 |" in text
    assert "| 2 | 2.00 | 1.60 | 1.60 | 1.20 | 0.75 | 0.60 |" in text
