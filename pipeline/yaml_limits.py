"""YAML read with bounded size: the only way configs and ``--set`` values are parsed.

``yaml.safe_load`` refuses Python tags but not an alias bomb: a few lines of ``&a [...]`` /
``*a`` references expand to billions of values (memory and time grow until the machine gives
up, and an error message that quotes the value prints all of them). :func:`load_yaml` composes
the document node by node and refuses it, with one message naming the limit, as soon as it uses
more than :data:`MAX_ALIASES` aliases, nests deeper than :data:`MAX_DEPTH` or holds more than
:data:`MAX_VALUES` values counted with every alias expanded (a recursive alias expands without
end and is refused too). A real config holds a few hundred values.
"""

from __future__ import annotations

import yaml

from manifests.errors import UserError

MAX_VALUES = 100_000  # nodes (scalars, lists, mappings) once every alias is expanded
MAX_ALIASES = 1_000  # `*name` references
MAX_DEPTH = 64  # nested lists / mappings


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts values, aliases and depth (the limits above)."""

    def __init__(self, stream, where: str):
        super().__init__(stream)
        self.where = where
        self.aliases = self.depth = self.composed = 0
        self.expanded = {}  # id(node) -> values of the node with its aliases expanded

    def refuse(self, what: str, hint: str = "write the values out instead of repeating them through &anchors "
               "and *aliases"):
        raise UserError(f"{self.where}: YAML refused: {what}; a config holds a few hundred values: {hint}")

    def compose_node(self, parent, index):
        """PyYAML's node composition, counting aliases, depth and values (aliases expanded) against
        the limits; one :class:`UserError` line when one is passed."""
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                self.refuse(f"more than {MAX_ALIASES:,} aliases (the limit)")
            node = super().compose_node(parent, index)
            if id(node) not in self.expanded:  # an alias of a node still being composed: endless
                self.refuse(f"a recursive alias expands without end (the limit is {MAX_VALUES:,} values)")
            return node
        self.depth += 1
        self.composed += 1
        if self.depth > MAX_DEPTH:
            self.refuse(f"lists and mappings nested more than {MAX_DEPTH} deep (the limit)",
                        "keep it to a few levels of sections")
        if self.composed > MAX_VALUES:
            self.refuse(f"more than {MAX_VALUES:,} values (the limit)", "is this file a config?")
        node = super().compose_node(parent, index)
        self.depth -= 1
        self.expanded[id(node)] = 1 + sum(self.expanded[id(child)] for child in _children(node))
        if self.expanded[id(node)] > MAX_VALUES:
            self.refuse(f"more than {MAX_VALUES:,} values once its aliases are expanded (the limit)")
        return node


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str, where: str):
    """``yaml.safe_load(text)`` within the limits above; a document over one is a :class:`UserError`
    naming ``where`` (a file, or the ``--set`` option) and the limit. Syntax errors stay ``yaml.YAMLError``."""
    loader = _BoundedLoader(text, where)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
