//! The monitoring of `deploy/` against a real cluster: a real `prometheus` (Debian's, started
//! here on a free port with a 1 s scrape interval and its own store) scrapes a sandbox cluster
//! (nats-server, coordinators c1 and c2, nodes n1 in eu and n2 in us) with the job names and
//! labels of `deploy/prometheus/prometheus.yml` and the rules of `alerts.yml`, and finds every
//! target up; then, while a publisher on n1 sends to subscribers on n1 and n2 (one room across
//! both nodes), every query of the Grafana dashboard (`deploy/grafana/dashboards`), its template
//! variables filled with the cluster's own node and room, returns data. Every metric the
//! dashboard and the alerts name is one a node or a coordinator exports.

use anyhow::{ensure, Context, Result};
use chaos::sandbox::{Cluster, ClusterSpec, NodeSpec};
use chaos::{Client, PublishOpts};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tests::{room_name, wait_media, wait_until};

const NODE: &str = env!("CARGO_BIN_EXE_cluster-node");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_cluster-coordinator");
const WAIT: Duration = Duration::from_secs(60);
/// Long enough for every panel's window to hold samples of the load (rates over 1 m need
/// two scrapes; the quality histograms need their first reports).
const PANELS_WAIT: Duration = Duration::from_secs(120);

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// A `prometheus` process, killed with the test.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, config: &str) -> Result<Prometheus> {
        std::fs::copy(deploy("prometheus/alerts.yml"), dir.join("alerts.yml"))?;
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting prometheus (scripts/install-deps installs it)")?;
        Ok(Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// `GET /api/v1/<path>` with query parameters: the `data` of a success.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = format!("{}/api/v1/{path}", self.url);
        let what = format!("{path} {params:?}");
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = tokio::task::spawn_blocking(move || {
            let mut req = ureq::get(&url);
            for (k, v) in &params {
                req = req.query(k, v);
            }
            req.call()
                .and_then(|mut r| r.body_mut().read_to_string())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        match v["status"].as_str() {
            Some("success") => Ok(v["data"].clone()),
            _ => Err(format!("{what}: {body}")),
        }
    }

    /// The series `expr` returns now (an empty list: no data).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

/// The scrape config of prometheus.yml pointed at the sandbox: same jobs and labels.
fn scrape_config(cluster: &Cluster) -> String {
    let mut nodes = String::new();
    for n in cluster.nodes() {
        nodes.push_str(&format!(
            "      - targets: [\"127.0.0.1:{}\"]\n        labels: {{ node: {}, region: {} }}\n",
            n.port(),
            n.id(),
            n.region().unwrap_or("local")
        ));
    }
    let mut coordinators = String::new();
    for c in cluster.coordinators() {
        coordinators.push_str(&format!(
            "      - targets: [\"127.0.0.1:{}\"]\n        labels: {{ coordinator: {} }}\n",
            c.port(),
            c.id()
        ));
    }
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
         scrape_configs:\n  - job_name: node\n    static_configs:\n{nodes}\
         \x20 - job_name: coordinator\n    static_configs:\n{coordinators}"
    )
}

/// One query of the dashboard: the panel's title and its expression.
struct PanelQuery {
    panel: String,
    expr: String,
}

/// A template variable of a dashboard: its name and its `label_values(...)` query.
type Variable = (String, String);

/// Every query of every panel of the dashboards, and the template variables.
fn dashboard_queries() -> Result<(Vec<PanelQuery>, Vec<Variable>)> {
    let dir = deploy("grafana/dashboards");
    let mut queries = Vec::new();
    let mut variables = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{}", path.display()))?;
        for p in dash["panels"].as_array().context("panels")? {
            for t in p["targets"].as_array().into_iter().flatten() {
                queries.push(PanelQuery {
                    panel: p["title"].as_str().unwrap_or("?").to_owned(),
                    expr: t["expr"].as_str().context("a target's expr")?.to_owned(),
                });
            }
        }
        for v in dash["templating"]["list"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().context("variable name")?.to_owned();
            let query = v["query"]["query"].as_str().context("variable query")?;
            variables.push((name, query.to_owned()));
        }
    }
    ensure!(queries.len() >= 20, "{} queries", queries.len());
    Ok((queries, variables))
}

/// The expressions of alerts.yml (one line or a folded block each).
fn alert_exprs() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml"))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(v) = l.trim().strip_prefix("expr:") else {
            continue;
        };
        let v = v.trim();
        if v == ">-" || v == "|" {
            let indent = l.len() - l.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|b| b.len() - b.trim_start().len() > indent)
                .map(|b| b.trim())
                .collect();
            out.push(block.join(" "));
        } else {
            out.push(v.to_owned());
        }
    }
    ensure!(out.len() >= 7, "{out:?}");
    Ok(out)
}

/// The metric names a PromQL expression selects: identifiers outside label matchers, ranges
/// and strings, other than functions, aggregations and keywords (and their label lists).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 12] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "inf",
    ];
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, end: char| {
        (from + 1..chars.len())
            .find(|&j| chars[j] == end)
            .unwrap_or(chars.len())
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' || c == '[' || c == '"' {
            let end = match c {
                '{' => '}',
                '[' => ']',
                _ => '"',
            };
            i = skip_to(i, end) + 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
            if AGGREGATIONS.contains(&word.as_str()) {
                // `sum by (...) (...)`: the aggregation and its label list, not names.
            } else if KEYWORDS.contains(&word.to_lowercase().as_str()) {
                if next == Some('(') {
                    let open = (i..chars.len()).find(|&j| chars[j] == '(').unwrap_or(i);
                    i = skip_to(open, ')') + 1;
                }
            } else if next != Some('(') {
                names.insert(word);
            }
        } else if c.is_ascii_digit() {
            // A number (or a number's exponent): not a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric names of an exposition text (histograms by their `_bucket`/`_sum`/`_count`
/// series and by their own name).
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "_:".contains(*c))
            .collect();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                out.insert(base.to_owned());
            }
        }
        out.insert(name);
    }
    out
}

async fn start_cluster(dir: &Path) -> Result<Cluster> {
    tests::init_logs();
    // Two blocks of 100 UDP ports in 12000–13999, apart from the other tests' blocks.
    let lo = 12000 + 200 * rand::Rng::gen_range(&mut rand::thread_rng(), 0..10u16);
    let mut spec = ClusterSpec::new(dir)
        .coordinator("c1")
        .coordinator("c2")
        .node(NodeSpec::new("n1", "eu", (lo, lo + 99)))
        .node(NodeSpec::new("n2", "us", (lo + 100, lo + 199)));
    spec.node_bin = NODE.into();
    spec.coordinator_bin = COORDINATOR.into();
    spec.ready_timeout = WAIT;
    Cluster::start(spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_cluster_and_every_dashboard_panel_has_data() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("monitoring-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    let _run = tests::RunDir(dir.clone());
    let mut cluster = start_cluster(&dir.join("cluster")).await?;
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir)?;
    let prom = Prometheus::start(&prom_dir, &scrape_config(&cluster))?;
    let targets = cluster.nodes().count() + cluster.coordinators().count();
    let up = wait_until(WAIT, "every target of prometheus up", || async {
        let data = prom.api("targets", &[("state", "active")]).await?;
        let active = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let down: Vec<String> = active
            .iter()
            .filter(|t| t["health"] != "up")
            .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
            .collect();
        if active.len() == targets && down.is_empty() {
            Ok(())
        } else {
            pace().await;
            Err(format!(
                "{} of {targets} active; not up: {down:?}",
                active.len()
            ))
        }
    })
    .await;
    if let Err(e) = up {
        let log = std::fs::read_to_string(&prom.log).unwrap_or_default();
        anyhow::bail!("{e:#}\nprometheus log:\n{log}");
    }

    // Every process says its NATS connection is up, and reports its CPU and memory.
    for p in cluster.nodes().chain(cluster.coordinators()) {
        wait_until(WAIT, "nats_connected 1 and process metrics", || async {
            let text = p.http_get("/metrics").await.map_err(|e| format!("{e:#}"))?;
            let has = |line: &str| text.lines().any(|l| l.starts_with(line));
            if has("nats_connected 1")
                && has("process_cpu_seconds_total ")
                && has("process_resident_memory_bytes ")
                && has("process_cpus_available ")
            {
                Ok(())
            } else {
                pace().await;
                Err(format!("{}: {text}", p.id()))
            }
        })
        .await?;
    }

    // The load: one room across both nodes, a publisher on n1, subscribers on n1 and n2.
    let room = room_name("monitoring");
    let token = |user: &str| {
        protocol::token::mint(
            cluster.api_secret().as_bytes(),
            &tests::claims(&room, user, 600),
        )
    };
    let publisher = Client::connect(&cluster.node("n1")?.ws_url()).await?;
    publisher
        .join_in_region(&room, &token("alice"), "eu")
        .await?;
    publisher
        .publish(PublishOpts {
            video_pps: 50,
            audio_pps: 25,
            ..PublishOpts::default()
        })
        .await?;
    let subscriber = Client::connect(&cluster.node("n2")?.ws_url()).await?;
    subscriber
        .join_in_region(&room, &token("bob"), "us")
        .await?;
    // A subscriber on n1 too: the panels of n1 show both directions (RTT is measured
    // towards subscribers only).
    let local = Client::connect(&cluster.node("n1")?.ws_url()).await?;
    local.join_in_region(&room, &token("carol"), "eu").await?;
    wait_media(&subscriber, &["alice"], 50).await?;
    wait_media(&local, &["alice"], 50).await?;

    let (queries, variables) = dashboard_queries()?;

    // Every panel's query returns data, the variables filled with n1 and the room.
    let fill = |expr: &str| expr.replace("$node", "n1").replace("$room", &room);
    let checked = wait_until(PANELS_WAIT, "data in every dashboard panel", || async {
        let mut empty = Vec::new();
        for q in &queries {
            match prom.query(&fill(&q.expr)).await {
                Ok(series) if !series.is_empty() => {}
                Ok(_) => empty.push(format!("{:?}: {} (no data)", q.panel, q.expr)),
                Err(e) => empty.push(format!("{:?}: {} ({e})", q.panel, q.expr)),
            }
        }
        for (name, query) in &variables {
            let want = if name == "room" { room.as_str() } else { "n1" };
            let values = variable_values(&prom, query).await?;
            if !values.contains(want) {
                empty.push(format!(
                    "variable ${name}: {query} gives {values:?}, not {want}"
                ));
            }
        }
        if empty.is_empty() {
            Ok(())
        } else {
            pace().await;
            Err(format!("{} empty:\n  {}", empty.len(), empty.join("\n  ")))
        }
    })
    .await;
    // What the dashboard and the alerts name is exported by a node or a coordinator (asked
    // after the load has run, once the quality reports have come in).
    let mut metrics = exported(&cluster.node("n1")?.http_get("/metrics").await?);
    let c1 = cluster.coordinators().next().context("a coordinator")?;
    metrics.extend(exported(&c1.http_get("/metrics").await?));
    let mut used = BTreeSet::new();
    for e in queries.iter().map(|q| q.expr.clone()).chain(alert_exprs()?) {
        used.extend(metric_names(&e));
    }
    used.remove("up");
    let unexported: Vec<&String> = used.iter().filter(|m| !metrics.contains(*m)).collect();
    if !unexported.is_empty() {
        eprintln!(
            "metrics the dashboard or the alerts use that no process exports: {unexported:?}"
        );
    }
    let exited = cluster.first_exited();
    cluster.stop();
    checked?;
    ensure!(unexported.is_empty(), "not exported: {unexported:?}");
    ensure!(exited.is_none(), "a process died: {exited:?}");
    let violations = cluster.nats_violations();
    ensure!(violations.is_empty(), "{violations:#?}");
    drop(local);
    drop(subscriber);
    drop(publisher);
    Ok(())
}

/// The values of a `label_values(<selector>, <label>)` variable, as Grafana asks them.
async fn variable_values(prom: &Prometheus, query: &str) -> Result<BTreeSet<String>, String> {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .ok_or(format!("not label_values: {query}"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .ok_or(format!("no label in {query}"))?;
    let series = prom.query(selector.trim()).await?;
    Ok(series
        .iter()
        .filter_map(|s| s["metric"][label.trim()].as_str().map(str::to_owned))
        .collect())
}

/// Paces a poll of Prometheus: each round asks some forty queries.
async fn pace() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        "histogram_quantile(0.9, sum by (le, node) (rate(x_bucket{node=\"$node\"}[1m]))) \
         / on (job) group_left cpus > 0.85 or absent(up{job=\"a\"}) and y offset 5m",
    );
    let want: BTreeSet<String> = ["x_bucket", "cpus", "up", "y"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
}
