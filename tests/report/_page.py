"""Reading a report page back for the tests: its images, links, tables, sections and visible text.

Loaded by file path from ``conftest.py`` (test folders are not packages).
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd

#: Tags inside a line of text (the others separate words).
INLINE = {"a", "b", "code", "em", "i", "span", "strong", "sub", "sup"}
#: A missing value printed as a value: Python's and pandas' spellings.
MISSING_WORDS = re.compile(r"\b(nan|NaN|None|null|<NA>|NaT)\b")


class Page(HTMLParser):
    """Every tag, image, link, table, section and the visible text (style content left out) of one page."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.html = Path(path).read_text(encoding="utf-8")
        self.tags: list[str] = []
        self.images: list[dict[str, str]] = []  # alt, src, class of the enclosing figure
        self.links: list[dict[str, str]] = []  # every href/src/data attribute outside <img>
        self.tables: dict[str, list[list[str]]] = {}  # by id; rows of cell texts, the header row first
        self.order: list[str] = []  # ids of sections/details and alts of images, in page order
        self.attributes: list[str] = []  # every attribute value, data: URIs left out
        self._text: list[str] = []
        self._style = False
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._figure = ""
        self.feed(self.html)
        self.text = " ".join("".join(self._text).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag not in INLINE:
            self._text.append(" ")
        for value in attrs.values():
            if value is not None and not value.startswith("data:"):
                self.attributes.append(value)
        if tag == "style":
            self._style = True
        if tag == "figure":
            self._figure = attrs.get("class") or ""
        if tag == "img":
            self.images.append({"alt": attrs.get("alt", ""), "src": attrs.get("src", ""), "figure": self._figure})
            self.order.append(f"img:{attrs.get('alt', '')}")
        else:
            for name in ("href", "src", "data"):
                if name in attrs:
                    self.links.append({"tag": tag, "attr": name, "value": attrs[name],
                                       "download": attrs.get("download", "")})
        if tag in ("section", "details") and attrs.get("id"):
            self.order.append(f"{tag}:{attrs['id']}")
        if tag == "table":
            self._table = attrs.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        if tag == "tr" and self._table is not None:
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag not in INLINE:
            self._text.append(" ")
        if tag == "style":
            self._style = False
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._style:
            return
        self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    # ------------------------------------------------------------------------------------------------ helpers
    def image_alts(self) -> list[str]:
        return [i["alt"] for i in self.images]

    def table(self, table_id: str) -> pd.DataFrame:
        """A table by id as a DataFrame of strings (its first row the header)."""
        rows = self.tables[table_id]
        return pd.DataFrame(rows[1:], columns=rows[0])

    def download(self) -> tuple[str, pd.DataFrame]:
        """The file name and the content of the embedded predictions CSV."""
        found = [link for link in self.links if link["value"].startswith("data:text/csv")]
        assert len(found) == 1, found
        payload = found[0]["value"].split(",", 1)[1]
        text = base64.b64decode(payload).decode("utf-8")
        return found[0]["download"], pd.read_csv(io.StringIO(text), index_col=0, keep_default_na=False)

    def missing_shown(self) -> list[str]:
        """Missing values printed as values: in the visible text and in attributes (alt, title, class)."""
        found = []
        for where in (self.text, *self.attributes):
            for match in MISSING_WORDS.finditer(where):
                found.append(where[max(0, match.start() - 40): match.end() + 40])
        return found
