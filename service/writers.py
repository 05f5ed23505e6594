"""Score output (JSONL, CSV or Parquet, chosen by OUT's extension) and crash-safe resume state.

One row per input: path, score, label, threshold, model, model_version, width, height,
error, reason ("model" or "declared"), provenance (the file's provenance block), detail
(the faces, the video timeline or the heatmap when those modes ran), family and family_score
(the generator family, models/evidence/families.py: empty for real and error rows and for a
model without a family head, "unknown" when the open-set rule fires). In JSONL these two are
JSON objects; CSV cells and Parquet columns hold them as JSON text (a Parquet struct would need
one schema for every provenance block and detail kind, which they do not share). `read_rows`
gives objects whatever the format, and also reads JSONL written before they were objects
(text inside JSON), so a job started by an older fakelens resumes. The same holds for a job
started before the family columns existed (LEGACY_COLUMNS): its new rows carry them, and when
the job completes OUT is rewritten once so that every row does (JSONL rows and CSV cells of the
old rows get null/empty; `OUT.partial/legacy-columns` marks such a job, so a kill after that
rewrite is recognised on the rerun); Parquet parts of the old schema are merged with null families. A job writing OUT keeps its state in `OUT.partial/`:

- `job.json`: what the job is (model name/version, input fingerprint, format, filter);
  a rerun with a different model or input list is refused unless --overwrite.
- `progress.json`: the last commit `{done, position, scored, flagged, errors}`, replaced
  atomically after each batch. `done` counts inputs finished, in input order;
  `position` is where OUT's committed data ends (bytes for JSONL/CSV, part count for
  Parquet).

Each batch is written and fsynced *before* its commit, so after a kill -9 anywhere the
rerun truncates OUT back to `position` (dropping a torn or uncommitted tail) and goes on
from input `done`: no row is lost or written twice. The commit does not depend on what
OUT holds, so `--only-synthetic` (rows filtered out of OUT) resumes just as exactly.
Parquet batches go to `OUT.partial/parts/part-NNNNNN.parquet` (each written atomically)
and are merged into OUT atomically at the end. `OUT.partial/` is removed once OUT is
complete.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.core.atomic import atomic_write, atomic_write_text

COLUMNS = ("path", "score", "label", "threshold", "model", "model_version", "width", "height", "error",
           "reason", "provenance", "detail", "family", "family_score")
# The columns before the family head (kept last, so an old CSV header is a prefix of the new one)
LEGACY_COLUMNS = COLUMNS[:12]
LEGACY_MARK = "legacy-columns"  # in OUT.partial/: this job's OUT was started without the family columns
JSON_COLUMNS = ("provenance", "detail")  # objects in rows and JSONL; JSON text in CSV and Parquet
FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
STATE_SUFFIX = ".partial"


def output_format(out: Path) -> str:
    fmt = FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise ValueError(f"output {out} has an unknown extension; end it with one of {sorted(FORMATS)}")
    return fmt


def state_dir(out: Path) -> Path:
    return out.with_name(out.name + STATE_SUFFIX)


def arrow_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("score", pa.float64()),
            ("label", pa.string()),
            ("threshold", pa.float64()),
            ("model", pa.string()),
            ("model_version", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("error", pa.string()),
            ("reason", pa.string()),
            ("provenance", pa.string()),
            ("detail", pa.string()),
            ("family", pa.string()),
            ("family_score", pa.float64()),
        ]
    )


# ---- encoding -------------------------------------------------------------------------


def as_text(row: dict[str, Any]) -> dict[str, Any]:
    """The row with provenance and detail as JSON text (CSV cells, Parquet string columns)."""
    return {**row, **{c: json.dumps(row[c], sort_keys=True) for c in JSON_COLUMNS
                      if row.get(c) is not None and not isinstance(row[c], str)}}


def as_objects(row: dict[str, Any]) -> dict[str, Any]:
    """The row with provenance and detail as objects (JSONL, readers); JSON text is parsed."""
    return {**row, **{c: json.loads(row[c]) for c in JSON_COLUMNS if isinstance(row.get(c), str)}}


def _encode(rows: list[dict[str, Any]], fmt: str, header: bool = False) -> bytes:
    if fmt == "jsonl":
        return "".join(
            json.dumps({c: r[c] for c in COLUMNS}, ensure_ascii=False) + "\n" for r in map(as_objects, rows)
        ).encode()
    rows = [as_text(r) for r in rows]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    # repr keeps every float64 digit, so a CSV score round-trips exactly like JSONL's.
    writer.writerows(
        [
            ["" if r[c] is None else repr(r[c]) if isinstance(r[c], float) else r[c] for c in COLUMNS]
            for r in rows
        ]
    )
    return buf.getvalue().encode()


def _decode_csv_value(column: str, text: str | None) -> Any:
    if text is None or (text == "" and column in ("score", "label", "width", "height", "error", "reason",
                                                  "provenance", "detail", "family", "family_score")):
        return None  # None: a short row of a job started before the family columns
    if column in ("score", "threshold", "family_score"):
        return float(text)
    if column in ("width", "height"):
        return int(text)
    return text


def read_rows(out: Path) -> list[dict[str, Any]]:
    """All rows of a finished output file, typed as written, provenance and detail as objects (for
    tests, reports and merges); a column an older fakelens did not write (family) reads as None."""
    return [as_objects({**dict.fromkeys(COLUMNS), **r}) for r in _read_raw(Path(out))]


def _read_raw(out: Path) -> list[dict[str, Any]]:
    fmt = output_format(out)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(out).to_pylist()
    text = out.read_text(encoding="utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line]
    return [{c: _decode_csv_value(c, v) for c, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def write_table(table, out: Path) -> None:
    """Write a whole pyarrow table (COLUMNS) to OUT in its format, atomically."""
    fmt = output_format(out)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        atomic_write(out, lambda tmp: pq.write_table(table.select(list(COLUMNS)), tmp))
        return
    data = _encode(table.select(list(COLUMNS)).to_pylist(), fmt, header=fmt == "csv")
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))


# ---- sinks: append committed batches ----------------------------------------------------


def _first_line(out: Path) -> bytes:
    with open(out, "rb") as f:
        return f.readline()


def _is_legacy(fmt: str, first: bytes) -> bool:
    """Whether OUT's first line (CSV header, first JSONL row) was written without the family columns."""
    if fmt == "csv":
        return first.rstrip(b"\r\n") == ",".join(LEGACY_COLUMNS).encode()
    try:
        return "family" not in json.loads(first)
    except ValueError:
        return False


def _upgrade(out: Path, fmt: str) -> None:
    """Rewrite a complete OUT started without the family columns so every row has them (atomically)."""
    text = out.read_text(encoding="utf-8")
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([r + [""] * (len(COLUMNS) - len(r)) for r in rows[1:]])
        data = buf.getvalue()
    else:
        data = "".join(json.dumps({**dict.fromkeys(COLUMNS), **json.loads(line)}, ensure_ascii=False) + "\n"
                       for line in text.splitlines() if line)
    atomic_write(out, lambda tmp: Path(tmp).write_text(data, encoding="utf-8"))


class TextSink:
    """JSONL/CSV appended in place; `position` is the committed byte length.

    OUT started by an older fakelens (LEGACY_COLUMNS: no family) gets rows with every column
    appended (the old CSV header is a prefix of the new one) and is rewritten with the family
    columns on every row by `finish`; `state` (OUT.partial/) keeps the mark that says so."""

    def __init__(self, out: Path, fmt: str, position: int, state: Path | None = None):
        self.out, self.fmt = out, fmt
        self.legacy = self.upgraded = False
        mark = state / LEGACY_MARK if state is not None else None
        if position > 0 and out.exists():
            legacy = _is_legacy(fmt, _first_line(out))
            if mark is not None and mark.exists() and not legacy:
                # finish() already rewrote this complete legacy job; only the state's removal was lost
                self.upgraded = True
                self.file = open(out, "rb")  # noqa: SIM115 (closed in close())
                return
            if legacy and mark is not None:
                atomic_write_text(mark, "OUT was started without the family columns; finish() adds them\n")
                self.legacy = True
        size = out.stat().st_size if out.exists() else 0
        if size < position:
            raise ValueError(
                f"{out} is shorter ({size} bytes) than its committed progress ({position} bytes): it was changed "
                "outside this job; pass --overwrite to start over"
            )
        self.file = open(out, "r+b" if out.exists() else "w+b")  # noqa: SIM115 (closed in close())
        self.file.truncate(position)  # drops a torn or uncommitted tail left by a kill
        self.file.seek(position)
        if position == 0 and fmt == "csv":
            self.file.write(_encode([], fmt, header=True))

    def write(self, rows: list[dict[str, Any]]) -> int:
        if self.upgraded:
            if rows:
                raise ValueError(f"{self.out} is complete; pass --overwrite to start over")
            return self.file.seek(0, os.SEEK_END)
        if rows:
            self.file.write(_encode(rows, self.fmt))
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def finish(self) -> None:
        self.close()
        if self.legacy:
            _upgrade(self.out, self.fmt)
            self.legacy = False

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


class ParquetSink:
    """One atomically written part file per non-empty batch; merged into OUT at the end."""

    def __init__(self, out: Path, parts: Path, position: int):
        self.out, self.parts, self.position = out, parts, position
        parts.mkdir(parents=True, exist_ok=True)
        if len(self._part_files()) < position:
            raise ValueError(f"{parts} lost committed part files; pass --overwrite to start over")
        for stale in self._part_files()[position:]:
            stale.unlink()  # written after the last commit: its batch will be redone

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def write(self, rows: list[dict[str, Any]]) -> int:
        if rows:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([as_text(r) for r in rows], schema=arrow_schema())
            atomic_write(
                self.parts / f"part-{self.position:06d}.parquet", lambda tmp: pq.write_table(table, tmp)
            )
            self.position += 1
        return self.position

    def finish(self) -> None:
        import pyarrow.parquet as pq

        def merge(tmp: str) -> None:
            with pq.ParquetWriter(tmp, arrow_schema()) as writer:
                for part in self._part_files()[: self.position]:
                    writer.write_table(pq.read_table(part, schema=arrow_schema()))

        atomic_write(self.out, merge)

    def close(self) -> None:
        pass


def open_sink(out: Path, position: int) -> TextSink | ParquetSink:
    fmt = output_format(out)
    if fmt == "parquet":
        return ParquetSink(out, state_dir(out) / "parts", position)
    return TextSink(out, fmt, position, state_dir(out))


# ---- job state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobHeader:
    """What a job is; a resume must match it field for field."""

    model: str
    model_version: str
    inputs: str  # fingerprint of the ordered input list
    n_inputs: int
    format: str
    only_synthetic: bool


@dataclass(frozen=True)
class Progress:
    done: int = 0
    position: int = 0
    scored: int = 0
    flagged: int = 0
    errors: int = 0

    def advance(self, rows: list[dict[str, Any]], position: int) -> Progress:
        errors = sum(r["error"] is not None for r in rows)
        return Progress(
            done=self.done + len(rows),
            position=position,
            scored=self.scored + len(rows) - errors,
            flagged=self.flagged + sum(r["label"] == "synthetic" for r in rows),
            errors=self.errors + errors,
        )


def _mismatch(saved: JobHeader, new: JobHeader) -> str:
    what = {
        "model": "model name",
        "model_version": "model version",
        "inputs": "input list",
        "n_inputs": "number of inputs",
        "format": "output format",
        "only_synthetic": "--only-synthetic setting",
    }
    diffs = [
        f"{label}: {getattr(saved, k)!r} then, {getattr(new, k)!r} now"
        for k, label in what.items()
        if getattr(saved, k) != getattr(new, k)
    ]
    return "; ".join(diffs)


def finished_output(out: Path, header: JobHeader, inputs: list[str] | tuple[str, ...]) -> Progress | None:
    """OUT's totals when it is the finished output of exactly this job, else None.

    A job removes its `OUT.partial/` state only after OUT is complete, so an OUT without state
    whose rows all come from this model, one per input in input order (only flagged rows
    with --only-synthetic), is this job done before; e.g. killed after its last commit, or a
    retry wrapper running it again. Anything else (another file, other rows) returns None.
    """
    try:
        rows = read_rows(out)
    except Exception:  # not one of our formats, or torn: not a finished output of ours
        return None
    where = {p: i for i, p in enumerate(inputs)}
    order = [where.get(r.get("path")) for r in rows]
    if None in order or any(b <= a for a, b in zip(order, order[1:], strict=False)):
        return None
    if any((r.get("model"), r.get("model_version")) != (header.model, header.model_version) for r in rows):
        return None
    if header.only_synthetic:
        if any(r.get("label") != "synthetic" for r in rows):
            return None
    elif len(rows) != len(inputs):
        return None
    return Progress(done=len(inputs)).advance(rows, 0)


class JobState:
    """The `OUT.partial/` folder of a running or interrupted job, locked against a second writer."""

    def __init__(self, out: Path, header: JobHeader, overwrite: bool = False):
        self.out, self.dir = Path(out), state_dir(Path(out))
        self._lock_fd: int | None = None
        try:
            if overwrite:
                self._remove_previous()
            self.progress = self._open(header)
        except BaseException:
            self._unlock()
            raise

    def _lock(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"another `fakelens score` is writing {self.out} right now; wait for it or choose another -o"
            ) from None
        self._lock_fd = fd

    def _remove_previous(self) -> None:
        if self.dir.exists():
            self._lock()
            shutil.rmtree(self.dir)
            self._unlock()
        if self.out.exists():
            self.out.unlink()

    def _open(self, header: JobHeader) -> Progress:
        header_file = self.dir / "job.json"
        if not header_file.is_file() and self.out.exists():
            raise ValueError(
                f"{self.out} already exists and is not an interrupted fakelens job; "
                "pass --overwrite to replace it or choose another -o"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        if not header_file.is_file():
            atomic_write_text(header_file, json.dumps(dataclasses.asdict(header), indent=2))
            return Progress()
        saved = JobHeader(**json.loads(header_file.read_text()))
        if saved != header:
            raise ValueError(
                f"{self.out} holds an interrupted job that differs from this one ({_mismatch(saved, header)}); "
                "rerun it with the same model and inputs to resume, or pass --overwrite to start over"
            )
        progress_file = self.dir / "progress.json"
        return Progress(**json.loads(progress_file.read_text())) if progress_file.is_file() else Progress()

    def commit(self, progress: Progress) -> None:
        atomic_write_text(self.dir / "progress.json", json.dumps(dataclasses.asdict(progress)))
        self.progress = progress

    def finish(self) -> None:
        """OUT is complete: drop the state (a crash before this just finalises again)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        self._unlock()
