"""Weighted training mixtures: several data specs, each with a weight, as one sequence of examples (`mix:FILE.yaml`).

The file lists the sources and how much of each an epoch draws::

    seed: 0                    # optional; which rows are drawn when a source is subsampled or repeated
    size: 100000               # optional; examples per epoch (default: the sum of the sources' `examples`)
    sources:
      - name: MSCOCO_i2t
        spec: mmeb:MMEB-train/MSCOCO_i2t?split=original
        media_root: MMEB-train  # optional; default: the command's --media_root
        examples: 120000        # optional; use the first N rows only (VLM2Vec's num_sample_per_subset)
        weight: 1               # optional; the source's share of an epoch is weight / sum(weights)

Source i contributes ``round(size * w_i / sum(w))`` examples per epoch: every row once per full pass over it, then
a seeded random subset of its rows for the remainder (so a weight above a source's size repeats it, below it
subsamples it). That is VLM2Vec's mixture (weights are sampling probabilities) made exact per epoch. A source
without a weight weighs its number of examples, so a mixture without weights (and without ``size``) is the plain
concatenation: one pass over every source per epoch, as Tevatron's OmniEmbed recipe reads its sets. Relative paths
are read from the current directory, like every other path of a recipe.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from e5omni.data.errors import DataError

SOURCE_KEYS = ("name", "spec", "media_root", "examples", "weight")


class MixtureError(DataError):
    """A mixture file that does not follow the layout above (named by source and key)."""


class MixedExamples(Sequence):
    """The examples of several sources in one epoch's proportions (see the module docstring); lazy per source."""

    def __init__(self, sources: Sequence[tuple[str, Sequence[dict], float]], size: int | None = None, seed: int = 0):
        if not sources:
            raise MixtureError("a mixture needs at least one source")
        self.names = [name for name, _, _ in sources]
        self.sources = [examples for _, examples, _ in sources]
        weights = np.array([w for _, _, w in sources], dtype=np.float64)
        total = int(size) if size is not None else sum(len(e) for e in self.sources)
        counts = np.floor(total * weights / weights.sum()).astype(np.int64)
        remainder = total - int(counts.sum())  # largest fractional parts first, so the counts sum to `total`
        order = np.argsort(-(total * weights / weights.sum() - counts), kind="stable")
        counts[order[:remainder]] += 1
        rng = np.random.default_rng(seed)
        source_ids, rows = [], []
        for i, (examples, count) in enumerate(zip(self.sources, counts)):
            n = len(examples)
            if count and not n:
                raise MixtureError(f"source {self.names[i]!r} has no examples")
            full, rest = divmod(int(count), n) if n else (0, 0)
            picked = [np.arange(n, dtype=np.int64)] * full + [np.sort(rng.choice(n, size=rest, replace=False))]
            picked = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
            source_ids.append(np.full(len(picked), i, dtype=np.int32))
            rows.append(picked)
        self.counts = {name: int(c) for name, c in zip(self.names, counts)}
        self._source = np.concatenate(source_ids)
        self._row = np.concatenate(rows)

    def __len__(self) -> int:
        return len(self._row)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        import operator

        index = operator.index(index)
        return self.sources[int(self._source[index])][int(self._row[index])]

    def source_of(self, index: int) -> tuple[str, int]:
        """(source name, row within that source) of a mixture index, e.g. for error messages."""
        return self.names[int(self._source[index])], int(self._row[index])

    def min_negatives(self) -> int:
        """The fewest hard negatives over the sources that contribute (each source's own cheap count)."""
        lows = []
        for examples, name in zip(self.sources, self.names):
            if self.counts[name] == 0:
                continue
            if hasattr(examples, "min_negatives"):
                lows.append(examples.min_negatives())
            else:
                lows.append(min(len(e.get("negatives") or []) for e in examples))
        return min(lows)

    def with_max_negatives(self, k: int) -> MixedExamples:
        import copy

        view = copy.copy(self)
        view.sources = [s.with_max_negatives(k) if hasattr(s, "with_max_negatives") else s for s in self.sources]
        return view


LoadSpec = Callable[[str, "str | os.PathLike | None"], Sequence[dict]]
"""``load_spec(spec, media_root) -> examples``: how a source's spec is read (`load_data_spec`, bound to the
command's split and budgets, passed in by `e5omni.data.specs` so this module does not import it)."""


def load_mixture(
    path: str | os.PathLike, load_spec: LoadSpec, *, media_root: str | os.PathLike | None = None
) -> MixedExamples:
    """Read a mixture file (module docstring) and load each source with ``load_spec`` (use
    ``load_data_spec("mix:FILE")``, which passes its own). Errors name the file and the line of the source."""
    import yaml

    from e5omni.data.tables import decoded_lines

    path = Path(path)
    if not path.is_file():
        raise MixtureError(f"mixture file {str(path)!r} not found")
    file_name = str(path)
    text = "".join(line for _, line in decoded_lines(path, file_name))  # undecodable bytes: BadRowError naming the line
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise MixtureError(f"{file_name}{at}: not valid YAML ({problem})") from None
    if not isinstance(config, dict) or not isinstance(config.get("sources"), list):
        raise MixtureError(f"{file_name}: expected a mapping with a 'sources' list")
    unknown = sorted(set(config) - {"seed", "size", "sources"})
    if unknown:
        raise MixtureError(f"{file_name}: unknown key(s) {unknown}; expected seed, size, sources")
    source_lines = _source_lines(node)
    loaded = []
    for j, source in enumerate(config["sources"]):
        line = source_lines[j] if j < len(source_lines) else None
        where = f"{file_name} line {line}, source {j}" if line is not None else f"{file_name} source {j}"
        if not isinstance(source, dict):
            raise MixtureError(f"{where}: expected a mapping with 'spec' and 'weight'")
        bad = sorted(set(source) - set(SOURCE_KEYS))
        if bad:
            raise MixtureError(f"{where}: unknown key(s) {bad}; expected {list(SOURCE_KEYS)}")
        name = str(source.get("name") or source.get("spec"))
        spec = source.get("spec")
        if not isinstance(spec, str) or spec.startswith("mix:"):
            raise MixtureError(f"{where} ({name}): 'spec' must be a data spec string (mixtures do not nest)")
        weight = source.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0):
            raise MixtureError(f"{where} ({name}): 'weight' must be a number > 0, got {weight!r}")
        take = source.get("examples")
        if take is not None and (isinstance(take, bool) or not isinstance(take, int) or take < 1):
            raise MixtureError(f"{where} ({name}): 'examples' must be an integer >= 1, got {take!r}")
        examples = load_spec(spec, source.get("media_root", media_root))
        if take is not None and take < len(examples):
            examples = _Head(examples, take)
        loaded.append((name, examples, float(weight if weight is not None else len(examples))))
    size = config.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise MixtureError(f"{file_name}: 'size' must be an integer >= 1, got {size!r}")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MixtureError(f"{file_name}: 'seed' must be an integer, got {seed!r}")
    return MixedExamples(loaded, size=size, seed=seed)


def _source_lines(node) -> list[int]:
    """The 1-based line of each entry of the YAML document's ``sources`` list."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if getattr(key, "value", None) == "sources" and isinstance(value, yaml.SequenceNode):
            return [entry.start_mark.line + 1 for entry in value.value]
    return []


class _Head(Sequence):
    """The first ``n`` examples of a sequence, without copying them."""

    def __init__(self, examples: Sequence[dict], n: int):
        self.examples, self.n = examples, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        if not -self.n <= index < self.n:
            raise IndexError(index)
        return self.examples[index % self.n]

    def min_negatives(self) -> int:
        if hasattr(self.examples, "min_negatives"):
            return self.examples.min_negatives()  # a lower bound over the whole source; exact enough to size k
        return min(len(e.get("negatives") or []) for e in self)

    def with_max_negatives(self, k: int) -> _Head:
        inner = self.examples.with_max_negatives(k) if hasattr(self.examples, "with_max_negatives") else self.examples
        return _Head(inner, self.n)


__all__ = ["MixedExamples", "MixtureError", "load_mixture"]
