#!/usr/bin/python3
"""Draws run.sh --latency's table as a PNG: sent -> ack p50, p99 and p99.9
against the offered load, on a log scale, with the 20 ms goal of p99 at
half load marked. The chart is SVG made here and rendered to PNG by
Debian's chromium (already a test dependency), so no plotting library is
needed.

    latency.py LATENCY_TXT OUT_PNG MAX_RATE

LATENCY_TXT: one line per pass, "pct rate p50 p99 p999 max acked sent"
(what run.sh writes)."""
import math
import os
import shutil
import subprocess
import sys
import tempfile

W, H, L, R, T, B = 780, 440, 90, 150, 40, 60


def main():
    src, png, max_rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rows = []
    for line in open(src):
        f = line.split()
        if len(f) >= 6:
            rows.append((float(f[0]), float(f[1]), float(f[2]), float(f[3]),
                         float(f[4])))
    if not rows:
        sys.exit('latency.py: no rows in ' + src)
    lo = min(min(r[2:]) for r in rows + [(0, 0, 20, 20, 20)])
    hi = max(max(r[2:]) for r in rows + [(0, 0, 20, 20, 20)])
    ylo = 10 ** math.floor(math.log10(max(lo, 0.1)))
    yhi = 10 ** math.ceil(math.log10(max(hi, ylo * 10)))

    def x(pct):
        return L + (W - L - R) * pct / 100.0

    def y(ms):
        f = (math.log10(max(ms, ylo)) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
        return H - B - (H - T - B) * f

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="13">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="15" font-weight="bold">chatvault: sent &#8594; '
           'ack latency under open-loop load (max %d msgs/s)</text>' % (L, max_rate)]
    d = ylo
    while d <= yhi * 1.0001:
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>'
                   % (L, W - R, y(d), y(d)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%g ms</text>'
                   % (L - 6, y(d) + 4, d))
        d *= 10
    for pct in (0, 25, 50, 75, 100):
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#eee"/>'
                   % (x(pct), x(pct), T, H - B))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d%%</text>'
                   % (x(pct), H - B + 18, pct))
    out.append('<text x="%.1f" y="%d" text-anchor="middle">offered load, share of the '
               'measured maximum</text>' % ((L + W - R) / 2, H - 14))
    out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#c33" '
               'stroke-dasharray="6 4"/>' % (L, W - R, y(20), y(20)))
    out.append('<text x="%d" y="%.1f" fill="#c33">goal: p99 &#8804; 20 ms at 50%% load'
               '</text>' % (L + 6, y(20) - 6))
    for i, (name, color) in enumerate((('p50', '#3b6fd8'), ('p99', '#e08a1e'),
                                       ('p99.9', '#7a3fb8'))):
        pts = ' '.join('%.1f,%.1f' % (x(r[0]), y(r[2 + i])) for r in rows)
        out.append('<polyline fill="none" stroke="%s" stroke-width="2.5" points="%s"/>'
                   % (color, pts))
        for r in rows:
            out.append('<circle cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%s %.1f ms at '
                       '%d msgs/s</title></circle>'
                       % (x(r[0]), y(r[2 + i]), color, name, r[2 + i], r[1]))
        out.append('<text x="%d" y="%d" fill="%s" font-weight="bold">%s</text>'
                   % (W - R + 6, T + 20 + 18 * i, color, name))
    out.append('</svg>')
    tmp = tempfile.mkdtemp(prefix='cv-latency-')
    try:
        svg = os.path.join(tmp, 'latency.svg')
        with open(svg, 'w') as f:
            f.write('\n'.join(out))
        html = os.path.join(tmp, 'latency.html')
        with open(html, 'w') as f:
            f.write('<!DOCTYPE html><html><body style="margin:0"><img src="latency.svg">'
                    '</body></html>')
        chromium = shutil.which('chromium')
        if not chromium:
            sys.exit('latency.py: chromium not found; the SVG is ' + svg)
        subprocess.run([chromium, '--headless=new', '--no-sandbox', '--disable-gpu',
                        '--no-first-run', '--user-data-dir=' + os.path.join(tmp, 'p'),
                        '--hide-scrollbars', '--window-size=%d,%d' % (W, H),
                        '--screenshot=' + os.path.abspath(png), 'file://' + html],
                       capture_output=True, timeout=120, check=True)
        shutil.copy(svg, os.path.splitext(png)[0] + '.svg')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print('latency.py: wrote', png)


main()
