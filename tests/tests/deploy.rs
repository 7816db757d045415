//! The deployment artifacts (`deploy/`), checked by the tools that will read them, without a
//! Docker engine or a Kubernetes cluster: `docker-compose config` parses the compose file
//! (Debian's docker-compose 1.29), `kubernetes-validate` checks the manifests against the
//! Kubernetes schemas (PyPI, offline), `promtool` checks the Prometheus configs and rules and
//! runs the alerts' unit tests (Debian's prometheus), `nats-server -t` checks the NATS
//! configs with the users `nats-auth` writes; and every `NODE_*`/`COORD_*` setting the
//! Dockerfile, compose file and manifests set is one the programs read. `scripts/install-deps`
//! installs the tools. The dashboard's and alerts' queries are checked against a live
//! cluster's `/metrics` in `monitoring.rs`.

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Runs a tool to completion; a tool that is not installed is a failure naming the fix.
fn run(cmd: &mut Command) -> Result<Output> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    cmd.output()
        .with_context(|| format!("running {name} (scripts/install-deps installs it)"))
}

use tests::succeed;

/// `docker-compose -f deploy/compose.yaml <args>` with the secrets the file requires.
fn compose(args: &[&str], secrets: bool) -> Command {
    let mut cmd = Command::new("docker-compose");
    cmd.current_dir(root())
        .args(["-f", "deploy/compose.yaml"])
        .args(args)
        .env_remove("API_SECRET")
        .env_remove("ADMIN_TOKEN")
        .env_remove("TURN_SECRET");
    if secrets {
        cmd.env("API_SECRET", "a".repeat(64))
            .env("ADMIN_TOKEN", "b".repeat(64))
            .env("TURN_SECRET", "c".repeat(64))
            .env("PUBLIC_IP", "192.0.2.10");
    }
    cmd
}

#[test]
fn the_compose_file_parses_and_runs_the_whole_cluster() -> Result<()> {
    succeed(&mut compose(&["config", "-q"], true))?;
    let services: BTreeSet<String> = succeed(&mut compose(&["config", "--services"], true))?
        .lines()
        .map(str::to_owned)
        .collect();
    let expected = [
        "nats-auth",
        "nats-1",
        "nats-2",
        "nats-3",
        "nats-exporter-1",
        "nats-exporter-2",
        "nats-exporter-3",
        "coordinator-1",
        "coordinator-2",
        "node-eu-1",
        "node-eu-2",
        "node-us-1",
        "coturn",
        "prometheus",
        "grafana",
    ];
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(services, expected, "services of deploy/compose.yaml");
    // What the file resolves to: each node's own media port published under its own number
    // (it announces that number), its NATS password file, a health check and a drain's time.
    let config = succeed(&mut compose(&["config"], true))?;
    for port in ["50000", "50100", "50200"] {
        for proto in ["udp", "tcp"] {
            assert!(
                config.contains(&format!("published: {port}\n"))
                    || config.contains(&format!("{port}:{port}/{proto}")),
                "media port {port}/{proto} is not published:\n{config}"
            );
        }
    }
    for id in ["eu-1", "eu-2", "us-1"] {
        assert!(config.contains(&format!("/var/lib/media/secrets/{id}.password")));
        assert!(
            config.contains(&format!("--node={id}")),
            "nats-auth writes {id}'s user"
        );
    }
    assert!(
        config.matches("stop_grace_period: 75s").count() == 3,
        "{config}"
    );
    assert!(config.contains("http://127.0.0.1:7880/healthz"));
    Ok(())
}

#[test]
fn the_compose_file_refuses_to_run_without_its_secrets() -> Result<()> {
    let out = run(&mut compose(&["config", "-q"], false))?;
    assert!(!out.status.success(), "config without API_SECRET passed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("openssl rand -hex 32"), "{err}");
    Ok(())
}

/// The `authorization` block `nats-auth` writes for these node ids.
fn auth_block(nodes: &[&str]) -> Result<String> {
    use protocol::nats_auth::{self, User};
    let mut users = vec![User::admin("a"), User::coordinator("c")];
    for id in nodes {
        users.push(User::node(&protocol::NodeId::new(*id)?, "n"));
    }
    Ok(nats_auth::authorization_block(&users))
}

/// `nats-server -t` on `config`, with `auth.conf` next to it at `auth_path`.
fn check_nats(config: &str, auth_path: &str, nodes: &[&str], env: (&str, &str)) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("deploy-nats-{:016x}", rand::random::<u64>()));
    let auth = dir.join(auth_path);
    std::fs::create_dir_all(auth.parent().context("auth dir")?)?;
    std::fs::write(&auth, auth_block(nodes)?)?;
    std::fs::write(dir.join("nats.conf"), config)?;
    let checked = succeed(
        Command::new("nats-server")
            .current_dir(&dir)
            .args(["-t", "-c", "nats.conf"])
            .env(env.0, env.1),
    );
    let _ = std::fs::remove_dir_all(&dir);
    checked.map(|_| ())
}

/// The `nats.conf` of the ConfigMap in deploy/k8s/nats.yaml (a literal block).
fn k8s_nats_conf() -> Result<String> {
    let yaml = read(&deploy("k8s/nats.yaml"))?;
    let mut lines = yaml
        .lines()
        .skip_while(|l| l.trim() != "nats.conf: |")
        .skip(1);
    let first = lines.next().context("nats.conf block")?;
    let indent = first.len() - first.trim_start().len();
    let mut conf = format!("{}\n", &first[indent..]);
    for l in lines.take_while(|l| l.len() - l.trim_start().len() >= indent || l.is_empty()) {
        conf.push_str(l.get(indent..).unwrap_or(""));
        conf.push('\n');
    }
    Ok(conf)
}

#[test]
fn the_nats_configs_of_compose_and_kubernetes_are_valid() -> Result<()> {
    let compose = read(&deploy("nats/compose.conf"))?;
    check_nats(
        &compose,
        "secrets/auth.conf",
        &["eu-1", "eu-2", "us-1"],
        ("NATS_NAME", "nats-1"),
    )?;
    let k8s = k8s_nats_conf()?;
    ensure!(k8s.contains("jetstream"), "{k8s}");
    check_nats(
        &k8s,
        "auth.conf",
        &["node-eu-0", "node-eu-1", "node-us-0"],
        ("POD_NAME", "nats-0"),
    )?;
    // The check can fail: an unknown key is refused.
    let broken = k8s.replace("lame_duck_duration", "lame_duck_durations");
    let refused = check_nats(&broken, "auth.conf", &[], ("POD_NAME", "nats-0"));
    assert!(refused.is_err(), "nats-server -t accepted an unknown key");
    Ok(())
}

/// The resources of deploy/k8s/kustomization.yaml.
fn k8s_resources() -> Result<Vec<String>> {
    let text = read(&deploy("k8s/kustomization.yaml"))?;
    Ok(text
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(str::to_owned))
        .collect())
}

#[test]
fn the_kubernetes_manifests_match_the_schemas() -> Result<()> {
    let resources = k8s_resources()?;
    let mut on_disk: Vec<String> = std::fs::read_dir(deploy("k8s"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = resources.clone();
    listed.sort();
    assert_eq!(listed, on_disk, "every manifest is in kustomization.yaml");
    let out = succeed(
        Command::new("kubernetes-validate")
            .current_dir(deploy("k8s"))
            .args(["--strict", "--no-warn"])
            .args(&resources),
    )?;
    for kind in [
        "statefulset/nats",
        "deployment/coordinator",
        "statefulset/node-eu",
        "statefulset/node-us",
        "secret/media-secrets",
        "secret/nats-auth",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind} ")),
            "{out}"
        );
    }
    // Drain on termination, probes, media ports: what the nodes need, in every region.
    let nodes = read(&deploy("k8s/nodes.yaml"))?;
    for needed in [
        "terminationGracePeriodSeconds: 75",
        "path: /readyz",
        "path: /healthz",
        "containerPort: 50000, protocol: UDP",
        "containerPort: 50000, protocol: TCP",
        "topology.kubernetes.io/region",
    ] {
        assert!(
            nodes.matches(needed).count() >= 2,
            "{needed} in both regions"
        );
    }
    // The validation can fail: a misspelt field is refused.
    let dir = std::env::temp_dir().join(format!("deploy-k8s-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("nodes.yaml");
    std::fs::write(&bad, nodes.replace("hostNetwork:", "hostNetwrk:"))?;
    let refused = run(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&bad))?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!refused.status.success(), "a misspelt field passed");
    Ok(())
}

fn promtool(args: &[&str]) -> Result<String> {
    succeed(
        Command::new("promtool")
            .current_dir(deploy("prometheus"))
            .args(args),
    )
}

#[test]
fn the_prometheus_config_and_rules_are_valid() -> Result<()> {
    let out = promtool(&["check", "config", "prometheus.yml"])?;
    assert!(out.contains("1 rule files found"), "{out}");
    let out = promtool(&["check", "rules", "alerts.yml"])?;
    assert!(out.contains("SUCCESS"), "{out}");
    // Debian's promtool is built without Kubernetes discovery: check the rest of the
    // Kubernetes config (relabelling, rule files) with static targets in its place.
    let k8s = read(&deploy("prometheus/prometheus-kubernetes.yml"))?;
    let sd =
        "    kubernetes_sd_configs:\n      - role: pod\n        namespaces: { names: [media] }";
    ensure!(k8s.matches(sd).count() == 3, "three jobs discover pods");
    let path = deploy(&format!(
        "prometheus/.k8s-check-{:08x}.yml",
        rand::random::<u32>()
    ));
    std::fs::write(
        &path,
        k8s.replace(
            sd,
            "    static_configs:\n      - targets: [\"127.0.0.1:1\"]",
        ),
    )?;
    let checked = promtool(&["check", "config", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    checked?;
    Ok(())
}

/// Every alert of alerts.yml fires in alerts_test.yml, and is expected quiet somewhere too.
#[test]
fn every_alert_fires_and_stays_quiet_in_the_rule_tests() -> Result<()> {
    let out = promtool(&["test", "rules", "alerts_test.yml"])?;
    assert!(out.contains("SUCCESS"), "{out}");
    let alerts: Vec<String> = read(&deploy("prometheus/alerts.yml"))?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_owned))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    let tests = read(&deploy("prometheus/alerts_test.yml"))?;
    let blocks: Vec<&str> = tests.split("- eval_time:").skip(1).collect();
    for alert in &alerts {
        let mine: Vec<&&str> = blocks
            .iter()
            .filter(|b| b.contains(&format!("alertname: {alert}\n")))
            .collect();
        let quiet = mine.iter().filter(|b| b.contains("exp_alerts: []")).count();
        let fires = mine.iter().filter(|b| b.contains("exp_labels:")).count();
        assert!(
            quiet > 0 && fires > 0,
            "{alert}: {quiet} quiet, {fires} firing"
        );
    }
    // The tests can fail: a threshold moved past the synthetic loss fails them.
    let dir = std::env::temp_dir().join(format!("deploy-rules-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    let rules = read(&deploy("prometheus/alerts.yml"))?;
    ensure!(rules.contains(") > 0.05"), "the loss threshold");
    std::fs::write(dir.join("alerts.yml"), rules.replace(") > 0.05", ") > 0.5"))?;
    std::fs::write(dir.join("alerts_test.yml"), tests)?;
    let out =
        run(Command::new("promtool")
            .current_dir(&dir)
            .args(["test", "rules", "alerts_test.yml"]))?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.status.success(),
        "rule tests passed with a broken rule"
    );
    Ok(())
}

/// The `NODE_*`/`COORD_*` names in `text`.
fn settings(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

#[test]
fn every_setting_the_deployments_give_is_one_the_programs_read() -> Result<()> {
    let node_env = settings(&read(&root().join("node/src/config.rs"))?, "NODE_");
    let coord_env = settings(&read(&root().join("coordinator/src/config.rs"))?, "COORD_");
    ensure!(node_env.contains("NODE_UDP_PORT") && coord_env.contains("COORD_KV_REPLICAS"));
    let files = [
        "Dockerfile",
        "compose.yaml",
        "k8s/nodes.yaml",
        "k8s/coordinator.yaml",
    ];
    for file in files {
        let text = read(&deploy(file))?;
        for name in settings(&text, "NODE_") {
            assert!(
                node_env.contains(&name),
                "{file}: {name} is not a node setting"
            );
        }
        for name in settings(&text, "COORD_") {
            assert!(
                coord_env.contains(&name),
                "{file}: {name} is not a coordinator setting"
            );
        }
    }
    // The Dockerfile builds and copies binaries that exist.
    let docker = read(&deploy("Dockerfile"))?;
    let bins =
        read(&root().join("node/Cargo.toml"))? + &read(&root().join("coordinator/Cargo.toml"))?;
    for bin in ["node", "coordinator", "nats-auth"] {
        assert!(
            bins.contains(&format!("name = \"{bin}\"")),
            "{bin} is a binary"
        );
        assert!(
            docker.contains(&format!("target/release/{bin}")),
            "the image has {bin}"
        );
    }
    for target in ["AS node", "AS coordinator"] {
        assert!(docker.contains(target), "{target}");
    }
    if !docker.contains("cargo build --release --locked -p node -p coordinator") {
        bail!("the Dockerfile does not build both programs");
    }
    Ok(())
}
