"""PDF documents (invoices, account statements) drawn with fpdf2 from layouts in include/templates/pdf.

A layout (`<name>.yaml`) is a page size and a list of blocks, each a position plus a Jinja text
rendered in the same sandbox as the e-mail templates (`Templates`), so a layout is edited like a
template and CRM values stay data. The labels (`labels[.<locale>].yaml`, locale fallback as for
e-mail) are the `t` of every layout. Block kinds:

- `text`: one or more lines (`\\n`) at x/y in a box of width w, line height h, size, style B, align L/C/R;
  with `fit: true` a line wider than the box is shrunk (down to 6 pt);
- `line`: [x1, y1, x2, y2]; `rect`: [x, y, w, h] with an optional `fill` grey level (0-255);
- `table`: rows from a list field (`rows: invoices`), `columns` with `head`, `text` (over `row`) and
  `w`/`align`/`fit`; breaks pages and repeats the header.

Why the font handling below: text must render Portuguese, Polish and Romanian letters, so the
fonts are Unicode TTFs (DejaVu Sans, vendored in include/fonts; fpdf2's core fonts are Latin-1
only). fpdf2 parses the TTF for every document (~35 ms) and subsets it with fontTools at output
(~25 ms per font): 15 PDFs/s, far from the hundreds a dunning run needs. So, per process:
- the fonts are parsed once and every document gets a light clone (`_clone_font`);
- every document pre-picks the same character repertoire, in the same order (ASCII, the Latin-1
  and Latin Extended-A letters, Romanian comma-below letters, a few signs), so documents whose text
  stays within it share one glyph-to-code assignment, and the font objects fpdf2 produced for the
  first such document (subset font program, widths, ToUnicode, CIDToGIDMap) are re-added to the
  next ones as they are (`_CachingOutputProducer`); a text with a character outside the
  repertoire takes fpdf2's normal path for that document (and is cached under its own key).
The result is a byte-for-byte ordinary fpdf2 PDF; the cache only skips recomputing identical
objects. It relies on fpdf2's `OutputProducer._add_fonts` / `_add_pdf_obj` (fpdf2 is pinned).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fontTools import ttLib
from fpdf import FPDF
from fpdf.fonts import SubsetMap, TTFFont
from fpdf.output import OutputProducer

from crm.config import INCLUDE_DIR, TEMPLATES_DIR
from crm.notify.templates import RenderError, TemplateProblem, Templates, render

# fontTools logs every table it prunes at INFO: one burst per first document of a glyph set
logging.getLogger("fontTools.subset").setLevel(logging.WARNING)

FONTS_DIR = INCLUDE_DIR / "fonts"
FAMILY = "dejavu"
FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf"}
MIN_FONT_SIZE = 6.0
_CACHE_SIZE = 64

# Everything a Portuguese, Polish or Romanian document normally needs, in a fixed order.
REPERTOIRE = (
    "".join(chr(c) for c in range(0x20, 0x7F))
    + "\u00a0\u202fáàâãçéêíóôõúüÁÀÂÃÇÉÊÍÓÔÕÚÜºª°"  # Portuguese
    + "ąćęłńóśźżĄĆĘŁŃÓŚŹŻ"  # Polish
    + "ăâîșțĂÂÎȘȚşţŞŢ"  # Romanian (comma below, and the cedilla forms older systems still send)
    + "–—‘’“”„…•·€№"
)


class PdfProblem(TemplateProblem):
    """A layout or label file is missing or malformed: no document of that kind can be made."""


# ------------------------------------------------------------------------------------------------
# fpdf2 with shared fonts
# ------------------------------------------------------------------------------------------------

_lock = threading.Lock()
_prototypes: dict[str, tuple[TTFFont, SubsetMap]] = {}
_font_objects: OrderedDict[tuple, tuple[list[tuple[Any, str | None]], dict[int, Any]]] = OrderedDict()


def _prototype(style: str) -> tuple[TTFFont, SubsetMap]:
    """The parsed font of a style and its subset with the repertoire picked, once per process (read only)."""
    with _lock:
        found = _prototypes.get(style)
        if found is None:
            scratch = FPDF()
            scratch.add_font(FAMILY, style, str(FONTS_DIR / FONT_FILES[style]))
            proto = scratch.fonts[f"{FAMILY}{style}"]
            for ch in REPERTOIRE:
                if ord(ch) in proto.cmap:
                    proto.subset.pick(ord(ch))
            SubsetMap.pick.cache_clear()
            found = _prototypes[style] = (proto, proto.subset)
        return found


def _clone_font(pdf: FPDF, style: str) -> TTFFont:
    """A per-document font sharing the prototype's parsed tables, with its own copy of the picked subset."""
    proto, picked = _prototype(style)
    font = copy.copy(proto)
    font.i = len(pdf.fonts) + 1
    font.missing_glyphs = []
    font.biggest_size_pt = 0
    font.desc = copy.copy(proto.desc)
    subset = SubsetMap.__new__(SubsetMap)
    subset.font = font
    subset._next = picked._next
    subset._reserved = list(picked._reserved)
    subset._char_id_per_glyph = dict(picked._char_id_per_glyph)
    font.subset = subset
    pdf.fonts[font.fontkey] = font
    return font


class _CachingOutputProducer(OutputProducer):
    """fpdf2's producer, re-adding the font objects of an earlier document with the same glyph codes."""

    def _add_fonts(self, image_objects_per_index: Any, gfxstate_objs_per_name: Any, pattern_objs_per_name: Any) -> Any:
        fonts = sorted(self.fpdf.fonts.values(), key=lambda f: f.i)
        key = tuple(
            (f.fontkey, f.i, tuple(sorted((cid, g.glyph_id) for g, cid in f.subset.items() if g is not None)))
            for f in fonts
        )
        with _lock:
            hit = _font_objects.get(key)
            if hit is not None:
                _font_objects.move_to_end(key)
        if hit is not None:
            objects, by_index = hit
            for obj, label in objects:
                self._add_pdf_obj(obj, label)
            SubsetMap.pick.cache_clear()
            SubsetMap.get_glyph.cache_clear()
            return dict(by_index)
        added: list[tuple[Any, str | None]] = []
        original = self._add_pdf_obj

        def capture(obj: Any, label: str | None = None) -> int:
            added.append((obj, label))
            return original(obj, label)

        for f in fonts:  # fpdf2 subsets (and closes) the TTFont in place: give it a private one
            f.ttfont = ttLib.TTFont(f.ttffile, recalcTimestamp=False, lazy=True)
        self._add_pdf_obj = capture  # type: ignore[method-assign]
        try:
            by_index = super()._add_fonts(image_objects_per_index, gfxstate_objs_per_name, pattern_objs_per_name)
        finally:
            del self._add_pdf_obj
        with _lock:
            _font_objects[key] = (added, dict(by_index))
            while len(_font_objects) > _CACHE_SIZE:
                _font_objects.popitem(last=False)
        return by_index


# ------------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    name: str
    size: str
    orientation: str
    margin: float
    blocks: tuple[dict[str, Any], ...]
    labels: Mapping[str, str]
    locale: str  # the locale whose label file was used ('' = default)


def _compile_block(templates: Templates, block: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(block)
    kinds = [k for k in ("text", "line", "rect", "table") if k in block]
    if len(kinds) != 1:
        raise PdfProblem(f"{where}: a block has exactly one of text, line, rect, table: {dict(block)!r}")
    kind = kinds[0]
    out["kind"] = kind
    if kind == "text":
        out["text"] = templates.from_string(str(block["text"]))
    elif kind == "table":
        cols = []
        for col in block.get("columns") or []:
            cols.append(
                {
                    **col,
                    "head": templates.from_string(str(col.get("head", ""))),
                    "text": templates.from_string(str(col["text"])),
                }
            )
        if not cols:
            raise PdfProblem(f"{where}: table {block['table']!r} has no columns")
        out["columns"] = cols
        if block.get("after"):
            out["after"] = templates.from_string(str(block["after"]))
    elif len(block[kind]) != 4:
        raise PdfProblem(f"{where}: {kind} takes four numbers")
    return out


@functools.cache
def load_layout(name: str, locale: str | None, root: str = str(TEMPLATES_DIR)) -> Layout:
    """The compiled layout `pdf/<name>.yaml` with the labels of `locale` (fallback to the default labels)."""
    templates = Templates("pdf", root)
    rel, _ = templates.path_for(name, "yaml", None)
    labels_rel, loc = templates.path_for("labels", "yaml", locale)
    try:
        spec = yaml.safe_load((Path(root) / rel).read_text(encoding="utf-8")) or {}
        labels = yaml.safe_load((Path(root) / labels_rel).read_text(encoding="utf-8")) or {}
        if loc:  # a locale's file may translate only some labels
            labels = {**(yaml.safe_load((Path(root) / "pdf" / "labels.yaml").read_text(encoding="utf-8")) or {}),
                      **labels}  # fmt: skip
    except yaml.YAMLError as exc:
        raise PdfProblem(f"{rel}: not valid YAML: {exc}") from exc
    blocks = tuple(_compile_block(templates, b, rel) for b in spec.get("blocks") or [])
    if not blocks:
        raise PdfProblem(f"{rel}: no blocks")
    return Layout(
        name=name,
        size=str(spec.get("size", "A4")),
        orientation=str(spec.get("orientation", "P")),
        margin=float(spec.get("margin", 15)),
        blocks=blocks,
        labels={str(k): str(v) for k, v in labels.items()},
        locale=loc,
    )


def layout_names(root: Path | str = TEMPLATES_DIR) -> list[str]:
    return [n for n in Templates("pdf", root).names() if n != "labels"]


# ------------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------------


def render_pdf(layout: Layout, fields: Mapping[str, Any], *, title: str = "") -> bytes:
    """One document: every block rendered with `fields` (+ `t`, the labels) and drawn; returns the PDF bytes.

    A field missing or a sandbox violation raises RenderError (that message fails, not the run).
    """
    values = {**fields, "t": layout.labels}
    pdf = FPDF(orientation=layout.orientation, format=layout.size)
    pdf.set_auto_page_break(False)
    pdf.set_margins(layout.margin, layout.margin, layout.margin)
    pdf.set_creator("crm-batch")
    if title:
        pdf.set_title(title)
    for style in FONT_FILES:
        _clone_font(pdf, style)
    pdf.add_page()
    pdf.set_font(FAMILY, "", 10)
    for block in layout.blocks:
        kind = block["kind"]
        if kind == "text":
            _text(pdf, block, render(block["text"], values))
        elif kind == "line":
            pdf.set_line_width(float(block.get("width", 0.3)))
            pdf.line(*map(float, block["line"]))
        elif kind == "rect":
            x, y, w, h = map(float, block["rect"])
            if "fill" in block:
                pdf.set_fill_color(int(block["fill"]))
                pdf.rect(x, y, w, h, style="F")
            else:
                pdf.set_line_width(float(block.get("width", 0.3)))
                pdf.rect(x, y, w, h)
        else:
            _table(pdf, layout, block, values)
    return bytes(pdf.output(output_producer_class=_CachingOutputProducer))


def _fit(pdf: FPDF, text: str, width: float, size: float) -> None:
    """Shrink the font until the line fits the box (down to MIN_FONT_SIZE)."""
    while size > MIN_FONT_SIZE and pdf.get_string_width(text) > width:
        size = max(MIN_FONT_SIZE, size - 1)
        pdf.set_font_size(size)


def _put(pdf: FPDF, x: float, y: float, w: float, h: float, text: str, align: str = "L") -> None:
    """One line in the box (x, y, w, h), vertically centred like `cell()`, drawn with `text()` (twice as fast)."""
    if not text:
        return
    if align == "R":
        x += w - pdf.get_string_width(text) - pdf.c_margin
    elif align == "C":
        x += (w - pdf.get_string_width(text)) / 2
    else:
        x += pdf.c_margin
    pdf.text(x, y + h / 2 + 0.3 * pdf.font_size, text)


def _text(pdf: FPDF, block: Mapping[str, Any], text: str) -> None:
    x, y = float(block.get("x", pdf.l_margin)), float(block["y"])
    w, h = float(block.get("w", 0)) or (pdf.w - pdf.r_margin - x), float(block.get("h", 5))
    size = float(block.get("size", 10))
    for i, line in enumerate(text.split("\n")):
        line = line.rstrip()
        if not line and block.get("skip_empty", True):
            continue
        pdf.set_font(FAMILY, block.get("style", ""), size)
        if block.get("fit"):
            _fit(pdf, line, w, size)
        _put(pdf, x, y + i * h, w, h, line, block.get("align", "L"))


def _table(pdf: FPDF, layout: Layout, block: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    rows = values.get(block["table"])
    if not isinstance(rows, Sequence):
        raise RenderError(f"{layout.name}: table {block['table']!r} needs a list field")
    x, y = float(block.get("x", pdf.l_margin)), float(block["y"])
    h, size = float(block.get("h", 6)), float(block.get("size", 9))
    bottom = pdf.h - layout.margin - float(block.get("bottom", 15))
    cols = block["columns"]

    width = sum(float(c["w"]) for c in cols)

    def header(top: float) -> float:
        pdf.set_fill_color(int(block.get("head_fill", 230)))
        pdf.rect(x, top, width, h, style="F")
        pdf.set_font(FAMILY, "B", size)
        left = x
        for col in cols:
            _put(pdf, left, top, float(col["w"]), h, render(col["head"], values), col.get("align", "L"))
            left += float(col["w"])
        return top + h

    y = header(y)
    for row in rows:
        if y + h > bottom:
            pdf.add_page()
            y = header(layout.margin)
        left = x
        row_values = {**values, "row": row}
        for col in cols:
            text = render(col["text"], row_values)
            pdf.set_font(FAMILY, col.get("style", ""), size)
            if col.get("fit"):
                _fit(pdf, text, float(col["w"]) - 1, size)
            _put(pdf, left, y, float(col["w"]), h, text, col.get("align", "L"))
            left += float(col["w"])
        y += h
        pdf.set_line_width(0.1)
        pdf.line(x, y, x + width, y)
    if block.get("after") is not None:
        if y + h + 1 > bottom:
            pdf.add_page()
            y = layout.margin
        pdf.set_font(FAMILY, "B", size)
        _put(pdf, x, y + 1, width, h, render(block["after"], values), "R")


def pdf_date(value: dt.date | str | None, locale: str | None) -> str:
    """A date as the document's readers write it (22/11/2026 in Brazil, 22.11.2026 in Poland and Romania)."""
    if value is None or value == "":
        return ""
    day = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])
    return _date_format(locale or "").format(d=day)


@functools.cache
def _date_format(locale: str) -> str:
    lang = locale.replace("-", "_").split("_")[0].lower()
    if lang in ("pt", "es", "fr", "it"):
        return "{d.day:02d}/{d.month:02d}/{d.year}"
    if lang in ("pl", "ro", "de", "ru", "cs"):
        return "{d.day:02d}.{d.month:02d}.{d.year}"
    return "{d:%Y-%m-%d}"


def money(amount: float, currency: str, locale: str | None) -> str:
    """An amount with its currency as the locale writes it (R$ 1.234,56; 1234,56 zł; 1.234,56 RON)."""
    return _money(round(float(amount), 2), currency, locale or "en")


@functools.lru_cache(maxsize=65536)
def _money(amount: float, currency: str, locale: str) -> str:
    from babel.numbers import format_currency

    try:
        return format_currency(amount, currency, locale=locale.replace("-", "_"))
    except Exception:  # an unknown locale: still a readable amount
        return f"{currency} {amount:,.2f}"


@functools.cache
def currency_of(locale: str | None, default: str = "BRL") -> str:
    """The currency of a locale's territory (pt_BR -> BRL, pl_PL -> PLN, ro_RO -> RON)."""
    if not locale or "_" not in locale.replace("-", "_"):
        return default
    from babel.numbers import get_territory_currencies

    try:
        found = get_territory_currencies(locale.replace("-", "_").split("_")[1].upper())
    except Exception:
        return default
    return found[0] if found else default
