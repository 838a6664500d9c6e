#!/usr/bin/env python3
"""A flame graph (SVG) from a perf profile: `perf script` output is folded into one line per
distinct stack, and each stack becomes a column of boxes whose width is its share of the samples.

    python3 benches/flamegraph.py target/bench/async.perf.data docs/flamegraph-async.svg [TITLE]

The input is a `perf.data` file (read with `perf script`) or the text `perf script` printed.
Only the standard library is used; `--folded` writes the folded stacks instead of the SVG.
"""

import html
import re
import subprocess
import sys
import zlib

WIDTH = 1200
ROW = 16
FONT = 11
# Rust symbols end with a hash (`::h0123456789abcdef`), which says nothing to a reader.
HASH = re.compile(r"::h[0-9a-f]{16}$")
OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def perf_script(path):
    if path.endswith(".data"):
        return subprocess.run(
            ["perf", "script", "-i", path, "-F", "comm,tid,ip,sym,dso"],
            check=True, capture_output=True, text=True,
        ).stdout
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def frame_name(line):
    """`ffffffff81000000 tokio::runtime::park+0x12 (/path/bin)` -> `tokio::runtime::park`."""
    parts = line.strip().split(None, 1)
    if len(parts) < 2:
        return None
    rest = parts[1]
    dso = ""
    if rest.endswith(")") and " (" in rest:
        rest, dso = rest.rsplit(" (", 1)
        dso = dso[:-1].rsplit("/", 1)[-1]
    name = HASH.sub("", OFFSET.sub("", rest.strip()))
    if name in ("", "[unknown]"):
        name = dso if dso.startswith("[") else f"[{dso}]" if dso else "[unknown]"
    return name


def fold(text):
    """Stacks (root first, the thread's name at the root) -> sample count."""
    stacks = {}
    for block in text.split("\n\n"):
        lines = [l for l in block.splitlines() if l.strip()]
        if not lines:
            continue
        thread = lines[0].split()[0]
        # Thread names like `tokio-runtime-w` are one bucket; numbered workers are not told apart.
        frames = [f for f in (frame_name(l) for l in lines[1:]) if f]
        stack = ";".join([thread] + frames[::-1])
        stacks[stack] = stacks.get(stack, 0) + 1
    return stacks


def tree(stacks):
    root = {"name": "all", "count": 0, "children": {}}
    for stack, count in stacks.items():
        root["count"] += count
        node = root
        for name in stack.split(";"):
            node = node["children"].setdefault(name, {"name": name, "count": 0, "children": {}})
            node["count"] += count
    return root


def depth(node):
    return 1 + max((depth(c) for c in node["children"].values()), default=0)


def color(name):
    h = zlib.crc32(name.encode())
    if "mqtt_offline_messages" in name:
        return f"rgb({200 + h % 55},{90 + h % 60},{40 + h % 40})"
    if name.startswith("[") or "kernel" in name:
        return f"rgb({180 + h % 40},{180 + h % 40},{200 + h % 55})"
    return f"rgb({220 + h % 35},{150 + h % 80},{50 + h % 50})"


def svg(root, title):
    rows = depth(root)
    height = rows * ROW + 60
    total = root["count"] or 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="{FONT}">',
        f'<rect width="100%" height="100%" fill="#f8f8f8"/>',
        f'<text x="{WIDTH // 2}" y="20" text-anchor="middle" font-size="15">{html.escape(title)}</text>',
        f'<text x="10" y="{height - 10}">{total} samples; width = share of samples, '
        'the root at the bottom; hover a box for its name and share</text>',
    ]

    def draw(node, x, level):
        w = node["count"] / total * (WIDTH - 20)
        if w < 0.3:
            return
        y = height - 40 - (level + 1) * ROW
        label = f'{node["name"]} ({node["count"]} samples, {100 * node["count"] / total:.2f}%)'
        out.append(f"<g><title>{html.escape(label)}</title>")
        out.append(
            f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{ROW - 1}" '
            f'fill="{color(node["name"])}" rx="2"/>'
        )
        chars = int(w / (FONT * 0.6))
        if chars >= 3:
            text = node["name"] if len(node["name"]) <= chars else node["name"][: chars - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + ROW - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        child_x = x
        for child in sorted(node["children"].values(), key=lambda c: c["name"]):
            draw(child, child_x, level + 1)
            child_x += child["count"] / total * (WIDTH - 20)

    draw(root, 10, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    args = [a for a in sys.argv[1:] if a != "--folded"]
    if len(args) not in (2, 3):
        sys.exit(__doc__)
    title = args[2] if len(args) == 3 else f"CPU profile: {args[0]}"
    stacks = fold(perf_script(args[0]))
    with open(args[1], "w", encoding="utf-8") as f:
        if "--folded" in sys.argv:
            for stack, count in sorted(stacks.items()):
                f.write(f"{stack} {count}\n")
        else:
            f.write(svg(tree(stacks), title))


if __name__ == "__main__":
    main()
