"""Needs taxonomies: the segments a company recognises, as configuration (config/taxonomy.yaml).

Two bases:
- `survey`: dimensions are survey items (price, quality, ... or the optional extras);
  prototypes give each item's importance on the 1-5 scale. Clustering runs on surveyed
  accounts' per-respondent-normalised needs; everyone else is inferred from behaviour.
- `behaviour`: dimensions are columns of `customer_features` (or `category_share:<name>`,
  an account's share of spend in a product category); prototypes are in standard
  deviations from the population mean. Every account is clustered on its behaviour; use
  this when there are no surveys, or for a consumption-based segmentation.

A survey taxonomy may name a `fallback`: a behaviour taxonomy of the same needs (the
default's is config/taxonomies/needs_from_behaviour.yaml) used, and said, when too few
accounts answered a survey to cluster on - a no-survey start.

A cluster's name comes from the prototype it resembles most (cosine similarity of the
centred profiles, one prototype per cluster); below `min_similarity` it is "emerging".

Two digests tell taxonomies apart. `digest` hashes the file, so any edit shows in
segment_runs. `lineage_digest` hashes only what a segment id means - the basis, the
dimensions (name, column, transform) and the segment ids: while it stays the same, runs
continue one identity lineage (ids aligned run to run, drift compared); a reworded
playbook, a renamed segment or tuned prototypes keep it, another company's taxonomy
starts a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.contract import EXTRA_NEEDS_ITEMS, NEEDS_ITEMS
from pipelines.errors import ConfigError
from pipelines.safe_yaml import load_yaml

SURVEY_ITEMS = NEEDS_ITEMS + EXTRA_NEEDS_ITEMS


@dataclass(frozen=True)
class Dimension:
    name: str
    column: str  # customer_features column, or category_share:<category>
    transform: str = "none"  # none | log1p


@dataclass(frozen=True)
class Segment:
    id: str
    name: str
    description: str
    prototype: dict[str, float]
    playbook: dict[str, str]


@dataclass(frozen=True)
class Taxonomy:
    name: str
    version: str
    basis: str
    dimensions: tuple[Dimension, ...]
    segments: tuple[Segment, ...]
    k_min: int
    k_max: int
    roles: dict[str, str] = field(default_factory=dict)
    min_similarity: float = 0.5
    description: str = ""
    path: str = ""
    digest: str = ""  # of the file: any edit changes it
    lineage_digest: str = ""  # of what segment identities mean: basis, dimensions, segment ids
    # A behaviour taxonomy of the same needs, used when too few accounts answered a survey
    # (a no-survey start); None: a survey taxonomy without surveys stops the run.
    fallback: str | None = None
    # Behaviour taxonomies: cluster in a space whitened by the within-segment covariance
    # (`whiten: within`), so correlated proxies of one need count once.
    whiten: bool = False
    # Behaviour taxonomies whose segments are needs read from proxies (the default fallback):
    # the most confident `core_share` of the clustered accounts keep their cluster, and a
    # classifier on every behaviour signal, learned from them, reads the others' needs.
    # None: every account takes its nearest centre (the segments are the clusters).
    core_share: float | None = None
    # Behaviour taxonomies whose prototypes are prior knowledge of where the needs sit (the
    # default fallback): the clusters that match a prototype are drawn towards it, the
    # prototype weighing this many times the clustered accounts (k-means with a prior,
    # clustering.toward_prototypes); key accounts are then segmented with everyone else,
    # against the same prototypes. None: the centres are the data's alone.
    prototype_weight: float | None = None

    @property
    def dimension_names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def segment(self, segment_id: str) -> Segment | None:
        return next((s for s in self.segments if s.id == segment_id), None)

    def prototype_matrix(self) -> np.ndarray:
        """Prototypes as rows, centred the way the data are (see `centre_profiles`)."""
        raw = np.array([[s.prototype[d] for d in self.dimension_names] for s in self.segments], dtype=float)
        return centre_profiles(raw, self.basis)

    def role(self, name: str) -> str | None:
        return self.roles.get(name)


def centre_profiles(rows: np.ndarray, basis: str) -> np.ndarray:
    """Make prototypes comparable with cluster centres.

    Survey data are normalised per respondent (own mean removed, own spread divided out),
    so a prototype is treated the same way. Behavioural dimensions are already standardised
    across accounts, so prototypes in standard deviations are used as they are.
    """
    if basis != "survey":
        return rows
    centred = rows - rows.mean(axis=1, keepdims=True)
    spread = rows.std(axis=1, keepdims=True)
    return centred / np.maximum(spread, 0.5)


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _dimensions(raw: dict[str, Any], basis: str, path: Path) -> list[Dimension]:
    dims = []
    for i, d in enumerate(raw.get("dimensions") or []):
        if isinstance(d, str):
            dim = Dimension(d, f"need_{d}" if basis == "survey" else d)
        elif isinstance(d, dict) and "name" in d:
            column = d.get("column") or (f"need_{d['name']}" if basis == "survey" else d["name"])
            dim = Dimension(str(d["name"]), str(column), str(d.get("transform", "none")))
            if dim.transform not in ("none", "log1p"):
                raise _fail(path, f"dimensions[{i}].transform must be none or log1p")
        else:
            raise _fail(path, f"dimensions[{i}] must be a name or {{name, column, transform}}")
        if basis == "survey" and dim.column.removeprefix("need_") not in SURVEY_ITEMS:
            raise _fail(path, f"dimension {dim.name!r} is not a survey item; expected one of {', '.join(SURVEY_ITEMS)}")
        dims.append(dim)
    if len(dims) < 2:
        raise _fail(path, "needs at least two dimensions")
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise _fail(path, "dimension names must be unique")
    return dims


def _segments(raw: dict[str, Any], names: list[str], path: Path) -> list[Segment]:
    segments = []
    for i, s in enumerate(raw.get("segments") or []):
        if not isinstance(s, dict) or "id" not in s or "prototype" not in s:
            raise _fail(path, f"segments[{i}] needs at least an id and a prototype")
        proto = s["prototype"] or {}
        missing = [n for n in names if n not in proto]
        unknown = [n for n in proto if n not in names]
        if missing or unknown:
            raise _fail(
                path,
                f"segment {s['id']!r}: prototype must give every dimension once"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(unknown)}" if unknown else ""),
            )
        segments.append(
            Segment(
                id=str(s["id"]),
                name=str(s.get("name", s["id"])),
                description=" ".join(str(s.get("description", "")).split()),
                prototype={k: float(v) for k, v in proto.items()},
                playbook={k: " ".join(str(v).split()) for k, v in (s.get("playbook") or {}).items()},
            )
        )
    if len(segments) < 2:
        raise _fail(path, "needs at least two segments")
    ids = [s.id for s in segments]
    if len(set(ids)) != len(ids):
        raise _fail(path, "segment ids must be unique")
    return segments


def _options(raw: dict[str, Any], basis: str, ids: list[str], path: Path) -> tuple[int, int, dict[str, str], str | None, bool]:
    k = raw.get("k") or {}
    k_min, k_max = int(k.get("min", 3)), int(k.get("max", 5))
    if not 2 <= k_min <= k_max:
        raise _fail(path, f"k must satisfy 2 <= min <= max, got min {k_min}, max {k_max}")
    roles = {str(a): str(b) for a, b in (raw.get("roles") or {}).items()}
    for role, seg in roles.items():
        if seg not in ids:
            raise _fail(path, f"role {role!r} names unknown segment {seg!r}")
    fallback = raw.get("fallback")
    if fallback is not None:
        if basis != "survey":
            raise _fail(path, "only a survey taxonomy has a fallback (a behaviour taxonomy needs no survey)")
        # relative to the taxonomy file; a copy of the default elsewhere finds the shipped one
        candidates = [path.parent / str(fallback), Path(__file__).resolve().parents[2] / "config" / str(fallback)]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise _fail(path, f"fallback taxonomy {fallback} does not exist (looked in {', '.join(str(c.parent) for c in candidates)})")
        fallback = str(found.resolve())
    whiten = raw.get("whiten", "none")
    if whiten not in ("none", "within"):
        raise _fail(path, f"whiten must be none or within, not {whiten!r}")
    return k_min, k_max, roles, fallback, whiten == "within"


def _behaviour_number(raw: dict[str, Any], key: str, basis: str, path: Path, fits, expected: str) -> float | None:
    """A behaviour-only option that is a number: None when absent, else the number, or
    refused naming the file, the key and what was expected."""
    value = raw.get(key)
    if value is None:
        return None
    if basis != "behaviour":
        raise _fail(path, f"{key} applies to behaviour taxonomies only (survey segments are learned from the respondents)")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not fits(number):
        raise _fail(path, f"{key} must be {expected}, not {value!r}")
    return number


def load_taxonomy(path: Path) -> Taxonomy:
    if not path.exists():
        raise ConfigError(f"taxonomy file {path} does not exist (set NEEDSEG_TAXONOMY or restore config/taxonomy.yaml)")
    text = path.read_text(encoding="utf-8")
    raw: dict[str, Any] = load_yaml(path, "taxonomy") or {}
    if not isinstance(raw, dict):
        raise _fail(path, "expected a mapping (name, basis, dimensions, segments)")
    basis = raw.get("basis", "survey")
    if basis not in ("survey", "behaviour"):
        raise _fail(path, f"basis must be 'survey' or 'behaviour', not {basis!r}")
    dims = _dimensions(raw, basis, path)
    segments = _segments(raw, [d.name for d in dims], path)
    ids = [s.id for s in segments]
    k_min, k_max, roles, fallback, whiten = _options(raw, basis, ids, path)
    identity = {"basis": basis, "dimensions": [[d.name, d.column, d.transform] for d in dims], "segments": sorted(ids)}
    return Taxonomy(
        name=str(raw.get("name", path.stem)),
        version=str(raw.get("version", "1")),
        basis=basis,
        dimensions=tuple(dims),
        segments=tuple(segments),
        k_min=k_min,
        k_max=k_max,
        roles=roles,
        min_similarity=float(raw.get("min_similarity", 0.5)),
        description=" ".join(str(raw.get("description", "")).split()),
        path=str(path),
        digest=hashlib.sha256(text.encode()).hexdigest()[:12],
        lineage_digest=hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12],
        fallback=fallback,
        whiten=whiten,
        core_share=_behaviour_number(raw, "core_share", basis, path, lambda x: 0.1 <= x <= 1.0, "a share between 0.1 and 1"),
        prototype_weight=_behaviour_number(
            raw, "prototype_weight", basis, path, lambda x: 0 < x <= 1000, "a number above 0 (times the clustered accounts; 1000 at most)"
        ),
    )
