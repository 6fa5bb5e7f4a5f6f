"""YAML read with limits: a configuration file cannot make needseg run for minutes or run out
of memory.

`yaml.safe_load` builds no objects but still expands aliases: a "billion laughs" file (each
anchor a list of nine aliases of the one before) is a few hundred bytes that become 10^9
values once anything walks them. `load_yaml` refuses, before building anything:

- a file larger than `MAX_BYTES`;
- more than `MAX_ALIASES` aliases (`*name`) - a hand-written configuration uses a few;
- nesting deeper than `MAX_DEPTH`;
- a document that, with its aliases expanded, has more than `MAX_VALUES` values (nine
  levels of nine aliases each are only 81 aliases, but 387,420,489 values).

Every refusal is a `ConfigError` naming the file and the limit, so the CLI exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ConfigError

MAX_BYTES = 1_000_000
MAX_ALIASES = 100
MAX_DEPTH = 50
MAX_VALUES = 100_000


class _LimitExceeded(Exception):
    pass


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting aliases and depth while it composes the node graph."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _LimitExceeded(
                    f"more than {MAX_ALIASES} aliases (*name), the {MAX_ALIASES + 1}th on line {mark.line + 1}: "
                    "refused, as aliases of aliases can expand to billions of values"
                )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _LimitExceeded(f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(path: Path, what: str = "configuration") -> Any:
    """The YAML document in `path` (None for an empty file), within the limits above."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; a {what} file may have at most {MAX_BYTES:,} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1}); save the {what} as UTF-8") from None
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        values = _expanded_size(node, {})
        if values > MAX_VALUES:
            raise _LimitExceeded(f"expands to more than {MAX_VALUES:,} values once its aliases are resolved: refused")
        return loader.construct_document(node)
    except _LimitExceeded as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """How many values `node` stands for with every alias expanded (each shared node is
    measured once, so this is fast even for a bomb)."""
    if id(node) in seen:
        return seen[id(node)]
    seen[id(node)] = 1  # a node that contains itself (a recursive alias) counts once
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, seen) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    seen[id(node)] = min(size, MAX_VALUES + 1)
    return seen[id(node)]
