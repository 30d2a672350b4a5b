"""The PDF summary of an order export (fpdf2): a header saying which batch it is, then a table
of the orders, one row each, on landscape A4 pages.

Text is drawn with DejaVu Sans when the system has it (Latin, Greek, Cyrillic, Arabic, Hebrew and
more; characters it lacks, such as CJK, are left blank); otherwise with the PDF core font
Helvetica, which holds Latin-1 only, so other characters are shown as "?".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace

from pacs.index.orders import Order
from worklist.export_formats import BatchHeader

_UNICODE_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
)
_COLUMNS = (
    ("Order", 26), ("Accession", 26), ("Patient", 44), ("Patient ID", 24), ("Born", 18), ("Sex", 9),
    ("Exam", 42), ("Scheduled (UTC)", 28), ("Priority", 16), ("Status", 22), ("Ordering provider", 22),
)


class _NoMissingGlyphs(logging.Filter):
    """fpdf2 logs the characters a font lacks: pieces of patient names, kept out of the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "missing the following glyphs" not in str(record.msg)


_FPDF_LOG = logging.getLogger("fpdf.output")
_SUBSET_LOG = logging.getLogger("fontTools.subset")


def _quiet_library_logs() -> None:
    if not any(isinstance(f, _NoMissingGlyphs) for f in _FPDF_LOG.filters):
        _FPDF_LOG.addFilter(_NoMissingGlyphs())
    # fpdf2 embeds a subset of the font through fontTools, whose subsetter reports every step at
    # INFO (about 40 lines per export, glyph names included). A level the operator set is kept.
    if _SUBSET_LOG.level == logging.NOTSET:
        _SUBSET_LOG.setLevel(logging.WARNING)


def to_pdf(orders: Sequence[Order], header: BatchHeader, created_by: str) -> bytes:
    _quiet_library_logs()
    pdf = FPDF(orientation="landscape", format="A4")
    pdf.set_title(f"Order export {header.reference}")
    pdf.set_creator("minipacs")
    family = _font(pdf)
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    pdf.set_font(family, size=14)
    pdf.cell(text=_safe(pdf, f"Order export {header.reference}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, size=9)
    summary = (f"{len(orders)} orders, exported {header.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC "
               f"by {created_by}" + (f" for {header.destination}" if header.destination else ""))
    pdf.cell(text=_safe(pdf, summary), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font(family, size=7)
    widths = tuple(width for _, width in _COLUMNS)
    with pdf.table(col_widths=widths, text_align="LEFT", headings_style=FontFace(emphasis=None, fill_color=(225, 225, 225)),
                   line_height=pdf.font_size * 1.6, width=sum(widths)) as table:
        table.row([name for name, _ in _COLUMNS])
        for order in orders:
            table.row([_safe(pdf, text) for text in _cells(order)])
    return bytes(pdf.output())


def _font(pdf: FPDF) -> str:
    for path in _UNICODE_FONTS:
        if path.is_file():
            pdf.add_font("DejaVu", fname=str(path))
            return "DejaVu"
    return "Helvetica"


def _safe(pdf: FPDF, text: str) -> str:
    if pdf.font_family == "helvetica":  # core fonts: Latin-1 only
        return text.encode("latin-1", "replace").decode("latin-1")
    return text


def _cells(order: Order) -> list[str]:
    exam = " ".join(filter(None, (order.modality, order.body_part, order.laterality)))
    if order.procedure_description:
        exam += f" - {order.procedure_description}"
    scheduled = f"{order.scheduled_at.astimezone(UTC):%Y-%m-%d %H:%M}" if order.scheduled_at else ""
    born = order.patient_birth_date or ""
    if len(born) == 8:
        born = f"{born[:4]}-{born[4:6]}-{born[6:]}"
    return [
        order.order_number, order.accession_number, order.patient_name.replace("^", " ").strip(), order.patient_id,
        born, order.patient_sex or "", exam, scheduled, order.priority, order.status,
        (order.ordering_provider or "").replace("^", " ").strip(),
    ]
