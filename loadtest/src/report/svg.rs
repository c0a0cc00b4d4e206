//! A small hand-written SVG line chart: axes with round ticks, one polyline with markers
//! per series, a legend. Text uses the generic `sans-serif` family, so nothing depends
//! on the fonts of the machine that draws it.

use std::fmt::Write as _;

const W: f64 = 680.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 50.0;

/// Colours per system: ssegate blue, peers orange / green.
pub(crate) const COLORS: [&str; 4] = ["#1f6feb", "#e36209", "#2da44e", "#8250df"];

#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) color: &'static str,
    pub(crate) dashed: bool,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) for about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn label(v: f64) -> String {
    if v.abs() >= 1000.0 && (v / 1000.0).fract() == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').to_owned()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws the chart; with `log_y` the y axis is logarithmic (decades), for values that span
/// orders of magnitude.
pub(crate) fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    log_y: bool,
    series: &[Series],
) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x0, mut x1) = all().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(x), b.max(x)));
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x0 == x1 {
        (x0, x1) = (0.0, x1.max(1.0));
    }
    let x0 = x0.min(0.0);
    let y_max = all().map(|(_, y)| y).fold(0.0, f64::max).max(1e-9);
    let y_min = all()
        .map(|(_, y)| y)
        .filter(|y| *y > 0.0)
        .fold(f64::MAX, f64::min);
    let xs = nice_step(x1 - x0, 5.0);
    let x1 = (x1 / xs).ceil() * xs;
    // Linear: 0..y1 in steps of ys. Log: decades d0..d1.
    let ys = nice_step(y_max * 1.1, 5.0);
    let y1 = (y_max * 1.1 / ys).ceil() * ys;
    let d0 = if y_min < f64::MAX {
        y_min.log10().floor()
    } else {
        0.0
    };
    let d1 = y_max.log10().ceil().max(d0 + 1.0);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| {
        if log_y {
            let l = y.max(10f64.powf(d0)).log10();
            TOP + ph - (l - d0) / (d1 - d0) * ph
        } else {
            TOP + ph - y / y1 * ph
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        LEFT + pw / 2.0,
        esc(title)
    );
    let y_ticks: Vec<f64> = if log_y {
        (d0 as i32..=d1 as i32).map(|d| 10f64.powi(d)).collect()
    } else {
        (0..=((y1 / ys).round() as usize))
            .map(|i| i as f64 * ys)
            .collect()
    };
    for t in y_ticks {
        let y = py(t);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e5e5e5\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            label(t)
        );
    }
    let mut t = x0;
    while t <= x1 + xs / 2.0 {
        let x = px(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + ph,
            TOP + ph + 5.0,
            TOP + ph + 18.0,
            label(t)
        );
        t += xs;
    }
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>"
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 10.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let mut pts = se.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if se.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            path.join(" "),
            se.color
        );
        for &(x, y) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"><title>{}: {} → {}</title></circle>"#,
                px(x),
                py(y),
                se.color,
                esc(&se.name),
                label(x),
                label((y * 100.0).round() / 100.0)
            );
        }
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            se.color,
            lx + 30.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_chart() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(4800.0, 5.0), 1000.0);
        assert_eq!(nice_step(0.3, 5.0), 0.1);
        let svg = line_chart(
            "t <x>",
            "subscribers",
            "ms",
            true,
            &[Series {
                name: "a".into(),
                color: COLORS[0],
                dashed: true,
                points: vec![(1000.0, 2.0), (5000.0, 9.5)],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;x&gt;") && svg.contains("stroke-dasharray"));
        assert!(svg.contains(">10<"), "decade ticks");
        assert!(line_chart("empty", "x", "y", false, &[]).contains("</svg>"));
    }
}
