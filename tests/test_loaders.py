from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from retrieval.loaders import (
    MAX_DOCX_UNPACKED_BYTES,
    FileTooLargeError,
    LoaderError,
    UnsupportedFileError,
    discover,
    load_bytes,
    load_file,
    parse_markdown,
    parse_rst,
)
from retrieval.validation import DocumentLimits


def minimal_pdf(pages: list[str], title: str = "Test PDF") -> bytes:
    """A valid PDF with a page a string, each of its lines a line of text (Helvetica), written by hand with a
    correct xref table."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    font_id = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        lines = " T* ".join(f"({_pdf_string(line)}) Tj" for line in text.split("\n"))
        content = f"BT /F1 12 Tf 14 TL 72 720 Td {lines} ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        len(objects),
        xref,
    )
    return bytes(out)


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def minimal_docx(
    blocks: list[tuple[str, str]], title: str | None = None, table: list[list[str]] | None = None
) -> bytes:
    """A DOCX written by python-docx: ``(style, text)`` paragraphs ("Heading 1", "Normal", ...), then ``table``."""
    import docx

    document = docx.Document()
    for style, text in blocks:
        document.add_paragraph(text, style=style)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for cells, row in zip(table, grid.rows, strict=True):
            for text, cell in zip(cells, row.cells, strict=True):
                cell.text = text
    document.core_properties.title = title or ""
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_markdown_sections_keep_heading_paths() -> None:
    text = (
        "# Guide\nIntro text.\n\n## Install\nRun make.\n\n```\n# not a heading\n```\n\n## Use\nAsk.\n\nSub\n---\nDeep."
    )
    sections = parse_markdown(text)
    assert [(s.headings, s.text.split("\n")[0]) for s in sections] == [
        (("Guide",), "Intro text."),
        (("Guide", "Install"), "Run make."),
        (("Guide", "Use"), "Ask."),
        (("Guide", "Sub"), "Deep."),
    ]
    assert "# not a heading" in sections[1].text


def test_rst_levels_follow_first_appearance() -> None:
    text = (
        "=====\nTitle\n=====\n\nIntro.\n\nPart A\n------\nA text.\n\n"
        "Detail\n~~~~~~\nDetail text.\n\nPart B\n------\nB text."
    )
    sections = parse_rst(text)
    assert [(s.headings, s.text) for s in sections] == [
        (("Title",), "Intro."),
        (("Title", "Part A"), "A text."),
        (("Title", "Part A", "Detail"), "Detail text."),
        (("Title", "Part B"), "B text."),
    ]


def test_each_file_format(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Alpha\nAlpha body.")
    (tmp_path / "b.txt").write_text("Plain text.\n\nSecond paragraph.")
    (tmp_path / "c.rst").write_text("Gamma\n=====\nGamma body.")
    (tmp_path / "d.html").write_text(
        "<html><head><title>Delta</title><script>var x=1;</script></head>"
        "<body><nav>menu</nav><h1>Top</h1><p>First <b>bold</b> para.</p>"
        "<h2>Sub</h2><ul><li>item</li></ul></body></html>"
    )
    (tmp_path / "e.pdf").write_bytes(minimal_pdf(["Epsilon page one", "Epsilon page two"]))
    (tmp_path / "f.jsonl").write_text(
        json.dumps({"id": "f1", "text": "One.", "title": "F1", "metadata": {"lang": "en"}})
        + "\n\n"
        + json.dumps({"id": "f2", "text": "Two."})
        + "\n"
    )
    loaded = {doc.id: doc for path, doc_id in discover([tmp_path]) for doc in load_file(path, doc_id)}
    assert set(loaded) == {"a.md", "b.txt", "c.rst", "d.html", "e.pdf", "f1", "f2"}
    assert loaded["a.md"].title == "Alpha" and loaded["a.md"].sections[0].headings == ("Alpha",)
    assert loaded["b.txt"].text == "Plain text.\n\nSecond paragraph." and loaded["b.txt"].title == "b"
    assert loaded["c.rst"].sections[0].headings == ("Gamma",)
    html = loaded["d.html"]
    assert html.title == "Delta"
    assert [(s.headings, s.text) for s in html.sections] == [(("Top",), "First bold para."), (("Top", "Sub"), "item")]
    assert "var x" not in html.text and "menu" not in html.text
    pdf = loaded["e.pdf"]
    assert pdf.title == "Test PDF"
    assert [s.text for s in pdf.sections] == ["Epsilon page one", "Epsilon page two"]
    assert loaded["f1"].title == "F1" and loaded["f1"].metadata == {"lang": "en"}
    assert loaded["f2"].source == str(tmp_path / "f.jsonl")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"id": "a", "text": "ok"}\n{not json}\n', "line 2: invalid JSON"),
        ("noid.jsonl", b'{"text": "no id"}\n', "line 1: 'id' must be"),
        ("dup.jsonl", b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "duplicate id"),
        ("extra.jsonl", b'{"id": "a", "text": "x", "body": 1}\n', "unknown field"),
        ("binary.md", b"\x00\x01\x02", "binary content"),
        ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
        ("empty.md", b"   \n", "empty file"),
        ("heading-only.md", b"# Title\n", "no text found"),
        ("broken.pdf", b"%PDF-1.4 garbage", "unreadable PDF"),
        ("sheet.xlsx", b"PK", "unsupported file type"),
        ("notes.docx", b"PK\x03\x04 not a zip", "unreadable DOCX"),
    ],
)
def test_bad_files_raise_a_clear_error(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LoaderError, match=message):
        load_file(path, name)


def test_discover_skips_hidden_and_unsupported(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.md").write_text("# hidden")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "y.md").write_text("# y")
    (tmp_path / "z.png").write_bytes(b"\x89PNG")
    assert [doc_id for _, doc_id in discover([tmp_path])] == ["sub/y.md"]
    assert [doc_id for _, doc_id in discover([tmp_path / "sub" / "y.md"])] == ["y.md"]


def test_docx_sections_follow_heading_styles_and_tables_are_kept(tmp_path: Path) -> None:
    data = minimal_docx(
        [
            ("Heading 1", "Guide"),
            ("Normal", "Intro text."),
            ("Heading 2", "Install"),
            ("Normal", "Run make."),
            ("Heading 1", "Prices"),
        ],
        table=[["plan", "price"], ["basic", "9 EUR"]],
    )
    (tmp_path / "guide.docx").write_bytes(data)
    (document,) = load_file(tmp_path / "guide.docx", "guide.docx")
    assert [(s.headings, s.text) for s in document.sections] == [
        (("Guide",), "Intro text."),
        (("Guide", "Install"), "Run make."),
        (("Prices",), "plan | price\nbasic | 9 EUR"),
    ]
    assert document.title == "Guide" and document.metadata == {"format": "docx"}
    titled = load_bytes(minimal_docx([("Title", "Handbook"), ("Normal", "Body.")], title="Core"), "h.docx", "h", "h")
    assert titled.title == "Core" and titled.sections[0].headings == ("Handbook",)
    untitled = load_bytes(minimal_docx([("Normal", "Just text.")]), "notes.docx", "notes.docx", "notes.docx")
    assert untitled.title == "notes" and untitled.text == "Just text."


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("x.pdf", b"<html>not a pdf</html>", UnsupportedFileError, "not a PDF"),
        ("x.docx", b"%PDF-1.4\n", UnsupportedFileError, "not a DOCX file"),
        ("x.md", minimal_pdf(["binary"]) + b"\x00\xff", UnsupportedFileError, "not UTF-8|binary"),
        ("x.exe", b"MZ", UnsupportedFileError, "unsupported file type .exe"),
        ("x", b"text", UnsupportedFileError, "unsupported file type \\(none\\)"),
        ("x.pdf", b"", LoaderError, "empty file"),
        ("x.pdf", b"%PDF-1.4\n%%EOF", LoaderError, "unreadable PDF"),
    ],
)
def test_content_must_be_what_the_name_says(name: str, content: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        load_bytes(content, name, name, name)


def test_a_docx_of_another_kind_or_a_zip_bomb_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as package:
        package.writestr("hello.txt", "not a word document")
    with pytest.raises(LoaderError, match="unreadable DOCX"):
        load_bytes(out.getvalue(), "x.docx", "x", "x")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as package:
        package.writestr("word/document.xml", b"\0" * (MAX_DOCX_UNPACKED_BYTES + 1))
    assert len(bomb.getvalue()) < 200_000
    with pytest.raises(FileTooLargeError, match="unpacks to"):
        load_bytes(bomb.getvalue(), "x.docx", "x", "x")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("big.md", b"# Big\n" + b"word " * 400),
        ("big.pdf", minimal_pdf(["page " * 100] * 5)),
        ("big.docx", minimal_docx([("Normal", "word " * 100)] * 5)),
    ],
)
def test_every_format_is_held_to_max_document_chars(name: str, content: bytes) -> None:
    with pytest.raises(FileTooLargeError, match="longer than 1000 characters"):
        load_bytes(content, name, name, name, DocumentLimits(max_document_chars=1000))
    assert load_bytes(content, name, name, name, DocumentLimits(max_document_chars=10_000)).text
