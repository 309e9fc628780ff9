"""A small element tree built with the standard library's html.parser, for checking served pages in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

# Elements that never have children or an end tag in HTML.
VOID_ELEMENTS = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
})


@dataclass
class Element:
    """One element: its tag, attributes (a valueless attribute maps to None) and children (elements or text)."""

    tag: str
    attrs: dict[str, str | None] = field(default_factory=dict)
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        """Return the text content, with the parser's entity references already decoded."""
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def iter(self) -> list[Element]:
        """Return this element and every descendant element, in document order."""
        found = [self]
        for child in self.children:
            if isinstance(child, Element):
                found += child.iter()
        return found

    def find_all(self, tag: str, **attrs: str) -> list[Element]:
        """Return descendants with ``tag`` whose attributes contain ``attrs``; ``class_`` matches one of the classes."""
        matches = []
        for element in self.iter():
            if element.tag != tag:
                continue
            if all(_attribute_matches(element, name, value) for name, value in attrs.items()):
                matches.append(element)
        return matches

    def find(self, tag: str, **attrs: str) -> Element:
        """Return the first match of ``find_all``; fail the test when there is none."""
        matches = self.find_all(tag, **attrs)
        assert matches, f"no <{tag}> with {attrs}"
        return matches[0]


def _attribute_matches(element: Element, name: str, value: str) -> bool:
    if name == "class_":
        return value in (element.attrs.get("class") or "").split()
    # A trailing underscore avoids a Python keyword (for_), and other underscores stand for hyphens (aria_label).
    return element.attrs.get(name.rstrip("_").replace("_", "-")) == value


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document")
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in VOID_ELEMENTS:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_html(text: str) -> Element:
    """Parse an HTML document into an element tree rooted at a ``#document`` element."""
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root
