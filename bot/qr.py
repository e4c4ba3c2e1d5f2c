"""QR codes for dossier receipts: one code per channel, side by side, in one PNG."""

from __future__ import annotations

import io

import segno
from PIL import Image, ImageDraw, ImageFont

LABELS = {"telegram": "Telegram", "zalo": "Zalo", "chat": "Web"}
SCALE = 6
GAP = 24
CAPTION = 28


def receipt_png(code: str, links: dict[str, str]) -> bytes:
    """A PNG with a QR code for each link, captioned with the channel, and the dossier code."""
    images = []
    for key in ("telegram", "zalo", "chat"):
        if key in links:
            buf = io.BytesIO()
            segno.make(links[key], error="m").save(buf, kind="png", scale=SCALE, border=2)
            buf.seek(0)
            images.append((LABELS[key], Image.open(buf).convert("RGB")))
    width = sum(img.width for _, img in images) + GAP * (len(images) + 1)
    height = max(img.height for _, img in images) + 2 * CAPTION + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=18)
    x = GAP
    for label, img in images:
        sheet.paste(img, (x, CAPTION))
        draw.text((x + img.width // 2, CAPTION // 2), label, fill="black", font=font, anchor="mm")
        x += img.width + GAP
    draw.text((width // 2, height - CAPTION // 2 - 4), code, fill="black", font=font, anchor="mm")
    out = io.BytesIO()
    sheet.save(out, format="PNG", optimize=True)
    return out.getvalue()
