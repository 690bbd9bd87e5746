"""A one-sheet .xlsx writer (standard library only) for leaderboard upload files."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # characters XML 1.0 forbids
_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG = "http://schemas.openxmlformats.org/package/2006/relationships"

_PARTS = {
    "[Content_Types].xml": (
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        "</Types>"
    ),
    "_rels/.rels": (
        f'<Relationships xmlns="{_PKG}"><Relationship Id="rId1" Target="xl/workbook.xml" '
        f'Type="{_REL}/officeDocument"/></Relationships>'
    ),
    "xl/workbook.xml": (
        f'<workbook xmlns="{_NS}" xmlns:r="{_REL}"><sheets>'
        '<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
    ),
    "xl/_rels/workbook.xml.rels": (
        f'<Relationships xmlns="{_PKG}"><Relationship Id="rId1" Target="worksheets/sheet1.xml" '
        f'Type="{_REL}/worksheet"/></Relationships>'
    ),
}


def column_name(k: int) -> str:
    """Spreadsheet column letters of the 0-based column ``k``: 0 -> A, 25 -> Z, 26 -> AA."""
    name = ""
    k += 1
    while k:
        k, rest = divmod(k - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def _cell(ref: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<c r="{ref}"><v>{value}</v></c>'
    text = escape(_NOT_XML.sub("", str(value)))
    return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{text}</t></is></c>'


def write_xlsx(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write ``header`` and ``rows`` as the first sheet of a new .xlsx at ``path``; None is an empty cell."""
    lines = []
    for r, values in enumerate([list(header), *map(list, rows)], 1):
        cells = "".join(_cell(f"{column_name(c)}{r}", v) for c, v in enumerate(values))
        lines.append(f'<row r="{r}">{cells}</row>')
    sheet = f'<worksheet xmlns="{_NS}"><sheetData>{"".join(lines)}</sheetData></worksheet>'
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, xml in {**_PARTS, "xl/worksheets/sheet1.xml": sheet}.items():
            z.writestr(name, '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + xml)
    return path


def read_xlsx(path: str | Path) -> list[list[str]]:
    """The first sheet of an .xlsx written by :func:`write_xlsx`, every cell as text ("" when empty)."""
    import xml.etree.ElementTree as ET

    ns = {"m": _NS}
    with zipfile.ZipFile(path) as z:
        root = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
    table = []
    for row in root.iterfind(".//m:row", ns):
        values: dict[int, str] = {}
        for c in row.iterfind("m:c", ns):
            col = sum((ord(ch) - 64) * 26**i for i, ch in enumerate(reversed(re.sub(r"\d", "", c.get("r")))))
            node = c.find("m:is/m:t", ns) if c.get("t") == "inlineStr" else c.find("m:v", ns)
            values[col - 1] = (node.text or "") if node is not None else ""
        table.append([values.get(k, "") for k in range(max(values, default=-1) + 1)])
    return table
