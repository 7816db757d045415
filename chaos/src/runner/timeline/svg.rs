//! The picture: an SVG timeline of every room with the faults marked.

use super::*;

/// A fault on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// When it was injected, since the start.
    pub at: Duration,
    pub label: String,
    /// When its recovery ended, for a shaded span from `at`.
    pub until: Option<Duration>,
}

/// One marker per executed fault: at its injection, shaded until its slowest link's first
/// packet (`recovery.max`), none when no link recovered.
pub fn markers(faults: &[FaultRecord]) -> Vec<Marker> {
    faults
        .iter()
        .map(|f| {
            let at = Duration::from_millis(f.injected_ms);
            let mut label = f.step.fault.to_string();
            if f.recovery.never > 0 {
                let _ = write!(label, " ({} links never recovered)", f.recovery.never);
            }
            Marker {
                at,
                label,
                until: f.recovery.max.map(|m| at + m),
            }
        })
        .collect()
}

const WIDTH: f64 = 1000.0;
/// Left of the plots: the y tick labels and the axis title.
pub(super) const LEFT: f64 = 70.0;
/// Right of the plots: the legend.
const RIGHT: f64 = 220.0;
pub(super) const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const TITLE_H: f64 = 56.0;
/// A panel: its heading, the plot, the x tick labels.
const HEAD_H: f64 = 20.0;
const PLOT_H: f64 = 160.0;
const FOOT_H: f64 = 38.0;
const LINE_H: f64 = 16.0;
const LEGEND_ROWS: usize = 9;
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f7f7f", "#393b79",
];
const FAULT: &str = "#d62728";

/// Text for an XML text node or a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// `s` cut to `n` characters, an ellipsis marking the cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A 1-2-5 step giving about `target` ticks over `span`.
pub(super) fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let k = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    k * mag
}

/// A tick label: as many decimals as the step needs.
pub(super) fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{v:.decimals$}")
}

/// The x axis: seconds from 0 to the last sample or fault, whichever is later.
fn x_max(samples: &Samples, faults: &[Marker]) -> f64 {
    let mut t = samples.end().unwrap_or_default();
    for m in faults {
        t = t.max(m.at).max(m.until.unwrap_or_default());
    }
    t.as_secs_f64().max(1.0)
}

/// The x coordinate of `t` on an axis ending at `x_max` seconds.
fn x_at(t: Duration, x_max: f64) -> f64 {
    LEFT + (t.as_secs_f64() / x_max).min(1.0) * PLOT_W
}

/// The timeline picture: a title, then one panel per room with each member's received
/// packets per second (one colour each, legend on the right, the dashed line what they
/// would receive with nothing lost), the faults as red vertical lines `F1`, `F2`, … with
/// their recovery shaded, and the list of faults below.
pub fn render_svg(title: &str, samples: &Samples, faults: &[Marker]) -> String {
    let x_max = x_max(samples, faults);
    let x_step = nice_step(x_max, 10.0);
    let panel_h = HEAD_H + PLOT_H + FOOT_H;
    let panels = samples.rooms.len().max(1);
    // The x axis title just under the last panel's tick labels, then the list of faults.
    let panels_end = TITLE_H + panels as f64 * panel_h;
    let list_top = panels_end + 8.0;
    let height = list_top + (faults.len() as f64 + 1.0) * LINE_H + 8.0;
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, "<title>{}</title>", escape(title));
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="40" fill="#444">received packets/s per participant (all publishers); dashed: what the others sent; red: faults, shaded until the slowest link's first packet</text>"##
    );
    if samples.rooms.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{}" fill="#444">no samples</text>"##,
            TITLE_H + HEAD_H + PLOT_H / 2.0
        );
    }
    for (r, room) in samples.rooms.iter().enumerate() {
        let top = TITLE_H + r as f64 * panel_h;
        panel(&mut s, room, faults, top, x_max, x_step);
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the fault phase began</text>"#,
        LEFT + PLOT_W / 2.0,
        panels_end - 2.0
    );
    for (k, m) in faults.iter().enumerate() {
        let until = m
            .until
            .map(|u| format!(", shaded until {:.1} s", u.as_secs_f64()))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}"><tspan fill="{FAULT}" font-weight="bold">F{}</tspan> at {:.1} s: {}{}</text>"#,
            list_top + (k as f64 + 1.0) * LINE_H,
            k + 1,
            m.at.as_secs_f64(),
            escape(&m.label),
            escape(&until)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, room: &RoomSamples, faults: &[Marker], top: f64, x_max: f64, x_step: f64) {
    let plot_top = top + HEAD_H;
    let bottom = plot_top + PLOT_H;
    let lines: Vec<Vec<(Duration, f64)>> = (0..room.members.len())
        .map(|i| room.received_rates(i))
        .collect();
    let expected = room.expected_rates();
    let peak = lines
        .iter()
        .chain(std::iter::once(&expected))
        .flatten()
        .map(|(_, v)| *v)
        .fold(0.0, f64::max);
    let y_step = nice_step(peak.max(1.0) * 1.05, 4.0);
    let y_max = ((peak.max(1.0) * 1.05) / y_step).ceil() * y_step;
    let y_at = |v: f64| bottom - (v / y_max).clamp(0.0, 1.0) * PLOT_H;
    let _ = writeln!(s, "<g>");
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">room {}</text>"#,
        top + 14.0,
        escape(&room.room)
    );
    // Recovery spans, under everything else.
    for m in faults {
        if let Some(until) = m.until {
            let (x0, x1) = (x_at(m.at, x_max), x_at(until, x_max));
            let _ = writeln!(
                s,
                r#"<rect class="recovery" x="{x0:.1}" y="{plot_top}" width="{:.1}" height="{PLOT_H}" fill="{FAULT}" fill-opacity="0.12"/>"#,
                (x1 - x0).max(1.0)
            );
        }
    }
    // Grid and ticks.
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let y = y_at(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e5e5e5"/>"##,
            LEFT + PLOT_W
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            tick_label(v, y_step)
        );
        v += y_step;
    }
    let mut t = 0.0;
    while t <= x_max + x_step / 1000.0 {
        let x = LEFT + t / x_max * PLOT_W;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="#444"/>"##,
            bottom + 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            tick_label(t, x_step)
        );
        t += x_step;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{plot_top}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#444"/>"##
    );
    let mid = plot_top + PLOT_H / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="18" y="{mid}" text-anchor="middle" transform="rotate(-90 18 {mid})">packets/s</text>"#
    );
    // The lines.
    let polyline = |s: &mut String, points: &[(Duration, f64)], attrs: &str| {
        if points.is_empty() {
            return;
        }
        let pts: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x_at(*t, x_max), y_at(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" {attrs}/>"#,
            pts.join(" ")
        );
    };
    polyline(
        s,
        &expected,
        r##"stroke="#000" stroke-opacity="0.55" stroke-width="1" stroke-dasharray="5 3""##,
    );
    for (i, points) in lines.iter().enumerate() {
        polyline(s, points, &stroke(i));
    }
    // The faults, over the lines; labels alternate between two rows.
    for (k, m) in faults.iter().enumerate() {
        let x = x_at(m.at, x_max);
        let _ = writeln!(
            s,
            r#"<line class="fault" x1="{x:.1}" y1="{plot_top}" x2="{x:.1}" y2="{bottom}" stroke="{FAULT}" stroke-width="1.5"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" fill="{FAULT}" font-weight="bold">F{}</text>"#,
            x + 3.0,
            plot_top + 12.0 + (k % 2) as f64 * 12.0,
            k + 1
        );
    }
    // The legend.
    let lx = LEFT + PLOT_W + 14.0;
    let mut row = 0.0;
    let mut entry = |s: &mut String, attrs: &str, label: &str| {
        let y = plot_top + 8.0 + row * LINE_H;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" {attrs}/>"#,
            lx + 22.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 28.0,
            y + 4.0,
            escape(&clip(label, 28))
        );
        row += 1.0;
    };
    let shown = room.members.len().min(LEGEND_ROWS);
    for (i, member) in room.members.iter().take(shown).enumerate() {
        entry(s, &stroke(i), member);
    }
    if room.members.len() > shown {
        let more = format!("+{} more", room.members.len() - shown);
        entry(s, r#"stroke="none""#, &more);
    }
    entry(
        s,
        r##"stroke="#000" stroke-opacity="0.55" stroke-dasharray="5 3""##,
        "sent by the others (mean)",
    );
    let _ = writeln!(s, "</g>");
}

/// Member `i`'s line: a palette colour, dashed once the palette has gone round.
fn stroke(i: usize) -> String {
    let colour = PALETTE[i % PALETTE.len()];
    let dash = if i >= PALETTE.len() {
        r#" stroke-dasharray="2 2""#
    } else {
        ""
    };
    format!(r#"stroke="{colour}" stroke-width="1.5"{dash}"#)
}
