"""A migration time series as CSV or JSON; the columns are engine.stats.Sample's fields."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, fields

from engine.stats import Sample

COLUMNS = tuple(f.name for f in fields(Sample))


def to_csv(samples: Sequence[Sample]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([getattr(s, name) for name in COLUMNS] for s in samples)
    return out.getvalue()


def to_json(samples: Sequence[Sample]) -> str:
    return json.dumps([asdict(s) for s in samples], indent=1) + "\n"


def render(path: str, samples: Sequence[Sample]) -> str:
    """The file's text, in the format its name asks for: ``.json``, else CSV."""
    return to_json(samples) if path.endswith(".json") else to_csv(samples)


def from_json(text: str) -> list[Sample]:
    """What to_json (and `x_migrate_export FILE.json`) wrote, back as samples."""
    return [Sample(**row) for row in json.loads(text)]
