//! SVG charts of one or more runs side by side: throughput over time, and the latency
//! percentile curve (p50 … p99.99, on a "nines" axis, latency on a log scale).

use std::fmt::Write;

use super::Report;

const W: f64 = 460.0;
const H: f64 = 300.0;
const PAD: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One SVG with both panels for every report given.
pub fn svg(title: &str, reports: &[Report]) -> String {
    let mut s = String::new();
    let total_w = 2.0 * W + 40.0;
    let legend_h = 20.0 * reports.len() as f64 + 10.0;
    let total_h = H + 40.0 + legend_h;
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="15">{}</text>"##,
        total_w / 2.0,
        esc(title)
    );
    throughput_panel(&mut s, 10.0, 30.0, reports);
    latency_panel(&mut s, W + 30.0, 30.0, reports);
    for (i, r) in reports.iter().enumerate() {
        let y = H + 45.0 + 20.0 * i as f64;
        let c = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r##"<rect x="20" y="{}" width="14" height="4" fill="{c}"/><text x="40" y="{y}">{} — {}: {:.0} msgs/s, {:.1} MB/s, p99 {:.2} ms</text>"##,
            y - 5.0,
            esc(&r.system),
            esc(&r.mode),
            r.msgs_per_s(),
            r.mb_per_s(),
            r.pct(99.0)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn frame(s: &mut String, x0: f64, y0: f64, title: &str, xlabel: &str, ylabel: &str) {
    let _ = writeln!(
        s,
        r##"<g transform="translate({x0},{y0})">
<rect x="{PAD}" y="10" width="{}" height="{}" fill="none" stroke="#888"/>
<text x="{}" y="8" text-anchor="middle">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="12" y="{}" text-anchor="middle" transform="rotate(-90 12 {})">{}</text>
</g>"##,
        W - PAD - 10.0,
        H - PAD - 10.0,
        (W + PAD) / 2.0,
        esc(title),
        (W + PAD) / 2.0,
        H - 12.0,
        esc(xlabel),
        H / 2.0,
        H / 2.0,
        esc(ylabel)
    );
}

fn throughput_panel(s: &mut String, x0: f64, y0: f64, reports: &[Report]) {
    frame(s, x0, y0, "throughput over time", "seconds", "msgs/s");
    let secs = reports
        .iter()
        .map(|r| r.series.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let peak = reports
        .iter()
        .flat_map(|r| r.series.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (pw, ph) = (W - PAD - 10.0, H - PAD - 10.0);
    for (i, r) in reports.iter().enumerate() {
        let pts: Vec<String> = r
            .series
            .iter()
            .enumerate()
            .map(|(t, v)| {
                let x = x0 + PAD + pw * t as f64 / (secs - 1) as f64;
                let y = y0 + 10.0 + ph * (1.0 - *v as f64 / peak);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"##,
            COLORS[i % COLORS.len()],
            pts.join(" ")
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="end">{:.0}</text><text x="{}" y="{}" text-anchor="end">0</text><text x="{}" y="{}" text-anchor="end">{}</text>"##,
        x0 + PAD - 3.0,
        y0 + 20.0,
        peak,
        x0 + PAD - 3.0,
        y0 + H - PAD,
        x0 + W - 10.0,
        y0 + H - PAD + 14.0,
        secs - 1
    );
}

fn latency_panel(s: &mut String, x0: f64, y0: f64, reports: &[Report]) {
    frame(s, x0, y0, "latency by percentile", "percentile", "ms (log)");
    let (pw, ph) = (W - PAD - 10.0, H - PAD - 10.0);
    let vals = reports
        .iter()
        .flat_map(|r| r.latency_ms.iter().map(|(_, v)| *v))
        .filter(|v| *v > 0.0);
    let (lo, hi) = vals.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if hi <= 0.0 {
        (0.01, 1.0)
    } else {
        ((lo / 2.0).max(0.001), hi * 2.0)
    };
    let nines = |p: f64| -(1.0 - p / 100.0).log10(); // p50 → 0.3, p99.99 → 4
    let xmax = nines(99.99);
    let ypos = |v: f64| ph * (1.0 - (v.max(lo).ln() - lo.ln()) / (hi.ln() - lo.ln()));
    for p in super::PERCENTILES {
        let x = x0 + PAD + pw * nines(p) / xmax;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">p{p}</text>"##,
            y0 + 10.0,
            y0 + H - PAD,
            y0 + H - PAD + 14.0
        );
    }
    for (i, r) in reports.iter().enumerate() {
        let pts: Vec<String> = r
            .latency_ms
            .iter()
            .map(|(p, v)| {
                format!(
                    "{:.1},{:.1}",
                    x0 + PAD + pw * nines(*p) / xmax,
                    y0 + 10.0 + ypos(*v)
                )
            })
            .collect();
        let c = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"##,
            pts.join(" ")
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="end">{hi:.3}</text><text x="{}" y="{}" text-anchor="end">{lo:.3}</text>"##,
        x0 + PAD - 3.0,
        y0 + 20.0,
        x0 + PAD - 3.0,
        y0 + H - PAD
    );
}
