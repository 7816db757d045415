//! `docs/openapi.yaml`, the room API's description, checked by a real validator
//! (`openapi-spec-validator`, PyPI, installed by `scripts/install-deps`) and against the
//! routes the coordinator registers (`coordinator::api::routes`), both ways, so the file
//! cannot drift from the code. Python (with the validator's PyYAML) reads the YAML.

use anyhow::{ensure, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("docs/openapi.yaml")
}

/// Runs a tool that must succeed and returns its standard output; a tool that is not
/// installed is a failure naming the fix.
fn succeed(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("running {what} (scripts/install-deps openapi installs it)"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The file as JSON.
fn document() -> Result<serde_json::Value> {
    let json = succeed(
        Command::new("python3")
            .arg("-c")
            .arg("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))")
            .arg(spec()),
    )?;
    Ok(serde_json::from_str(&json)?)
}

/// `(METHOD, path)` of every operation under `/v1` in the document.
fn documented(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let Some(paths) = doc["paths"].as_object() else {
        return out;
    };
    for (path, item) in paths {
        if !path.starts_with("/v1/") {
            continue;
        }
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

fn registered() -> BTreeSet<(String, String)> {
    coordinator::api::routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect()
}

/// What one side has and the other lacks, as a failure message.
fn drift(
    doc: &BTreeSet<(String, String)>,
    code: &BTreeSet<(String, String)>,
) -> Result<(), String> {
    let undocumented: Vec<_> = code.difference(doc).collect();
    let unserved: Vec<_> = doc.difference(code).collect();
    if undocumented.is_empty() && unserved.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "routes the coordinator serves but docs/openapi.yaml lacks: {undocumented:?}; \
             routes the file describes but the coordinator does not serve: {unserved:?}"
        ))
    }
}

#[test]
fn the_openapi_file_is_valid() -> Result<()> {
    let out = succeed(Command::new("openapi-spec-validator").arg(spec()))?;
    ensure!(out.contains("OK"), "{out}");
    Ok(())
}

#[test]
fn the_openapi_file_describes_exactly_the_routes_served() -> Result<()> {
    let doc = document()?;
    let documented = documented(&doc);
    let registered = registered();
    ensure!(registered.len() >= 10, "{registered:?}");
    drift(&documented, &registered).map_err(anyhow::Error::msg)?;

    // The check catches a route missing from either side.
    let (first, rest) = {
        let mut all: Vec<_> = documented.iter().cloned().collect();
        let first = all.remove(0);
        (first, all.into_iter().collect::<BTreeSet<_>>())
    };
    let missing = drift(&rest, &registered).expect_err("a missing route is caught");
    ensure!(missing.contains(&first.1), "{missing}");
    let mut extra = documented.clone();
    extra.insert(("GET".into(), "/v1/nowhere".into()));
    ensure!(drift(&extra, &registered).is_err());
    Ok(())
}

#[test]
fn every_operation_documents_its_errors() -> Result<()> {
    let doc = document()?;
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        for status in ["401", "403", "500", "503"] {
            ensure!(
                op["responses"].get(status).is_some(),
                "{method} {path} does not document {status}"
            );
        }
        let takes_room = path.contains("{room}");
        if takes_room {
            ensure!(
                op["responses"].get("404").is_some() && op["responses"].get("400").is_some(),
                "{method} {path} takes a room id and does not document 400 and 404"
            );
        }
    }
    ensure!(
        doc["webhooks"]["roomEvent"]["post"].is_object(),
        "the webhook is described"
    );
    Ok(())
}
