"""Check a report.html in headless Chromium at a phone width (390 px) and a laptop width (1280 px).

    python tools/check_report_html.py RUN/report.html [--out DIR]

Why a browser: whether a table overflows the screen or an image decodes is decided by layout,
which no regex over the HTML can see. A headless window is never narrower than 500 px, so
`--window-size=390,...` alone would lay the page out at 500 px and crop the screenshot; instead
the untouched page is shown in an iframe exactly as wide as the device, and a script in the
framing page measures it on load and writes JSON into the DOM, read back with `--dump-dom`.
Failed checks, at each width: the page is wider than the window (a table that scrolls in its
own overflow-x box is fine), an <img> did not load or is not a data: URI, a src/href of
link/script/img/... points outside the file or the page made a request, text under 12 px, no
viewport meta tag (or one that stops zooming). A second run takes a full-page screenshot.
Writes DIR/check.json and DIR/report-390.png, DIR/report-1280.png (DIR defaults to
html-check/ next to the page); one line per failure and exit 1; exit 2 if Chromium is missing.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTHS = {"phone": (390, 844), "laptop": (1280, 800)}  # (width, viewport height) in CSS px
MIN_FONT_PX = 12.0
MAX_SCREENSHOT_HEIGHT = 12000
TIMEOUT_S = 180
PROBE_ID = "distill-html-check"
REFERENCE_ATTRIBUTES = ("href", "src", "srcset", "data", "poster")  # on link, script, img, ...: must be data:
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Without the background-networking flags Chromium waits for the network on a closed machine;
# file access lets the framing page read the framed page's DOM (both are file:// URLs).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-file-access-from-files", "--hide-scrollbars",
)  # fmt: skip

# Runs in the framing page once the frame and its images have loaded; reads the framed page.
PROBE_JS = r"""
addEventListener("load", () => {
  const result = {};
  try {
    const win = document.getElementById("page").contentWindow, doc = win.document;
    const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
      (typeof el.className === "string" && el.className.trim() ? "." + el.className.trim().split(/\s+/).join(".") : "");
    const inScrollBox = (el) => {
      for (let up = el.parentElement; up && up !== doc.documentElement; up = up.parentElement) {
        if (["auto", "scroll", "hidden", "clip"].includes(win.getComputedStyle(up).overflowX)) return true;
      }
      return false;
    };
    result.inner_width = win.innerWidth;
    result.scroll_width = doc.documentElement.scrollWidth;
    result.page_height = Math.ceil(Math.max(doc.documentElement.scrollHeight, doc.body.scrollHeight));
    const wide = new Set();
    result.overflowing = [];
    for (const el of doc.body.querySelectorAll("*")) {
      const box = el.getBoundingClientRect();
      const spills = win.getComputedStyle(el).overflowX === "visible" ? box.left + el.scrollWidth : box.right;
      if (Math.max(box.right, spills) <= win.innerWidth + 0.5 || inScrollBox(el)) continue;
      if (!wide.has(el.parentElement)) result.overflowing.push(describe(el));
      wide.add(el);
    }
    result.scroll_boxes = [];
    for (const el of doc.body.querySelectorAll("*")) {
      if (el.scrollWidth > el.clientWidth + 1 && ["auto", "scroll"].includes(win.getComputedStyle(el).overflowX)) {
        result.scroll_boxes.push({box: describe(el), content_width: el.scrollWidth, shown_width: el.clientWidth});
      }
    }
    result.images = Array.from(doc.images, (img) => ({
      src: (img.getAttribute("src") || "").slice(0, 40), alt: img.alt,
      data_uri: (img.currentSrc || img.src).startsWith("data:"),
      loaded: img.complete && img.naturalWidth > 0,
      natural_width: img.naturalWidth, shown_width: Math.round(img.getBoundingClientRect().width),
    }));
    result.external = [];
    const loading = "link, script, img, source, iframe, frame, embed, object, video, audio, track, input";
    for (const el of doc.querySelectorAll(loading)) {
      for (const attr of REFERENCE_ATTRIBUTES) {
        const value = (el.getAttribute(attr) || "").trim();
        if (value && !value.startsWith("data:")) result.external.push(`${describe(el)} ${attr}=${value.slice(0, 120)}`);
      }
    }
    result.requests = win.performance.getEntriesByType("resource").map((e) => e.name)
      .filter((url) => !url.startsWith("data:"));
    result.min_font_px = null;
    const texts = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
    while (texts.nextNode()) {
      const node = texts.currentNode, el = node.parentElement;
      if (!node.data.trim() || !el.getClientRects().length) continue;
      const style = win.getComputedStyle(el);
      if (style.visibility !== "visible") continue;
      const size = parseFloat(style.fontSize);
      if (result.min_font_px === null || size < result.min_font_px) {
        result.min_font_px = size;
        result.min_font_text = node.data.trim().slice(0, 40);
      }
    }
    const viewport = doc.querySelector('meta[name="viewport"]');
    result.viewport_meta = viewport ? viewport.content : null;
  } catch (error) {
    result.error = String(error);
  }
  const out = document.createElement("pre");
  out.id = "PROBE_ID";
  out.hidden = true;
  out.textContent = JSON.stringify(result);
  document.body.append(out);
});
"""


class ChromiumError(RuntimeError):
    """Chromium is missing, failed or timed out: the page was not checked (exit 2)."""


def find_chromium() -> str:
    """$CHROMIUM, else the first Chromium or Chrome on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        if found := shutil.which(explicit):
            return found
        raise ChromiumError(f"CHROMIUM={explicit} is not an executable")
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    raise ChromiumError(
        f"Chromium is not installed (none of {', '.join(CHROMIUM_NAMES)} is on PATH); "
        "install it (Debian/Ubuntu: apt-get install -y chromium) or set CHROMIUM=/path/to/chrome"
    )


def frame_page(page_url: str, width: int, height: int, probe: bool) -> str:
    """A page that shows `page_url` in a borderless iframe of exactly width x height CSS px,
    with the probe script when `probe` (the measuring pass) and without (the screenshot pass)."""
    probe_js = PROBE_JS.replace("PROBE_ID", PROBE_ID).replace("REFERENCE_ATTRIBUTES", json.dumps(REFERENCE_ATTRIBUTES))
    script = f"<script>{probe_js}</script>" if probe else ""
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        "<style>html,body{margin:0;overflow:hidden}iframe{display:block;border:0}</style></head><body>"
        f'<iframe id="page" src="{html.escape(page_url)}" style="width:{width}px;height:{height}px"></iframe>'
        f"{script}</body></html>\n"
    )


def parse_result(dom: str) -> dict:
    """The probe's JSON from Chromium's --dump-dom output (HTML-escaped text of the <pre>)."""
    match = re.search(rf'<pre id="{PROBE_ID}"[^>]*>(.*?)</pre>', dom, re.DOTALL)
    if not match:
        raise ChromiumError("Chromium's DOM has no check result: the page did not finish loading")
    result = json.loads(html.unescape(match[1]))
    if "error" in result:
        raise ChromiumError(f"the check script failed in the page: {result['error']}")
    return result


def failures(width: int, result: dict) -> list[str]:
    """One line per failed check at this width; [] when the page passes."""
    where = f"{width} px"
    lines = []
    if result["scroll_width"] > result["inner_width"]:
        culprits = ", ".join(result["overflowing"][:5]) or "unknown element"
        lines.append(
            f"{where}: horizontal overflow, the page is {result['scroll_width']} px wide in a "
            f"{result['inner_width']} px window (too wide: {culprits})"
        )
    for index, image in enumerate(result["images"]):
        name = f"<img> {index + 1} ({image['alt'] or image['src']})"
        if not image["loaded"]:
            lines.append(f"{where}: {name} did not load")
        if not image["data_uri"]:
            lines.append(f"{where}: {name} is not embedded as a data: URI (src={image['src']})")
    lines += [f"{where}: refers outside the file: {reference}" for reference in result["external"]]
    lines += [f"{where}: the page requested {url}" for url in result["requests"]]
    if result["min_font_px"] is not None and result["min_font_px"] < MIN_FONT_PX:
        lines.append(
            f'{where}: text at {result["min_font_px"]:g} px, under {MIN_FONT_PX:g} px ("{result["min_font_text"]}")'
        )
    viewport = dict(
        item.partition("=")[::2] for item in re.split(r"[,;]", (result["viewport_meta"] or "").replace(" ", "").lower())
    )
    if viewport.get("width") != "device-width":
        lines.append(f'{where}: no <meta name="viewport" content="width=device-width, ...">, phones would zoom out')
    if viewport.get("user-scalable") in ("no", "0") or _number(viewport.get("maximum-scale", "10")) < 2:
        lines.append(f"{where}: the viewport meta tag ({result['viewport_meta']}) stops phones from zooming in")
    return lines


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 10.0  # an unreadable value is ignored by browsers


def notes(width: int, result: dict) -> list[str]:
    """What passes but is worth a look: boxes that scroll sideways, images shown under half size."""
    lines = [
        f"{width} px: {box['box']} scrolls sideways ({box['content_width']} px of content in {box['shown_width']} px)"
        for box in result["scroll_boxes"]
    ]
    for index, image in enumerate(result["images"]):
        if image["natural_width"] and image["shown_width"] < image["natural_width"] / 2:
            lines.append(
                f"{width} px: <img> {index + 1} is shown at {image['shown_width'] / image['natural_width']:.0%} "
                "of its size (pinch to zoom)"
            )
    return lines


def run_chromium(chromium: str, arguments: list[str]) -> str:
    """Run one headless Chromium with a throwaway profile; return its stdout."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise ChromiumError(f"Chromium did not finish within {TIMEOUT_S} s: {' '.join(command)}") from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise ChromiumError(f"Chromium exited with {done.returncode}: {tail[0]}")
    return done.stdout


def check(report_html: Path, out_dir: Path, chromium: str) -> dict:
    """Measure and screenshot the page at each width; the results, the failures and the paths."""
    page_url = report_html.resolve().as_uri()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"html": str(report_html), "chromium": chromium, "widths": {}, "failures": []}
    with tempfile.TemporaryDirectory(prefix="report-html-check-") as scratch:
        frame = Path(scratch) / "frame.html"
        for device, (width, height) in WIDTHS.items():
            frame.write_text(frame_page(page_url, width, height, probe=True), encoding="utf-8")
            window = f"--window-size={width},{height}"
            result = parse_result(run_chromium(chromium, ["--dump-dom", window, frame.as_uri()]))
            full_height = min(max(result["page_height"], height), MAX_SCREENSHOT_HEIGHT)
            screenshot = (out_dir / f"report-{width}.png").resolve()
            frame.write_text(frame_page(page_url, width, full_height, probe=False), encoding="utf-8")
            run_chromium(
                chromium, [f"--screenshot={screenshot}", f"--window-size={width},{full_height}", frame.as_uri()]
            )
            result.update(device=device, width=width, screenshot=str(screenshot))
            result.update(failures=failures(width, result), notes=notes(width, result))
            summary["widths"][str(width)] = result
            summary["failures"] += result["failures"]
    summary["ok"] = not summary["failures"]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_html", type=Path, metavar="REPORT_HTML")
    parser.add_argument(
        "--out", type=Path, help="folder for check.json and the screenshots (default: next to the page)"
    )
    arguments = parser.parse_args(argv)
    if not arguments.report_html.is_file():
        print(f"error: {arguments.report_html} is not a file", file=sys.stderr)
        return 2
    out_dir = arguments.out or arguments.report_html.parent / "html-check"
    try:
        summary = check(arguments.report_html, out_dir, find_chromium())
    except ChromiumError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    (out_dir / "check.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for result in summary["widths"].values():
        for line in [f"FAIL {line}" for line in result["failures"]] + [f"note {line}" for line in result["notes"]]:
            print(line)
    shots = ", ".join(result["screenshot"] for result in summary["widths"].values())
    print(
        f"{'ok' if summary['ok'] else 'failed'}: {arguments.report_html} at {', '.join(summary['widths'])} px; "
        f"results in {out_dir / 'check.json'}; screenshots {shots}"
    )
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
