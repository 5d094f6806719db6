"""The labelled grid image: column labels above, row labels to the left, axis names in the corner.

Labels are drawn with Pillow's own scalable font (``ImageFont.load_default(size=…)``), sized to the
cells and wrapped to the space they have (a word longer than a line is broken; a label with more
lines than fit ends in "..."). ``layout`` says where every cell sits, so a reader (or a test) can cut
a cell back out of grid.png.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BACKGROUND = "white"
INK = (20, 20, 20)
TITLE_INK = (110, 110, 110)
MAX_COLUMN_LABEL_LINES = 6


@dataclass(frozen=True)
class Layout:
    """Column c spans [left + c * (column_width + gap), + column_width) and row r spans
    [top + r * (cell_height + gap), + cell_height); a cell sits centred in its column, at its row's top.
    Columns are wider than the cells when small cells would leave their labels no room."""

    left: int
    top: int
    cell_width: int
    cell_height: int
    column_width: int
    gap: int
    width: int
    height: int
    font_size: int

    def box(self, row: int, col: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of an image of ``size`` in cell (row, col)."""
        x = self.left + col * (self.column_width + self.gap) + (self.column_width - size[0]) // 2
        y = self.top + row * (self.cell_height + self.gap)
        return x, y, x + size[0], y + size[1]

    def as_dict(self) -> dict:
        return asdict(self)


def font_size_for(cell_width: int) -> int:
    """Readable at any cell size: 14 px for small cells, 32 px for 512-px ones, 48 px from 768 px."""
    return max(14, min(48, cell_width // 16))


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def wrap(text: str, font, width: int, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap of ``text`` (hard breaks kept) to ``width`` pixels."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:  # break a word wider than a line
                cut = len(word) - 1
                while cut > 1 and font.getlength(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def _line_height(font) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent + 2


def render_grid(
    images: list[list], row_labels: list[str], col_labels: list[str], row_title: str = "", col_title: str = ""
):
    """(grid image, Layout) for ``images[row][col]`` (PIL images; cells may differ in size)."""
    from PIL import Image, ImageDraw

    cell_w = max(im.width for row in images for im in row)
    cell_h = max(im.height for row in images for im in row)
    size = font_size_for(cell_w)
    font, title_font = _font(size), _font(max(12, size * 4 // 5))
    pad, gap = size // 2, max(2, size // 4)
    line_h = _line_height(font)

    longest = max(font.getlength(line) for label in row_labels for line in label.split("\n"))
    label_w = int(min(max(cell_w, size * 12), max(longest, size * 3))) + 1  # no wider than needed
    column_w = max(cell_w, size * 7)
    col_lines = [wrap(label, font, column_w - 2, MAX_COLUMN_LABEL_LINES) for label in col_labels]
    titles = [f"{name}: {title}" for name, title in (("rows", row_title), ("columns", col_title)) if title]
    title_h = _line_height(title_font) + pad if titles else 0
    top = title_h + pad + max(len(lines) for lines in col_lines) * line_h + pad
    left = pad + label_w + pad
    width = left + len(col_labels) * (column_w + gap) - gap + pad
    height = top + len(row_labels) * (cell_h + gap) - gap + pad
    layout = Layout(left, top, cell_w, cell_h, column_w, gap, width, height, size)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if titles:
        draw.text((pad, pad), "   ".join(titles), font=title_font, fill=TITLE_INK)
    for c, lines in enumerate(col_lines):
        x0, _, _, _ = layout.box(0, c, (column_w, cell_h))
        y = top - pad - len(lines) * line_h
        for line in lines:
            draw.text((x0 + (column_w - font.getlength(line)) / 2, y), line, font=font, fill=INK)
            y += line_h
    max_row_lines = max(1, cell_h // line_h)
    for r, label in enumerate(row_labels):
        _, y0, _, _ = layout.box(r, 0, (cell_w, cell_h))
        for i, line in enumerate(wrap(label, font, label_w, max_row_lines)):
            draw.text((pad, y0 + i * line_h), line, font=font, fill=INK)
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            canvas.paste(image.convert("RGB"), layout.box(r, c, image.size)[:2])
    return canvas, layout
