use super::sampling::Ticks;
use super::svg::{nice_step, tick_label, LEFT, PLOT_W};
use super::*;
use crate::invariants::{Check, Invariant, RecoveryTimes, Verdict};
use crate::runner::schedule::{Fault, Step};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn totals_read_a_drop_as_a_restart_from_zero_and_new_keys_whole() {
    let mut t = Totals::default();
    assert_eq!(t.update([("a", 10)]), 10);
    assert_eq!(t.update([("a", 25)]), 25);
    // A new client: `a` started again, `b` is new.
    assert_eq!(t.update([("a", 5), ("b", 7)]), 25 + 5 + 7);
    // A failed read keeps the last values: nothing is counted twice afterwards.
    assert_eq!(t.update(std::iter::empty::<(&str, u64)>()), 37);
    assert_eq!(t.update([("a", 6), ("b", 7)]), 38);
}

#[test]
fn rates_from_counters_never_go_negative_across_a_reset() {
    let points: Vec<(Duration, u64)> = [(0.0, 0), (1.0, 100), (2.0, 200), (2.5, 50), (3.5, 150)]
        .iter()
        .map(|&(t, v)| (secs(t), v))
        .collect();
    let r = rates(&points);
    let values: Vec<f64> = r.iter().map(|(_, v)| *v).collect();
    assert_eq!(values, vec![100.0, 100.0, 100.0, 100.0]);
    assert_eq!(r[2].0, secs(2.5));
    assert!(r.iter().all(|(_, v)| *v >= 0.0));
    assert_eq!(increase([0, 100, 200, 50, 150]), 350);
    assert_eq!(increase([]), 0);
}

/// Three members sending 100 packets/s from 0 to 10 s, sampled every second. Member 1
/// gets everything from 0; member 2 gets nothing from 0 between 4 s and 6 s; member 0's
/// sender restarts at 5 s (a recovery: its totals still grow). The rest is lossless.
fn three() -> Samples {
    let samples = (0..=10u64)
        .map(|k| {
            let sent = vec![100 * k, 100 * k, 100 * k];
            let from0_at_2 = if k <= 4 {
                100 * k
            } else if k <= 6 {
                400
            } else {
                400 + 100 * (k - 6)
            };
            Sample {
                at: Duration::from_secs(k),
                sent,
                received: vec![
                    vec![0, 100 * k, 100 * k],
                    vec![100 * k, 0, 100 * k],
                    vec![from0_at_2, 100 * k, 0],
                ],
            }
        })
        .collect();
    Samples {
        rooms: vec![RoomSamples {
            room: "r".into(),
            members: vec!["a".into(), "b".into(), "c".into()],
            samples,
        }],
    }
}

#[test]
fn loss_per_window_finds_the_link_that_lost_everything() {
    let s = three();
    let links = link_losses(&s, secs(4.0), secs(6.0));
    assert_eq!(links.len(), 6);
    let link = |r: &str, p: &str| {
        links
            .iter()
            .find(|l| l.receiver == r && l.publisher == p)
            .unwrap()
            .clone()
    };
    let dead = link("c", "a");
    assert_eq!((dead.expected, dead.received, dead.lost), (200, 0, 200));
    let fine = link("b", "a");
    assert_eq!((fine.expected, fine.received, fine.lost), (200, 200, 0));
    let sum = packets_lost(&s, secs(4.0), secs(6.0)).unwrap();
    assert_eq!(sum.lost, 200);
    assert_eq!(sum.expected, 6 * 200);
    assert_eq!(sum.links, 6);
    assert_eq!(sum.lossless_links, 5);
    assert_eq!((sum.from_ms, sum.to_ms), (4000, 6000));
    assert_eq!(sum.worst.unwrap(), dead);
}

#[test]
fn windows_snap_to_samples_and_tile() {
    let s = three();
    // 4.6 s snaps to 4 s, 7.9 s to 7 s; the loss from 4 s to 6 s is all inside.
    let a = packets_lost(&s, secs(4.6), secs(7.9)).unwrap();
    assert_eq!((a.from_ms, a.to_ms), (4000, 7000));
    assert_eq!(a.lost, 200);
    // Two adjacent windows count what the whole one counts.
    let whole = packets_lost(&s, secs(0.0), secs(10.0)).unwrap();
    let first = packets_lost(&s, secs(0.0), secs(5.0)).unwrap();
    let second = packets_lost(&s, secs(5.0), secs(10.0)).unwrap();
    assert_eq!(first.expected + second.expected, whole.expected);
    assert_eq!(first.lost + second.lost, whole.lost);
    assert_eq!((first.lost, second.lost), (100, 100));
    // Nothing lost: no worst link.
    let calm = packets_lost(&s, secs(7.0), secs(10.0)).unwrap();
    assert_eq!((calm.lost, calm.worst), (0, None));
    // A window inside one sample interval measures nothing.
    assert_eq!(packets_lost(&s, secs(4.2), secs(4.8)), None);
}

#[test]
fn a_sender_restart_inside_a_window_is_not_counted_as_loss_or_gain() {
    let mut s = three();
    // Raw counters (not folded) of a sender whose new client had sent 50 by 5 s.
    for (k, sample) in s.rooms[0].samples.iter_mut().enumerate().skip(5) {
        sample.sent[1] = 100 * (k as u64 - 5) + 50;
    }
    // From 4 s to 6 s: 400 → 50 (a restart: 50) → 150 (100). What the old client sent
    // after 4 s is unknown, so less is expected than arrived: no loss, no wrap-around.
    let l = link_losses(&s, secs(4.0), secs(6.0));
    let from_b = l
        .iter()
        .find(|l| l.receiver == "a" && l.publisher == "b")
        .unwrap();
    assert_eq!(
        (from_b.expected, from_b.received, from_b.lost),
        (150, 200, 0)
    );
}

#[test]
fn rates_per_member_show_the_dip() {
    let s = three();
    let room = &s.rooms[0];
    let c: Vec<f64> = room.received_rates(2).iter().map(|(_, v)| *v).collect();
    assert_eq!(
        c,
        vec![200.0, 200.0, 200.0, 200.0, 100.0, 100.0, 200.0, 200.0, 200.0, 200.0]
    );
    let e: Vec<f64> = room.expected_rates().iter().map(|(_, v)| *v).collect();
    assert_eq!(e, vec![200.0; 10]);
}

/// A minimal XML well-formedness check: tags balance, attributes are quoted, text and
/// attribute values hold no raw `<` and only the predefined or numeric entities.
fn well_formed(xml: &str) -> Result<usize, String> {
    fn entities_ok(text: &str) -> Result<(), String> {
        let mut rest = text;
        while let Some(i) = rest.find('&') {
            let tail = &rest[i + 1..];
            let end = tail.find(';').ok_or(format!("bare & in {text:?}"))?;
            let name = &tail[..end];
            let numeric = name
                .strip_prefix('#')
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if !numeric && !matches!(name, "amp" | "lt" | "gt" | "quot" | "apos") {
                return Err(format!("unknown entity &{name}; in {text:?}"));
            }
            rest = &tail[end + 1..];
        }
        Ok(())
    }
    let mut stack: Vec<String> = Vec::new();
    let mut elements = 0;
    let mut roots = 0;
    let mut rest = xml;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if !stack.is_empty() {
                return Err("text after the last tag inside an element".into());
            }
            if !rest.trim().is_empty() {
                return Err(format!("text outside the root: {rest:?}"));
            }
            break;
        };
        let text = &rest[..lt];
        if stack.is_empty() && !text.trim().is_empty() {
            return Err(format!("text outside the root: {text:?}"));
        }
        entities_ok(text)?;
        rest = &rest[lt..];
        if let Some(r) = rest.strip_prefix("<?") {
            let end = r.find("?>").ok_or("unclosed <?")?;
            rest = &r[end + 2..];
            continue;
        }
        if let Some(r) = rest.strip_prefix("<!--") {
            let end = r.find("-->").ok_or("unclosed comment")?;
            rest = &r[end + 3..];
            continue;
        }
        let gt = rest.find('>').ok_or("unclosed tag")?;
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
            if open != name.trim() {
                return Err(format!("<{open}> closed by </{name}>"));
            }
            continue;
        }
        let (body, empty) = match tag.strip_suffix('/') {
            Some(b) => (b, true),
            None => (tag, false),
        };
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = &body[..name_end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
            return Err(format!("bad element name in <{tag}>"));
        }
        // Attributes: name="value" pairs, values without < and with valid entities.
        let mut attrs = body[name_end..].trim_start();
        while !attrs.is_empty() {
            let eq = attrs
                .find('=')
                .ok_or(format!("attribute without = in <{tag}>"))?;
            let aname = attrs[..eq].trim();
            if aname.is_empty()
                || !aname
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '_'))
            {
                return Err(format!("bad attribute name {aname:?} in <{tag}>"));
            }
            let after = attrs[eq + 1..].trim_start();
            let quote = after.chars().next().ok_or("attribute without value")?;
            if quote != '"' && quote != '\'' {
                return Err(format!("unquoted attribute {aname} in <{tag}>"));
            }
            let close = after[1..]
                .find(quote)
                .ok_or(format!("unclosed attribute {aname}"))?;
            let value = &after[1..1 + close];
            if value.contains('<') {
                return Err(format!("< in attribute {aname}"));
            }
            entities_ok(value)?;
            attrs = after[close + 2..].trim_start();
        }
        elements += 1;
        if stack.is_empty() {
            roots += 1;
        }
        if !empty {
            stack.push(name.to_owned());
        }
    }
    if let Some(open) = stack.pop() {
        return Err(format!("<{open}> never closed"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(elements)
}

#[test]
fn the_checker_rejects_what_it_must() {
    assert!(well_formed("<a><b/></a>").is_ok());
    assert!(well_formed("<a>x < y</a>").is_err());
    assert!(well_formed("<a>R&D</a>").is_err());
    assert!(well_formed(r#"<a t="<"/>"#).is_err());
    assert!(well_formed("<a><b></a>").is_err());
    assert!(well_formed("<a/><b/>").is_err());
    assert!(well_formed("<a x=1/>").is_err());
}

#[test]
fn the_svg_is_well_formed_and_escapes_labels() {
    let s = three();
    let faults = vec![
        Marker {
            at: secs(4.0),
            label: r#"kill <n1> & "friends" 'now'"#.into(),
            until: Some(secs(6.0)),
        },
        Marker {
            at: secs(8.0),
            label: "restart nats".into(),
            until: None,
        },
    ];
    let svg = render_svg("chaos <run> & co", &s, &faults);
    let elements = well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    assert!(elements > 20, "{elements} elements");
    assert!(svg.contains("kill &lt;n1&gt; &amp; &quot;friends&quot; &apos;now&apos;"));
    assert!(svg.contains("chaos &lt;run&gt; &amp; co"));
    // One line per member plus the expected one, in the one panel.
    assert_eq!(svg.matches("<polyline").count(), 4);
    assert_eq!(svg.matches(r#"class="recovery""#).count(), 1);
    // Also with no samples at all.
    let empty = render_svg("empty", &Samples::default(), &[]);
    well_formed(&empty).unwrap_or_else(|e| panic!("{e}\n{empty}"));
    assert!(empty.contains("no samples"));
}

/// The x1 of every `<line class="fault" …>`.
fn fault_xs(svg: &str) -> Vec<f64> {
    svg.match_indices(r#"<line class="fault" x1=""#)
        .map(|(i, m)| {
            let rest = &svg[i + m.len()..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

#[test]
fn markers_sit_at_their_time_on_the_x_axis() {
    // The axis ends at the last sample, 10 s: 2.5 s is a quarter, 5 s half way.
    let s = three();
    let faults = vec![
        Marker {
            at: secs(2.5),
            label: "a".into(),
            until: None,
        },
        Marker {
            at: secs(5.0),
            label: "b".into(),
            until: Some(secs(7.0)),
        },
    ];
    let svg = render_svg("t", &s, &faults);
    let xs = fault_xs(&svg);
    let want = [LEFT + PLOT_W / 4.0, LEFT + PLOT_W / 2.0];
    assert_eq!(xs.len(), 2, "{svg}");
    for (x, w) in xs.iter().zip(want) {
        assert!((x - w).abs() < 0.11, "{x} != {w}");
    }
    // A fault after the last sample stretches the axis to it.
    let late = vec![Marker {
        at: secs(20.0),
        label: "late".into(),
        until: None,
    }];
    let xs = fault_xs(&render_svg("t", &s, &late));
    assert!((xs[0] - (LEFT + PLOT_W)).abs() < 0.11, "{xs:?}");
}

#[test]
fn ticks_are_round_numbers() {
    assert_eq!(nice_step(60.0, 10.0), 10.0);
    assert_eq!(nice_step(12.0, 10.0), 2.0);
    assert_eq!(nice_step(300.0, 4.0), 100.0);
    assert_eq!(nice_step(0.9, 4.0), 0.5);
    assert_eq!(tick_label(0.5, 0.5), "0.5");
    assert_eq!(tick_label(20.0, 10.0), "20");
}

fn record_with(injected_ms: u64, max: Option<Duration>, never: usize) -> FaultRecord {
    FaultRecord {
        step: Step {
            at: Duration::from_millis(injected_ms),
            fault: Fault::KillNode { node: "n1".into() },
        },
        injected_ms,
        recovery: RecoveryTimes {
            links: 6,
            never,
            p50: max,
            p99: max,
            max,
        },
        everyone_receives: Check {
            invariant: Invariant::EveryoneReceives,
            verdict: Verdict::Pass {
                checked: "6 links".into(),
            },
        },
        participant_recoveries: 0,
        notes: Vec::new(),
        packets_lost: None,
    }
}

#[test]
fn faults_get_their_window_and_markers() {
    let s = three();
    let mut faults = vec![
        record_with(4_000, Some(Duration::from_millis(1_500)), 0),
        record_with(6_000, None, 2),
    ];
    fill_packets_lost(&mut faults, &s);
    let first = faults[0].packets_lost.as_ref().unwrap();
    assert_eq!((first.from_ms, first.to_ms, first.lost), (4000, 6000, 200));
    let second = faults[1].packets_lost.as_ref().unwrap();
    assert_eq!(
        (second.from_ms, second.to_ms, second.lost),
        (6000, 10000, 0)
    );
    let m = markers(&faults);
    assert_eq!(m[0].at, secs(4.0));
    assert_eq!(m[0].until, Some(secs(5.5)));
    assert_eq!(m[1].until, None);
    assert!(
        m[1].label.contains("2 links never recovered"),
        "{}",
        m[1].label
    );
}

#[tokio::test]
async fn sampling_stops_at_the_cap_and_at_the_stop_with_one_last_tick() {
    let mut ticks = Ticks::new(Duration::from_millis(5), 3, std::future::pending::<()>());
    let mut n = 0;
    while ticks.next().await {
        n += 1;
    }
    assert_eq!(n, 3);
    let stop = tokio::time::sleep(Duration::from_millis(60));
    let mut ticks = Ticks::new(Duration::from_millis(25), 1000, stop);
    let mut n = 0;
    let t = Instant::now();
    while ticks.next().await {
        n += 1;
    }
    // Ticks at 0, 25 and 50 ms, then the stop's own at 60 ms (fewer on a slow machine:
    // the stop wins over late ticks, but the first and the last are always there).
    assert!((2..=5).contains(&n), "{n} ticks");
    assert!(t.elapsed() < Duration::from_secs(2));
    // An empty run samples nothing and returns at the stop.
    let samples = record(&[], Instant::now(), Duration::from_millis(5), 10, async {}).await;
    assert_eq!(samples, Samples::default());
}
