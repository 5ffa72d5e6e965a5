"""SVG read back from a store, made safe to put into the report.

A store is a folder anyone can edit, so markup read from it is untrusted: `safe_svg` rebuilds
it from an allow-list of SVG elements and attributes (those `fairaudit.svg` writes), with
attribute values restricted to plain numbers, colours, words and transforms. Anything else
(scripts, event handlers, links, `url(...)`, `<foreignObject>`, entities) is dropped, and all
text is escaped. The result is inert whatever the input.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from markupsafe import Markup, escape

ELEMENTS = {"svg", "g", "rect", "line", "text", "title", "circle", "path", "polyline", "polygon", "tspan"}
ATTRIBUTES = {
    "xmlns",
    "viewbox",
    "width",
    "height",
    "role",
    "aria-label",
    "class",
    "x",
    "y",
    "x1",
    "y1",
    "x2",
    "y2",
    "cx",
    "cy",
    "r",
    "rx",
    "ry",
    "d",
    "points",
    "fill",
    "stroke",
    "stroke-width",
    "stroke-dasharray",
    "opacity",
    "fill-opacity",
    "font-size",
    "font-weight",
    "font-family",
    "text-anchor",
    "text-decoration",
    "dominant-baseline",
    "transform",
}
# Values: numbers, colours (#abc, names), short words, and rotate/translate transforms; never a URL or a function call.
_VALUE = re.compile(r"^[#A-Za-z0-9 .,%_\-]*$")
_RGB = re.compile(r"^rgb\(\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*\)$")
_TRANSFORM = re.compile(r"^((rotate|translate|scale)\([0-9 .,\-]*\)\s*)*$")
_XMLNS = "http://www.w3.org/2000/svg"
# elements that never get a closing tag: an unclosed disallowed one must not swallow the rest
_VOID = {
    "rect",
    "line",
    "circle",
    "path",
    "polyline",
    "polygon",
    "img",
    "br",
    "hr",
    "input",
    "meta",
    "link",
    "source",
    "area",
    "base",
    "col",
    "embed",
    "param",
    "track",
    "wbr",
    "image",
    "use",
}


def _allowed(name: str, value: str) -> bool:
    if name == "xmlns":
        return value == _XMLNS
    if name == "transform":
        return bool(_TRANSFORM.match(value))
    if name in ("fill", "stroke") and _RGB.match(value):
        return True
    if name == "aria-label":
        return len(value) <= 500  # free text: escaped on output
    return bool(_VALUE.match(value)) and "url" not in value.lower()


class _Rebuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.open: list[str] = []
        self.skipping = 0  # depth inside an element that is not allowed (its text is dropped too)

    def handle_starttag(self, tag, attrs):
        if self.skipping or tag not in ELEMENTS:
            if tag not in _VOID:
                self.skipping += 1
            return
        kept = []
        for name, value in attrs:
            value = value or ""
            if name in ATTRIBUTES and _allowed(name, value):
                kept.append(f' {"viewBox" if name == "viewbox" else name}="{escape(value)}"')
        self.parts.append(f"<{tag}{''.join(kept)}>")
        self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        if self.skipping or tag not in ELEMENTS:
            return  # a self-closed element that is not allowed: dropped, nothing to skip after it
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self.skipping:
            if tag not in _VOID:
                self.skipping -= 1
            return
        if tag in self.open:
            while self.open:
                closing = self.open.pop()
                self.parts.append(f"</{closing}>")
                if closing == tag:
                    break

    def handle_data(self, data):
        if not self.skipping and self.open and self.open[-1] in ("text", "title", "tspan"):
            self.parts.append(str(escape(data)))


def safe_svg(markup: str) -> Markup:
    """`markup` rebuilt from allowed SVG elements and attributes only; everything else dropped."""
    rebuilder = _Rebuilder()
    rebuilder.feed(str(markup))
    rebuilder.close()
    rebuilder.parts += [f"</{tag}>" for tag in reversed(rebuilder.open)]
    return Markup("".join(rebuilder.parts))
