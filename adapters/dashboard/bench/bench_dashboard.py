"""Dashboard benchmark: Analyse -> rendered heatmap, in a real Chromium, and the bytes it costs.

For each text length (tokens of the model's tokenizer) the page is opened, the text is
put in the text field, Analyse is clicked and the clock stops when the browser's plot
view for the new heatmap has finished painting an [n, n] image. Then the head selector
is changed and the redraw is timed the same way. Bytes are the WebSocket frames the
browser received between the click and the rendered heatmap (Chrome's network log),
against what the full [layer, head, q, k] float32 tensor would have been. The page's
status line says how much of the wait was the backend (the passes) and how much the
server's drawing; the rest is transfer, BokehJS and painting in the browser.

    python adapters/dashboard/bench/bench_dashboard.py [--model smollm2-135m] [--sizes 128 512]
           [--repeats 3] [--docs-screenshot docs/dashboard.png]

With ``--document 2000`` (tokens) it also uploads a document of that length through the
FileInput, presses "Analyse document" (the in-process queue: no REDIS_URL) and times the
first window in the window selector, its heatmap rendered, and the last window (the
progress bar at n / n); ``--sizes`` with no value skips the per-text rows.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from lmlens import Analyzer
from lmlens_dashboard.backend import InProcessBackend
from lmlens_dashboard.server import running
from lmlens_dashboard.testing import MODEL, choose, chromium, click, image, inner, prop, screenshot, wait

ROOT = Path(__file__).resolve().parents[3]
PARAGRAPH = (
    "The history of the lighthouse begins with fires lit on hills to guide ships home. Later, towers "
    "were built of stone, and their keepers climbed the stairs each night to trim the wicks. When the "
    "lens was invented, a single flame could be seen for miles, and sailors learned each light by its "
    "rhythm of flashes. Today most lights are automatic, but the old towers still stand along the coast. "
)


DOCS_TEXT = "When Mary and John went to the store, John gave a drink to Mary. When Mary and John went to the store"
DOCS_COMPARE = "The lighthouse keeper climbed the stairs each night to trim the wicks."


def tokens(analyzer: Analyzer, text: str) -> int:
    return len(analyzer.model.tokenizer(text, add_special_tokens=True)["input_ids"])


def text_of(analyzer: Analyzer, n_tokens: int) -> tuple[str, int]:
    """The longest prefix (in words) of a repeated paragraph with at most ``n_tokens`` tokens."""
    words = (PARAGRAPH * (n_tokens // 40 + 2)).split()

    def count(k: int) -> int:
        return tokens(analyzer, " ".join(words[:k]))

    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(mid) <= n_tokens else (lo, mid - 1)
    return " ".join(words[:lo]), count(lo)


def size(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def split(driver: Any) -> tuple[float, float]:
    """(model, drawing) seconds from the page's status line: 'done: ... (model 1.23 s, page 0.05 s)'."""
    found = re.search(r"model ([0-9.]+) s, page ([0-9.]+) s", prop(driver, "status", "text") or "")
    if found is None:
        raise RuntimeError(f"no timings in the status line: {prop(driver, 'status', 'text')!r}")
    return float(found.group(1)), float(found.group(2))


def set_text(driver: Any, text: str) -> None:
    driver.execute_script(MODEL + "model('text').value = arguments[0]; model('compare').value = '';", text)
    wait(driver, lambda d: prop(d, "text", "value") == text)


def ws_bytes(driver: Any) -> tuple[int, int]:
    """(received, sent) WebSocket payload bytes since the last call, from Chrome's network log."""
    received = sent = 0
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] not in ("Network.webSocketFrameReceived", "Network.webSocketFrameSent"):
            continue
        frame = message["params"]["response"]
        data = frame.get("payloadData", "")
        size = len(base64.b64decode(data)) if frame.get("opcode") == 2 else len(data.encode("utf-8"))
        if message["method"].endswith("Received"):
            received += size
        else:
            sent += size
    return received, sent


def rendered(driver: Any, n: int, previous: str | None, head: int) -> Any:
    def ready(d: Any) -> Any:
        if prop(d, "status", "text") == "failed" or prop(d, "error-section-attention", "visible"):
            shown = [prop(d, name, "text") for name in ("error-text", "error-general", "error-section-attention")]
            raise RuntimeError(f"the page shows an error: {[s for s in shown if s]}")
        found = image(d, "panel-attention-0")
        ok = (found and found["painted"] and found["shape"] == [n, n] and found["id"] != previous
              and f"head {head}" in (found["title"] or ""))
        return found if ok else None

    return wait(driver, ready, timeout=600, message="the heatmap did not render")


def docs_picture(driver: Any, url: str, args: Any, path: Path) -> None:
    """The README's picture: a shared link comparing two texts, one head, surprisal below."""
    query = urlencode({"text": DOCS_TEXT, "compare": DOCS_COMPARE, "model": args.model,
                       "methods": "attention,surprisal"})
    driver.get(f"{url}/?{query}")
    wait(driver, lambda d: (prop(d, "status", "text") or "").startswith("done"), timeout=600)
    for name, value in (("layer", args.docs_layer), ("head", args.docs_head)):
        if prop(driver, f"control-attention-{name}", "value") == str(value):
            continue
        before = [image(driver, f"panel-attention-{side}")["id"] for side in (0, 1)]
        choose(driver, f".lmlens-control-attention-{name}", str(value))
        wait(driver, lambda d, before=before: all(
            (i := image(d, f"panel-attention-{side}")) and i["id"] != before[side] and i["painted"]
            for side in (0, 1)), timeout=600)
    page = screenshot(driver, None, path.with_suffix(".full.png"))
    page = page.crop((0, 0, page.width, min(page.height, 1500)))
    page = page.resize((page.width * 3 // 4, page.height * 3 // 4))
    page.quantize(colors=256).save(path, optimize=True)
    path.with_suffix(".full.png").unlink()


def document_bench(driver: Any, url: str, analyzer: Analyzer, n_tokens: int, window: int, path: Path) -> dict[str, Any]:
    """One upload of an ``n_tokens`` document: seconds from the click to the first window
    listed, to its heatmap painted, and to the last window (bar at n / n)."""
    text, n = text_of(analyzer, n_tokens)
    path.write_text(text, encoding="utf-8")
    driver.get(url + "/")
    wait(driver, lambda d: prop(d, "analyse", "label") == "Analyse")
    inner(driver, ".lmlens-upload", "input[type=file]").send_keys(str(path))
    wait(driver, lambda d: prop(d, "analyse-document", "disabled") is False)
    choose(driver, ".lmlens-window-size", str(window))
    start = time.perf_counter()
    click(driver, ".lmlens-analyse-document")
    marks: dict[str, float] = {}
    total = 0

    def progress(d: Any) -> bool:
        nonlocal total
        error = prop(d, "error-upload", "text")
        if prop(d, "error-upload", "visible"):
            raise RuntimeError(f"the job failed: {error}")
        now = time.perf_counter() - start
        if "first" not in marks and len(prop(d, "job-window", "options") or []) >= 1:
            marks["first"] = now
        found = image(d, "panel-attention-0")
        if "heatmap" not in marks and found and found["painted"] and found["shape"] == [window, window]:
            marks["heatmap"] = now
        done, total = prop(d, "job-progress", "tags") or [0, 0]
        if total and done == total and "last" not in marks:
            marks["last"] = now
        return {"first", "heatmap", "last"} <= marks.keys()

    wait(driver, progress, timeout=1800, message="the document job did not finish")
    screenshot(driver, None, path.with_suffix(".png"))
    return {"tokens": n, "windows": total, "window": window, **marks, "page": prop(driver, "job-progress", "text")}


def print_rows(args: Any, info: Any, load: float, rows: list[Any]) -> None:
    print(f"\nmodel {args.model} ({info.n_layers} layers x {info.n_heads} heads), median of {args.repeats}, "
          f"in-process backend, headless Chromium, {os.cpu_count()} cores, load average {load:.1f}")
    print("| tokens | Analyse -> rendered heatmap | model (the two passes) | drawing in the server "
          "| transfer + BokehJS + paint | head switch -> redrawn | bytes to browser (analysis) | bytes from browser "
          "| full [layer, head, q, k] float32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, a, m, d, b, s, r, p, f in rows:
        print(f"| {n} | {a:.2f} s | {m:.2f} s | {d:.2f} s | {b:.2f} s | {s:.2f} s | {size(r)} | {size(p)} "
              f"| {size(f)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--docs-screenshot", default=None, help="also save the README's picture here")
    parser.add_argument("--docs-layer", type=int, default=3)
    parser.add_argument("--docs-head", type=int, default=0)
    parser.add_argument("--document", type=int, default=None, metavar="TOKENS",
                        help="also time an uploaded document of this many tokens through the job queue")
    parser.add_argument("--document-window", type=int, default=512, help="tokens per window for --document")
    args = parser.parse_args()

    analyzer = Analyzer(args.model)
    backend = InProcessBackend(analyzer)
    backend.warm()
    info = analyzer.model.info
    shots = ROOT / "out" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    rows = []
    with running({"/": backend}) as server, chromium(log_network=True) as driver:
        driver.get(server.url + "/")
        wait(driver, lambda d: prop(d, "analyse", "label") == "Analyse")
        set_text(driver, "A short warm-up text.")  # first drawing loads the panel modules: not timed
        click(driver, ".lmlens-analyse")
        warm = rendered(driver, tokens(analyzer, "A short warm-up text."), None, 0)
        previous = warm["id"]
        for wanted in args.sizes:
            text, n = text_of(analyzer, wanted)
            analyse, switch, received, sent = [], [], [], []
            model_s: list[float] = []  # the backend's time (the passes), as the page reports it
            drawing_s: list[float] = []  # the page's own time in the server: panels -> Bokeh models
            for repeat in range(args.repeats):
                head = int(prop(driver, "control-attention-head", "value"))  # an analysis keeps the selection
                text_now = f"{text[: -len(str(repeat)) - 1]} {repeat}"  # a new text each time: nothing cached
                n_now = tokens(analyzer, text_now)
                set_text(driver, text_now)
                ws_bytes(driver)  # drain the log
                start = time.perf_counter()
                click(driver, ".lmlens-analyse")
                found = rendered(driver, n_now, previous, head)
                analyse.append(time.perf_counter() - start)
                model_s.append(split(driver)[0])
                drawing_s.append(split(driver)[1])
                got, put = ws_bytes(driver)
                received.append(got)
                sent.append(put)
                previous = found["id"]
                start = time.perf_counter()
                choose(driver, ".lmlens-control-attention-head", str(1 - head))
                found = rendered(driver, n_now, previous, 1 - head)
                switch.append(time.perf_counter() - start)
                ws_bytes(driver)
                previous = found["id"]
                n = n_now
            screenshot(driver, None, shots / f"bench-{args.model}-{n}.png")
            full = info.n_layers * info.n_heads * n * n * 4
            browser_s = [a - m - d for a, m, d in zip(analyse, model_s, drawing_s, strict=True)]
            rows.append((n, statistics.median(analyse), statistics.median(model_s), statistics.median(drawing_s),
                         statistics.median(browser_s), statistics.median(switch),
                         int(statistics.median(received)), int(statistics.median(sent)), full))
            print(f"{n} tokens: analyse->heatmap {[round(x, 2) for x in analyse]} s (model "
                  f"{[round(x, 2) for x in model_s]} s), head switch "
                  f"{[round(x, 2) for x in switch]} s, received {received} B", flush=True)
        if args.docs_screenshot:
            docs_picture(driver, server.url, args, ROOT / args.docs_screenshot)
        document = None
        if args.document:
            load_before = os.getloadavg()[0]
            cpu = time.process_time()
            document = document_bench(driver, server.url, analyzer, args.document, args.document_window,
                                      shots / f"bench-document-{args.model}-{args.document}.txt")
            document["cpu"] = time.process_time() - cpu
            document["load"] = (load_before, os.getloadavg()[0])
    load = os.getloadavg()[0]
    if rows:
        print_rows(args, info, load, rows)
    if document is not None:
        print(f"\nuploaded document: {document['tokens']} tokens, {document['windows']} windows of "
              f"{document['window']} (stride {document['window'] // 2}), attention, local queue; load average "
              f"{document['load'][0]:.1f} before, {document['load'][1]:.1f} after; this process's CPU "
              f"{document['cpu']:.1f} s")
        print("| click -> first window listed | -> its heatmap painted | -> last window (bar at 100%) |")
        print("|---|---|---|")
        print(f"| {document['first']:.2f} s | {document['heatmap']:.2f} s | {document['last']:.2f} s |")
        print(f"the page's own line: {re.sub('<[^>]+>', ' ', document['page']).split('windows (100%)')[-1].strip()}")


if __name__ == "__main__":
    main()
