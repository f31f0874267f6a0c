"""A strict little HTML5 tree for page tests: every non-void element closed in order (SVG
shapes may close themselves), and CSS-like selection (tag.class#id[attr=value], with
descendant spaces) to find what a browser test would."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
# Shapes that may close themselves (SVG is foreign content: <rect/> is a whole element there).
SVG_EMPTY = frozenset({"rect", "line", "polyline", "path", "circle", "text", "g"})


class Malformed(AssertionError):
    pass


@dataclass(eq=False)
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # text of this node and its descendants

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def descendants(self) -> Iterator[Node]:
        for child in self.children:
            yield child
            yield from child.descendants()


class TreeBuilder(HTMLParser):
    """Builds a tree and fails on any unclosed, misnested or stray tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root
        self.doctype: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            self.handle_starttag(tag, attrs)
            return
        if tag not in SVG_EMPTY or not self._in_svg():
            raise Malformed(f"<{tag}/> is neither void nor an SVG shape")
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def _in_svg(self) -> bool:
        node: Node | None = self.current
        while node is not None:
            if node.tag == "svg":
                return True
            node = node.parent
        return False

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            raise Malformed(f"</{tag}> closes a void element")
        if self.current.tag != tag:
            raise Malformed(f"</{tag}> closes <{self.current.tag}>")
        assert self.current.parent is not None
        self.current = self.current.parent

    def handle_data(self, data: str) -> None:
        node: Node | None = self.current
        while node is not None:
            node.texts.append(data)
            node = node.parent


def parse(page: str) -> Node:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    if builder.current is not builder.root:
        raise Malformed(f"<{builder.current.tag}> is never closed")
    assert builder.doctype is not None and builder.doctype.lower() == "doctype html"
    return builder.root


_COMPOUND = re.compile(r"([a-z0-9]+)?((?:[.#][\w-]+|\[[\w-]+(?:=[^\]\s]+)?\])*)$")
_PART = re.compile(r"\.([\w-]+)|#([\w-]+)|\[([\w-]+)(?:=([^\]\s]+))?\]")


def _matches(node: Node, compound: str) -> bool:
    m = _COMPOUND.match(compound)
    assert m is not None, compound
    if m.group(1) and node.tag != m.group(1):
        return False
    for cls, ident, attr, value in _PART.findall(m.group(2)):
        if cls and cls not in node.classes:
            return False
        if ident and node.attrs.get("id") != ident:
            return False
        if attr and (attr not in node.attrs or (value and node.attrs[attr] != value)):
            return False
    return True


def select(root: Node, selector: str) -> list[Node]:
    """Nodes matching a CSS selector of compounds (tag.class#id[attr=value]) and spaces."""
    found = [root]
    for compound in selector.split():
        seen: dict[int, Node] = {}
        for base in found:
            for node in base.descendants():
                if id(node) not in seen and _matches(node, compound):
                    seen[id(node)] = node
        found = list(seen.values())
    return found


def one(root: Node, selector: str) -> Node:
    nodes = select(root, selector)
    assert len(nodes) == 1, f"{selector}: {len(nodes)} matches"
    return nodes[0]


# --- Sample views ---------------------------------------------------------------------------
