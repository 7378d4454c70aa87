"""Published reference numbers (``reports/published/*.csv``): quoted facts, shown as separate, marked rows.

They are never averaged with this suite's numbers and never compete for bold. Missing values stay empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from prompt_ot.errors import UserError

BASE2NOVEL = "published_base2novel.csv"
OTHER = "published_other_protocols.csv"
CROSS_PER_DATASET = "published_cross_dataset_per_dataset.csv"
# per-dataset numbers (reprinted ones ship here; a user adds a paper's own): the reproduction gap compares them
BASE2NOVEL_PER_DATASET = "published_base2novel_per_dataset.csv"
DOMAIN_PER_DATASET = "published_domain_generalization_per_dataset.csv"
FEW_SHOT = "published_few_shot.csv"


BASE2NOVEL_COLUMNS = ["method", "base", "novel", "hm", "source"]
OTHER_COLUMNS = ["protocol", "method", "source_acc", "target_avg", "source"]
CROSS_COLUMNS = ["method", "target_avg", "source"]  # plus one column per dataset
BASE2NOVEL_PER_DATASET_COLUMNS = ["method", "dataset", "base", "novel", "hm", "source"]
FEW_SHOT_COLUMNS = ["method", "dataset", "shots", "accuracy", "source"]  # dataset "average": over the 11 datasets
TEXT_COLUMNS = ("method", "source", "protocol", "dataset")


def _empty(columns: list[str]):
    return lambda: pd.DataFrame(columns=columns)


@dataclass
class Published:
    base2novel: pd.DataFrame = field(default_factory=_empty(BASE2NOVEL_COLUMNS))
    other: pd.DataFrame = field(default_factory=_empty(OTHER_COLUMNS))
    cross_per_dataset: pd.DataFrame = field(default_factory=_empty(CROSS_COLUMNS))
    base2novel_per_dataset: pd.DataFrame = field(default_factory=_empty(BASE2NOVEL_PER_DATASET_COLUMNS))
    domain_per_dataset: pd.DataFrame = field(default_factory=_empty(CROSS_COLUMNS))
    few_shot: pd.DataFrame = field(default_factory=_empty(FEW_SHOT_COLUMNS))


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    required = set(columns)
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    try:
        frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"published numbers file {path} cannot be read as CSV ({err})") from err
    missing = required - set(frame.columns)
    if missing:
        raise UserError(f"published numbers file {path} lacks the column(s) {sorted(missing)}")
    numeric = [c for c in frame.columns if c not in TEXT_COLUMNS]
    try:
        frame[numeric] = frame[numeric].apply(pd.to_numeric)
    except (ValueError, TypeError) as err:
        raise UserError(f"published numbers file {path} has a non-numeric value ({err})") from err
    frame["source"] = frame["source"].fillna("")
    return frame


def read_published(folder: str | Path | None) -> Published:
    """Read the published CSVs in ``folder`` (files that are absent give no rows); None gives none at all."""
    if folder is None:
        return Published()
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"published numbers folder {folder} does not exist; point --published at "
            f"reports/published or pass --no-published"
        )
    return Published(
        base2novel=_read(folder / BASE2NOVEL, BASE2NOVEL_COLUMNS),
        other=_read(folder / OTHER, OTHER_COLUMNS),
        cross_per_dataset=_read(folder / CROSS_PER_DATASET, CROSS_COLUMNS),
        base2novel_per_dataset=_read(folder / BASE2NOVEL_PER_DATASET, BASE2NOVEL_PER_DATASET_COLUMNS),
        domain_per_dataset=_read(folder / DOMAIN_PER_DATASET, CROSS_COLUMNS),
        few_shot=_read(folder / FEW_SHOT, FEW_SHOT_COLUMNS),
    )
