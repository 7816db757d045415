//! Mutations of a valid message: its JSON (paths into it, odd values) and its bytes.

use super::*;

/// Every path (object keys and array indices) into `v`, shallow first, at most `limit`.
fn paths(v: &Value, prefix: Vec<PathStep>, out: &mut Vec<Vec<PathStep>>, limit: usize) {
    if out.len() >= limit {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let mut p = prefix.clone();
                p.push(PathStep::Key(k.clone()));
                out.push(p.clone());
                paths(child, p, out, limit);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let mut p = prefix.clone();
                p.push(PathStep::Index(i));
                out.push(p.clone());
                paths(child, p, out, limit);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at_ref<'a>(v: &'a Value, path: &[PathStep]) -> Option<&'a Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            PathStep::Key(k) => cur.get(k.as_str())?,
            PathStep::Index(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

fn at_mut<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            PathStep::Key(k) => cur.get_mut(k.as_str())?,
            PathStep::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// A value of another type, or an extreme one.
fn odd_json(rng: &mut StdRng) -> (Value, String) {
    match rng.gen_range(0..16) {
        0 => (Value::Null, "null".into()),
        1 => (json!(true), "true".into()),
        2 => (json!(-1), "-1".into()),
        3 => (json!(u64::MAX), "u64::MAX".into()),
        4 => (json!(i64::MIN), "i64::MIN".into()),
        5 => (json!(1e308), "1e308".into()),
        6 => (json!(0.5), "0.5".into()),
        7 | 8 => {
            let n = *pick(rng, &[1_100usize, 5_000, 30_000, 60_000, 70_000]);
            (json!("x".repeat(n)), format!("a string of {n} bytes"))
        }
        9 => (json!(""), "empty string".into()),
        10 => (
            json!("\u{0}\u{7f}é☃𝄞\u{202e}\u{feff}"),
            "odd characters".into(),
        ),
        11 => (json!([]), "[]".into()),
        12 => (json!({}), "{}".into()),
        13 => (json!([1, "a", null, {"b": []}]), "mixed array".into()),
        14 => {
            let depth = *pick(rng, &[20usize, 120, 129, 1000]);
            let mut v = json!(0);
            for _ in 0..depth {
                v = json!([v]);
            }
            (v, format!("nested {depth} deep"))
        }
        _ => (
            json!(pick(rng, CLIENT_TYPES).to_string()),
            "a message type".into(),
        ),
    }
}

/// One structural mutation of a message; returns its name.
pub(super) fn mutate_json(rng: &mut StdRng, v: &mut Value) -> String {
    let mut ps = Vec::new();
    paths(v, Vec::new(), &mut ps, 64);
    let strings: Vec<&Vec<PathStep>> = ps
        .iter()
        .filter(|p| matches!(at_ref(v, p), Some(Value::String(_))))
        .collect();
    match rng.gen_range(0..7) {
        6 if !strings.is_empty() => {
            // A huge string where a string is expected: its own text repeated.
            let p = (*pick(rng, &strings)).clone();
            let n = *pick(rng, &[1_100usize, 5_000, 30_000, 60_000, 70_000]);
            if let Some(Value::String(t)) = at_mut(v, &p) {
                let seed = if t.is_empty() {
                    "x".to_owned()
                } else {
                    t.clone()
                };
                *t = seed.repeat(n / seed.len() + 1);
                t.truncate(t.char_indices().nth(n).map_or(t.len(), |(i, _)| i));
            }
            format!("{p:?} grown to {n} characters")
        }
        0 if !ps.is_empty() => {
            // Delete a field or an element.
            let p = pick(rng, &ps).clone();
            let (last, parent) = p.split_last().expect("non-empty path");
            if let Some(parent) = at_mut(v, parent) {
                match (parent, last) {
                    (Value::Object(m), PathStep::Key(k)) => {
                        m.remove(k);
                    }
                    (Value::Array(a), PathStep::Index(i)) if *i < a.len() => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
            format!("delete {p:?}")
        }
        1 => {
            // Type confusion: another message's type with these fields.
            let t = pick(rng, CLIENT_TYPES).to_string();
            if let Value::Object(m) = v {
                m.insert("type".into(), json!(t));
            }
            format!("type becomes {t}")
        }
        2 => {
            if let Value::Object(m) = v {
                let (odd, what) = odd_json(rng);
                m.insert("extra".into(), odd);
                return format!("extra field: {what}");
            }
            "no object to extend".into()
        }
        _ if !ps.is_empty() => {
            let p = pick(rng, &ps).clone();
            let (odd, what) = odd_json(rng);
            if let Some(slot) = at_mut(v, &p) {
                *slot = odd;
            }
            format!("{p:?} = {what}")
        }
        _ => {
            let (odd, what) = odd_json(rng);
            *v = odd;
            format!("the message is {what}")
        }
    }
}

/// One mutation of the frame's bytes; returns its name.
pub(super) fn mutate_bytes(rng: &mut StdRng, b: &mut Vec<u8>) -> String {
    match rng.gen_range(0..6) {
        0 => {
            let at = rng.gen_range(0..=b.len());
            b.truncate(at);
            format!("truncated at {at}")
        }
        1 if !b.is_empty() => {
            let at = rng.gen_range(0..b.len());
            b[at] = rng.gen();
            format!("byte {at} = {:#04x}", b[at])
        }
        2 => {
            let at = rng.gen_range(0..=b.len());
            let n = rng.gen_range(1..16);
            let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            b.splice(at..at, junk);
            format!("{n} random bytes at {at}")
        }
        3 => {
            b.splice(0..0, br#"{"type":"ping","#.iter().copied());
            "duplicate `type` key in front".into()
        }
        4 => {
            b.extend_from_slice(b"}garbage");
            "trailing garbage".into()
        }
        _ => {
            b.splice(0..0, "\u{feff}".bytes());
            "byte order mark".into()
        }
    }
}
