//! The chaos runner's smoke scenario, as `chaos run smoke --seed 1` runs it, against the
//! test package's own node and coordinator programs: kill -9 of the busiest node, a
//! nats-server kill and restart, and a hostile client, with every invariant judged. It is
//! the CI's chaos smoke (the whole run takes about two minutes).

use chaos::bench::Binaries;
use chaos::runner::{self, scenario::Scenario, RunConfig};

fn config(seed: u64) -> anyhow::Result<RunConfig> {
    Ok(RunConfig {
        scenario: Scenario::named("smoke")?,
        seed,
        duration: None,
        bins: Binaries {
            node_bin: env!("CARGO_BIN_EXE_cluster-node").into(),
            coordinator_bin: env!("CARGO_BIN_EXE_cluster-coordinator").into(),
            nats_bin: "nats-server".into(),
        },
        dir: None,
        udp_base: 20000,
        cluster_file: None,
    })
}

#[test]
fn replaying_the_smoke_seed_gives_the_same_schedule() -> anyhow::Result<()> {
    let a = runner::plan(&config(1)?)?;
    assert_eq!(a, runner::plan(&config(1)?)?);
    assert_ne!(
        a,
        runner::plan(&config(2)?)?,
        "another seed, another schedule"
    );
    let kinds: Vec<&str> = a.iter().map(|s| s.fault.kind()).collect();
    for kind in ["kill_busiest", "restart_nats", "hostile"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_passes_on_the_current_cluster() -> anyhow::Result<()> {
    tests::init_logs();
    let cfg = config(1)?;
    let report = runner::run(&cfg).await?;
    let dir = std::path::PathBuf::from(&report.logs).join("..");
    report.write(&dir)?;
    eprintln!("{}", report.markdown());
    assert!(
        report.passed,
        "chaos smoke failed (report and logs in {}): {}",
        dir.display(),
        report.markdown()
    );
    assert_eq!(report.faults.len(), 3, "every fault injected");
    assert!(report.timeline_svg.is_some());
    Ok(())
}
