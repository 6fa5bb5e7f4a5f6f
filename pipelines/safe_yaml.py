"""The one way needseg reads a YAML file a user wrote (settings, taxonomies, source mappings).

`yaml.safe_load` builds no objects but trusts the document's size: a file of a few hundred
bytes whose anchors and aliases nest ("billion laughs") expands into billions of nodes in
whatever walks it next. Here a file is refused before it is built when it is larger than
`MAX_BYTES` or would expand to more than `MAX_NODES` nodes, with a message naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ConfigError

MAX_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document has once every alias is expanded (shared nodes counted per use),
    computed on the composed graph without expanding it; stops counting past MAX_NODES."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes.get(id(child), 0) for child in children))
    return sizes[id(root)]


def load_yaml(path: Path, what: str = "YAML") -> Any:
    """The parsed content of a user's YAML file, or a ConfigError naming the file."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes is larger than the {MAX_BYTES:,} a {what} file may have")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            return None
        if _expanded_size(root) > MAX_NODES:
            raise ConfigError(
                f"{path}: its anchors and aliases expand to more than {MAX_NODES:,} values; "
                "refused (a file that nests aliases like this is usually an attack, never a configuration)"
            )
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
