"""The column naming shared by CSV files and `datasets` columns (``query_text``, ``positive_image``, ...)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from e5omni.data.errors import DataError
from e5omni.data.items import PASSTHROUGH_KEYS

# Column naming shared by CSV files and `datasets` columns:
#   ROLE            the whole item (CSV: text; datasets: typed by the feature)
#   ROLE_FIELD      one field of the item, FIELD in text|image|audio|video|instruction (instruction: query only)
#   ROLE in query | positive | negative_1 .. negative_k (contiguous); aliases: anchor = query, negative = negative_1
_COLUMN = re.compile(
    r"^(?P<role>query|anchor|positive|negative(?:_(?P<k>[1-9][0-9]*))?)(?:_(?P<field>text|image|audio|video|instruction))?$"
)
_ROLE_ALIASES = {"anchor": "query", "negative": "negative_1"}


@dataclass
class _Schema:
    """Which column feeds which field of which role. Field ``"item"`` means the column holds the whole item."""

    roles: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> field -> column
    passthrough: dict[str, str] = field(default_factory=dict)  # example key ("pair", "id") -> column

    @property
    def negative_roles(self) -> list[str]:
        return sorted((r for r in self.roles if r.startswith("negative_")), key=lambda r: int(r.split("_")[1]))

    def example(self, items: Mapping[str, Any]) -> dict[str, Any]:
        """``{role: item}`` for this schema's roles -> an example, ``negative_1 .. negative_k`` as "negatives"."""
        example = {role: items[role] for role in ("query", "positive")}
        negatives = [items[role] for role in self.negative_roles]
        if negatives:
            example["negatives"] = negatives
        return example

    def check(self, source: str) -> None:
        for role in ("query", "positive"):
            if role not in self.roles:
                raise DataError(
                    f"{source}: no column for {role!r}; expected '{role}' or '{role}_text', '{role}_image', ..."
                )
        numbers = [int(r.split("_")[1]) for r in self.negative_roles]
        if numbers != list(range(1, len(numbers) + 1)):
            raise DataError(f"{source}: negative columns must be numbered 1..k without gaps, got {numbers}")
        for role, fields in self.roles.items():
            if "item" in fields and set(fields) - {"item", "instruction"}:
                raise DataError(
                    f"{source}: {role!r} has both a whole-item column {fields['item']!r} and per-field columns "
                    f"{sorted(c for f, c in fields.items() if f != 'item')}; use one or the other"
                )
            if "instruction" in fields and role != "query":
                raise DataError(f"{source}: 'instruction' columns are only allowed for the query, got {role!r}")
            if set(fields) == {"instruction"}:
                raise DataError(f"{source}: {role!r} has only an instruction column; add its text/media columns")


def _schema_from_columns(columns: Sequence[str], source: str, *, bare_is_text: bool = False) -> _Schema:
    """Parse column names by the shared convention; ``bare_is_text`` for CSV, where every cell is a string."""
    schema = _Schema()
    unknown = []
    for column in columns:
        if column in PASSTHROUGH_KEYS:
            schema.passthrough[column] = column
            continue
        match = _COLUMN.match(column)
        if match is None:
            unknown.append(column)
            continue
        role = _ROLE_ALIASES.get(match["role"], match["role"])
        fld = match["field"] or ("text" if bare_is_text else "item")
        fields = schema.roles.setdefault(role, {})
        if fld in fields:
            raise DataError(f"{source}: columns {fields[fld]!r} and {column!r} both give {role}.{fld}")
        fields[fld] = column
    if unknown:
        raise DataError(
            f"{source}: unknown column(s) {unknown}; expected query/positive/negative_<i> optionally suffixed with "
            f"_text, _image, _audio, _video (or _instruction for the query), plus optional {list(PASSTHROUGH_KEYS)}"
        )
    schema.check(source)
    return schema
