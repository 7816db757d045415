use super::*;

#[test]
fn ansi_colours_are_stripped_from_log_lines() {
    assert_eq!(
        strip_ansi("2026 \u{1b}[33m WARN\u{1b}[0m x: y"),
        "2026  WARN x: y"
    );
    assert_eq!(strip_ansi("plain"), "plain");
}

#[test]
fn specs_with_clashing_ids_or_ports_are_refused() {
    // Any existing file stands in for the binaries.
    let exe = std::env::current_exe().unwrap();
    let base = |nodes: Vec<NodeSpec>| {
        let mut s = ClusterSpec::new("/nonexistent").coordinator("c1");
        s.node_bin = exe.clone();
        s.coordinator_bin = exe.clone();
        s.nodes = nodes;
        s
    };
    let ok = base(vec![
        NodeSpec::new("n1", "eu", (50000, 50099)),
        NodeSpec::new("n2", "eu", (50100, 50199)),
    ]);
    assert!(ok.validate().is_ok());
    let same_id = base(vec![
        NodeSpec::new("c1", "eu", (50000, 50099)),
        NodeSpec::new("n2", "eu", (50100, 50199)),
    ]);
    assert!(same_id.validate().is_err());
    let overlap = base(vec![
        NodeSpec::new("n1", "eu", (50000, 50100)),
        NodeSpec::new("n2", "eu", (50100, 50199)),
    ]);
    assert!(overlap.validate().is_err());
    let mut apart = overlap.clone();
    apart.nodes[1].udp_ip = "127.0.0.2".parse().unwrap();
    assert!(apart.validate().is_ok());
    let three = ok.clone().nats_servers(3);
    assert!(three.validate().is_ok());
    assert!(ok.clone().nats_servers(2).validate().is_err());
    let mut taken = three.clone();
    taken.nodes[1].id = "nats3".into();
    assert!(taken.validate().is_err());
    let mut one = three;
    one.nats.servers = 1;
    one.nodes[1].id = "nats3".into();
    assert!(one.validate().is_ok(), "nats3 is free with one server");
    let mut missing = ok;
    missing.node_bin = "/nonexistent/node".into();
    assert!(missing.validate().is_err());
}

#[test]
fn servers_are_named_nats_nats2_nats3() {
    let mut spec = ClusterSpec::new("/nonexistent");
    assert_eq!(spec.nats.server_ids(), ["nats"]);
    spec = spec.nats_servers(3);
    assert_eq!(spec.nats.server_ids(), ["nats", "nats2", "nats3"]);
}
