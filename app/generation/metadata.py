"""What a generated PNG says about itself.

Two embedded records, both read by tools people already use:

- a ``parameters`` text chunk in AUTOMATIC1111's format (prompt, ``Negative prompt:``
  line, then ``Steps: 30, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, ...``),
  which A1111's "PNG Info", InvokeAI and Civitai read back;
- XMP with the IPTC digital source type ``trainedAlgorithmicMedia``, the standard
  label for AI-generated images (IPTC Photo Metadata 2023.1).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from PIL import Image, PngImagePlugin

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP_KEY = "XML:com.adobe.xmp"


@dataclass(frozen=True)
class Parameters:
    prompt: str
    negative_prompt: str
    steps: int
    sampler: str  # the display name, e.g. "Euler a"
    guidance: float
    seed: int
    width: int
    height: int
    model: str
    extra: tuple[tuple[str, str], ...] = ()  # more "Key: value" pairs, e.g. ("Denoising strength", "0.6")

    def a1111_text(self) -> str:
        pairs = [
            ("Steps", str(self.steps)),
            ("Sampler", self.sampler),
            ("CFG scale", f"{self.guidance:g}"),
            ("Seed", str(self.seed)),
            ("Size", f"{self.width}x{self.height}"),
            ("Model", _clean(self.model)),
            *((k, _clean(v)) for k, v in self.extra),
        ]
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        lines.append(", ".join(f"{k}: {v}" for k, v in pairs))
        return "\n".join(lines)


def _clean(value: str) -> str:
    # the settings line is comma-separated "Key: value" pairs; keep values from breaking it
    return " ".join(str(value).replace(",", " ").split())


def xmp_packet(creator_tool: str = "Gouache") -> str:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about=""'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        ' xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        f" Iptc4xmpExt:DigitalSourceType={quoteattr(DIGITAL_SOURCE_TYPE)}"
        f" xmp:CreatorTool={quoteattr(creator_tool)}/>"
        "</rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    )


def png_bytes(image: Image.Image, params: Parameters) -> bytes:
    """The image as PNG with both records embedded."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", params.a1111_text())
    info.add_itxt(XMP_KEY, xmp_packet())
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG (``parameters``, the XMP packet ...), for tests and for
    reading an uploaded image's settings back."""
    with Image.open(io.BytesIO(data)) as image:
        return {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}


def parse_a1111(text: str) -> dict[str, str]:
    """AUTOMATIC1111 ``parameters`` text → ``{"prompt", "negative_prompt", "Steps", "Seed", ...}``."""
    lines = text.strip().split("\n")
    settings_line = lines.pop() if lines and ": " in lines[-1] and "Steps: " in lines[-1] else ""
    negative = ""
    prompt_lines = []
    for i, line in enumerate(lines):
        if line.startswith("Negative prompt: "):
            negative = "\n".join([line.removeprefix("Negative prompt: "), *lines[i + 1 :]])
            break
        prompt_lines.append(line)
    out = {"prompt": "\n".join(prompt_lines).strip(), "negative_prompt": negative.strip()}
    for pair in settings_line.split(", "):
        key, sep, value = pair.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out
