//! Minimal, dependency-free SVG plots: line plots with shaded ranges, and histograms.
//! Good enough to look at, deterministic (fixed precision), and viewable in any browser.
//! The legend and notes sit below the plot area (under the x-axis label), never over the data.

use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
    /// Draw as bars (histogram) instead of a line.
    pub bars: bool,
}

#[derive(Clone, Debug)]
pub struct Shade {
    pub x0: f64,
    pub x1: f64,
    pub label: String,
    pub color: String,
}

#[derive(Clone, Debug, Default)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub shades: Vec<Shade>,
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub notes: Vec<String>,
    /// Width of a bar in x units (histograms: the bin width); default: the plot width / bars.
    pub bar_width: Option<f64>,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 40.0;
const MB: f64 = 60.0;
/// Height of one legend or note line, below the plot.
const LEGEND_LINE: f64 = 16.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Plot {
    pub fn render(&self) -> String {
        let all = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if let Some(r) = self.x_range {
            (x0, x1) = r;
        }
        if let Some(r) = self.y_range {
            (y0, y1) = r;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        let pw = W - ML - MR;
        let ph = H - MT - MB;
        let sx = |x: f64| ML + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| MT + ph - (y - y0) / (y1 - y0) * ph;
        let legend_lines = (self.series.len() + self.notes.len()) as f64;
        let height = if legend_lines > 0.0 {
            H + legend_lines * LEGEND_LINE + 8.0
        } else {
            H
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            W / 2.0,
            esc(&self.title)
        );
        for sh in &self.shades {
            let a = sx(sh.x0.max(x0));
            let b = sx(sh.x1.min(x1));
            let _ = writeln!(
                s,
                r#"<rect x="{a:.2}" y="{MT}" width="{:.2}" height="{ph}" fill="{}" fill-opacity="0.18"/>"#,
                (b - a).max(0.0),
                sh.color
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.2}" y="{:.2}" text-anchor="middle" fill="{}">{}</text>"#,
                (a + b) / 2.0,
                MT + 14.0,
                sh.color,
                esc(&sh.label)
            );
        }
        // Axes and ticks.
        let _ = writeln!(
            s,
            r#"<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        for t in nice_ticks(x0, x1, 8) {
            let x = sx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.2}" y1="{:.2}" x2="{x:.2}" y2="{:.2}" stroke="#ccc"/><text x="{x:.2}" y="{:.2}" text-anchor="middle">{}</text>"##,
                MT,
                MT + ph,
                MT + ph + 16.0,
                fmt_tick(t)
            );
        }
        for t in nice_ticks(y0, y1, 6) {
            let y = sy(t);
            let _ = writeln!(
                s,
                r##"<line x1="{ML}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="#ccc"/><text x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"##,
                ML + pw,
                ML - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">{}</text>"#,
            ML + pw / 2.0,
            H - 22.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.2}" text-anchor="middle" transform="rotate(-90 16 {:.2})">{}</text>"#,
            MT + ph / 2.0,
            MT + ph / 2.0,
            esc(&self.y_label)
        );
        for se in &self.series {
            if se.bars {
                // Bars are `bar_width` wide in x units (a histogram's bin width), so two plots
                // with the same x range draw the same bins at the same places.
                let n = se.points.len().max(1) as f64;
                let bw = match self.bar_width {
                    Some(w) => w / (x1 - x0) * pw * 0.9,
                    None => pw / n * 0.9,
                };
                for &(x, y) in &se.points {
                    let top = sy(y.min(y1));
                    let _ = writeln!(
                        s,
                        r#"<rect x="{:.2}" y="{top:.2}" width="{bw:.2}" height="{:.2}" fill="{}" fill-opacity="0.45"/>"#,
                        sx(x) - bw / 2.0,
                        (sy(y0) - top).max(0.0),
                        se.color
                    );
                }
            } else {
                let pts: Vec<String> = se
                    .points
                    .iter()
                    .map(|&(x, y)| format!("{:.2},{:.2}", sx(x), sy(y.clamp(y0, y1))))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                    se.color,
                    pts.join(" ")
                );
            }
        }
        // Legend and notes: below the x-axis label, outside the plot area.
        let mut ly = H + 4.0;
        for se in &self.series {
            let _ = writeln!(
                s,
                r#"<rect x="{ML:.2}" y="{:.2}" width="14" height="4" fill="{}"/><text x="{:.2}" y="{ly:.2}">{}</text>"#,
                ly - 4.0,
                se.color,
                ML + 20.0,
                esc(&se.label)
            );
            ly += LEGEND_LINE;
        }
        for n in &self.notes {
            let _ = writeln!(
                s,
                r#"<text x="{ML:.2}" y="{ly:.2}" fill="grey">{}</text>"#,
                esc(n)
            );
            ly += LEGEND_LINE;
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The y coordinates of every `<text>` element whose content is `label`.
    fn text_y(svg: &str, label: &str) -> Vec<f64> {
        svg.lines()
            .filter(|l| l.contains(&format!(">{label}</text>")))
            .map(|l| {
                let at = l.rfind("<text").unwrap();
                let y = &l[at..];
                let y = &y[y.find(" y=\"").unwrap() + 4..];
                y[..y.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn legend_and_notes_lie_below_the_plot_area() {
        let plot = Plot {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                label: "positive pairs".into(),
                color: "#2ca02c".into(),
                points: vec![(0.0, 1.0), (1.0, 0.5)],
                bars: true,
            }],
            notes: vec!["overlap coefficient 0.500".into()],
            ..Default::default()
        };
        let svg = plot.render();
        let x_label = text_y(&svg, "x")[0];
        for label in ["positive pairs", "overlap coefficient 0.500"] {
            let ys = text_y(&svg, label);
            assert_eq!(ys.len(), 1, "{label}");
            assert!(
                ys[0] > x_label,
                "{label} at y {} is not below the axis",
                ys[0]
            );
        }
        assert!(svg.contains(&format!("height=\"{}\"", H + 2.0 * LEGEND_LINE + 8.0)));
    }
}
