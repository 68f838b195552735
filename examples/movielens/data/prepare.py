"""Writes MovieLens-100k as the Parquet files the `movielens` feature repository reads.

`python examples/movielens/data/prepare.py [OUTPUT_DIR]` (or `make movielens-data`). The data
ships inside the `recbole==1.2.1` package, installed with `--no-deps` (its dependencies are
not needed to read three TSV files, so recbole itself is never imported: the files are found
with `importlib.util.find_spec`). Its licence bars redistribution: the outputs are built, never
committed. This step only converts; every feature is computed by materialization jobs.

- `ratings.parquet`: one row per rating (user_id, item_id, rating, event_ts from the unix
  timestamp, in UTC) with the rated movie's `genres`, as a production event log carries the
  item's category;
- `movies.parquet`: item_id, title, release_year (null where the file has none), genres;
- `users.parquet`: user_id, age, gender, occupation, zip_code.

Movies and users are static attributes: their `event_ts` is `ATTRIBUTES_TS`, the start of the
first day with a rating, so that every rating sees them. Deterministic: rows are sorted
(ratings by time, user, item).
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
PACKAGE = "recbole"
DATASET = Path("dataset_example") / "ml-100k"
ATTRIBUTES_TS = datetime(1997, 9, 20, tzinfo=UTC)
EVENT_TS = pa.timestamp("us", tz="UTC")
GENRES = pa.list_(pa.string())
ROWS = {"ratings": 100_000, "movies": 1_682, "users": 943}


def dataset_dir() -> Path:
    """Where the installed recbole package keeps ml-100k (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"{PACKAGE} is not installed: `make movielens-data` installs recbole==1.2.1 "
            "with --no-deps into .venv"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / DATASET
    if not directory.is_dir():
        raise SystemExit(f"{directory} is missing: reinstall recbole==1.2.1")
    return directory


def read_tsv(path: Path, types: dict[str, pa.DataType]) -> pa.Table:
    """A recbole atomic file: tab-separated, headers `name:kind`, no quoting."""
    with path.open(encoding="utf-8") as stream:
        header = stream.readline().rstrip("\n").split("\t")
    names = [column.split(":", 1)[0] for column in header]
    table = pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False),
    )
    return table.select(list(types))


def movies(directory: Path) -> pa.Table:
    raw = read_tsv(
        directory / "ml-100k.item",
        {
            "item_id": pa.int64(),
            "movie_title": pa.string(),
            "release_year": pa.string(),
            "class": pa.string(),
        },
    )
    year = raw.column("release_year")
    # Two rows carry no year ("unkonwn", "V"): null rather than a guess.
    numeric = pc.match_substring_regex(year, r"^\d{4}$")
    release_year = pc.if_else(numeric, year, pa.scalar(None, pa.string())).cast(pa.int64())
    table = pa.table(
        {
            "item_id": raw.column("item_id"),
            "title": raw.column("movie_title"),
            "release_year": release_year,
            "genres": pc.split_pattern(raw.column("class"), " ").cast(GENRES),
        }
    )
    return _with_attributes_ts(table.sort_by("item_id"))


def users(directory: Path) -> pa.Table:
    table = read_tsv(
        directory / "ml-100k.user",
        {
            "user_id": pa.int64(),
            "age": pa.int64(),
            "gender": pa.string(),
            "occupation": pa.string(),
            "zip_code": pa.string(),
        },
    )
    return _with_attributes_ts(table.sort_by("user_id"))


def ratings(directory: Path, movie_table: pa.Table) -> pa.Table:
    raw = read_tsv(
        directory / "ml-100k.inter",
        {
            "user_id": pa.int64(),
            "item_id": pa.int64(),
            "rating": pa.int64(),
            "timestamp": pa.int64(),
        },
    )
    seconds = pc.multiply(raw.column("timestamp"), 1_000_000)
    table = pa.table(
        {
            "user_id": raw.column("user_id"),
            "item_id": raw.column("item_id"),
            "rating": raw.column("rating"),
            "event_ts": seconds.cast(pa.timestamp("us")).cast(EVENT_TS),
        }
    )
    # Every rated item is in the movie file; a rating of an unknown one would fail here.
    position = pc.index_in(table.column("item_id"), movie_table.column("item_id"))
    if position.null_count:
        raise SystemExit("ml-100k.inter rates items that ml-100k.item does not list")
    table = table.append_column("genres", movie_table.column("genres").take(position))
    order = [("event_ts", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")]
    return table.sort_by(order)


def _with_attributes_ts(table: pa.Table) -> pa.Table:
    return table.append_column("event_ts", pa.array([ATTRIBUTES_TS] * table.num_rows, EVENT_TS))


def write(tables: dict[str, pa.Table], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        if table.num_rows != ROWS[name]:
            raise SystemExit(f"{name}: expected {ROWS[name]:,} rows, found {table.num_rows:,}")
        partial = output / f".{name}.parquet.tmp"
        pq.write_table(table, partial, compression="zstd")
        partial.replace(output / f"{name}.parquet")


def main(output: Path = HERE) -> int:
    directory = dataset_dir()
    movie_table = movies(directory)
    tables = {
        "ratings": ratings(directory, movie_table),
        "movies": movie_table,
        "users": users(directory),
    }
    write(tables, output)
    counts = ", ".join(f"{table.num_rows:,} {name}" for name, table in tables.items())
    print(f"wrote {output}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
