//! Starting the cluster and restarting its processes.

use super::proc::launch;
use super::*;

impl Cluster {
    /// Starts the nats-server(s), then the coordinators, then the nodes, and waits until the
    /// cluster is ready (bounded by the spec's timeouts).
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        spec.validate()?;
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let mut cluster = Cluster {
            dir: spec.dir.clone(),
            servers_url: String::new(),
            nats_url: String::new(),
            admin_password: format!("{:032x}", rand::random::<u128>()),
            api_secret: spec.api_secret.clone(),
            procs: Vec::new(),
            stopped: false,
            died: Vec::new(),
        };
        if let Err(e) = cluster.launch(&spec).await {
            let tails = cluster.log_tails(8);
            cluster.stop();
            return Err(e.context(format!(
                "starting the cluster; logs in {}\n{tails}",
                spec.dir.display()
            )));
        }
        Ok(cluster)
    }

    /// Starts the nats-server(s) and waits (bounded by the spec's `nats_timeout`) until each
    /// greets with JetStream and, with several, until their JetStream cluster answers an
    /// account-info request (it has a meta leader).
    async fn launch_nats(&mut self, spec: &ClusterSpec) -> Result<()> {
        let n = spec.nats.servers;
        let ids = spec.nats.server_ids();
        let mut client_ports = Vec::with_capacity(n);
        for i in 0..n {
            client_ports.push(match (i, spec.nats.port) {
                (0, Some(p)) => p,
                _ => bench::free_port()?,
            });
        }
        let route_ports = if n > 1 {
            (0..n)
                .map(|_| bench::free_port())
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let js = self.dir.join("jetstream");
        std::fs::create_dir_all(&js)?;
        let auth_conf = self.write_auth(spec)?;
        for (i, id) in ids.iter().enumerate() {
            // One server keeps the store directly in `jetstream/`, as it always has.
            let store = if n > 1 { js.join(id) } else { js.clone() };
            let mut args: Vec<String> = vec![
                "-c".into(),
                auth_conf.to_string_lossy().into_owned(),
                "-js".into(),
                "-sd".into(),
                store.to_string_lossy().into_owned(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                client_ports[i].to_string(),
            ];
            if n > 1 {
                let routes: Vec<String> = route_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                    .collect();
                args.extend([
                    "-n".into(),
                    id.clone(),
                    "--cluster_name".into(),
                    "chaos".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", route_ports[i]),
                    "--routes".into(),
                    routes.join(","),
                ]);
            }
            let monitor_port = if spec.nats.monitor {
                let p = bench::free_port()?;
                args.extend(["-m".into(), p.to_string()]);
                Some(p)
            } else {
                None
            };
            args.extend(spec.nats.extra_args.iter().cloned());
            self.spawn(
                id,
                Role::Nats,
                None,
                client_ports[i],
                &spec.nats.bin,
                &args,
                spec,
            )?;
            if let Some(p) = self.procs.last_mut() {
                p.monitor_port = monitor_port;
            }
        }
        self.servers_url = client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        self.nats_url = client_ports
            .iter()
            .map(|p| {
                format!(
                    "nats://{}:{}@127.0.0.1:{p}",
                    nats_auth::ADMIN_USER,
                    self.admin_password
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let deadline = Instant::now() + spec.nats_timeout;
        for (id, port) in ids.iter().zip(&client_ports) {
            loop {
                if let Some(dead) = self.first_exited() {
                    bail!("{dead} exited during startup");
                }
                match probe_nats(*port).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => {
                        bail!("{id} not ready within {:?}: {e}", spec.nats_timeout)
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        if n > 1 {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(left, self.wait_jetstream_meta_leader())
                .await
                .map_err(|_| {
                    anyhow!(
                        "the JetStream cluster elected no meta leader within {:?}",
                        spec.nats_timeout
                    )
                })??;
        }
        Ok(())
    }

    /// Where the password of NATS user `user` lives (a node's user is its id).
    fn secret_path(&self, user: &str) -> PathBuf {
        self.dir
            .join("secrets")
            .join(format!("{}.password", protocol::cluster::token(user)))
    }

    /// Writes the servers' authorization config (admin, the coordinators, one user per
    /// node) and every process's password file; returns the config's path.
    fn write_auth(&self, spec: &ClusterSpec) -> Result<PathBuf> {
        std::fs::create_dir_all(self.dir.join("secrets"))?;
        let secret = |user: &str| -> Result<String> {
            let password = format!("{:032x}", rand::random::<u128>());
            let path = self.secret_path(user);
            std::fs::write(&path, &password)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(password)
        };
        let mut users = vec![
            User::admin(&self.admin_password),
            User::coordinator(secret(nats_auth::COORDINATOR_USER)?),
        ];
        for n in &spec.nodes {
            let id = protocol::NodeId::new(n.id.as_str())
                .map_err(|e| anyhow!("node id {:?}: {e}", n.id))?;
            users.push(User::node(&id, secret(&n.id)?));
        }
        let path = self.dir.join("nats-auth.conf");
        std::fs::write(&path, nats_auth::authorization_block(&users))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Until JetStream answers an account-info request (in a cluster only the meta leader
    /// does). Unbounded: the caller bounds it.
    async fn wait_jetstream_meta_leader(&self) -> Result<()> {
        let client = self.nats_client().await?;
        let js = async_nats::jetstream::new(client);
        loop {
            let asked = tokio::time::timeout(Duration::from_secs(2), js.query_account()).await;
            if let Ok(Ok(_)) = asked {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn launch(&mut self, spec: &ClusterSpec) -> Result<()> {
        self.launch_nats(spec).await?;

        let replicas = spec.nats.servers.to_string();
        for id in &spec.coordinators {
            let port = bench::free_port()?;
            let mut a: Vec<String> = [
                "--id",
                id,
                "--nats-url",
                &self.servers_url,
                "--nats-password-file",
                &self
                    .secret_path(nats_auth::COORDINATOR_USER)
                    .to_string_lossy(),
                "--http-listen",
                &format!("127.0.0.1:{port}"),
                "--admin-token",
                &spec.admin_token,
                "--api-key",
                super::API_KEY,
                "--api-secret",
                &spec.api_secret,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            // The room directory gets a copy on every server, unless the caller chose.
            let chosen = spec
                .coordinator_flags
                .iter()
                .any(|f| f.starts_with("--kv-replicas"));
            if spec.nats.servers > 1 && !chosen {
                a.extend(["--kv-replicas".to_owned(), replicas.clone()]);
            }
            a.extend(spec.coordinator_flags.iter().cloned());
            self.spawn(
                id,
                Role::Coordinator,
                None,
                port,
                &spec.coordinator_bin,
                &a,
                spec,
            )?;
        }
        for n in &spec.nodes {
            let port = bench::free_port()?;
            let mut a: Vec<String> = vec![
                "--node-id".into(),
                n.id.clone(),
                "--region".into(),
                n.region.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--udp-ip".into(),
                n.udp_ip.to_string(),
            ];
            if let Some(ip) = n.public_ip {
                a.extend(["--public-ip".into(), ip.to_string()]);
            }
            a.extend([
                "--udp-ports".into(),
                format!("{}-{}", n.udp_ports.0, n.udp_ports.1),
                "--nats-url".into(),
                n.nats_url
                    .clone()
                    .unwrap_or_else(|| self.servers_url.clone()),
                "--nats-password-file".into(),
                self.secret_path(&n.id).to_string_lossy().into_owned(),
                "--api-secret".into(),
                spec.api_secret.clone(),
                "--admin-token".into(),
                node_admin_token(&spec.api_secret),
            ]);
            a.extend(n.extra_args.iter().cloned());
            let region = Some(n.region.clone());
            self.spawn(&n.id, Role::Node, region, port, &spec.node_bin, &a, spec)?;
        }

        let deadline = Instant::now() + spec.ready_timeout;
        loop {
            if let Some(dead) = self.first_exited() {
                bail!("{dead} exited during startup");
            }
            let waiting = self.not_ready().await;
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "not ready within {:?}: {}",
                    spec.ready_timeout,
                    waiting.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &mut self,
        id: &str,
        role: Role,
        region: Option<String>,
        port: u16,
        program: &Path,
        args: &[String],
        spec: &ClusterSpec,
    ) -> Result<()> {
        let log = self.dir.join(format!("{id}.log"));
        let child = launch(id, program, args, &spec.child_log, &log)?;
        self.procs.push(Proc {
            id: id.to_owned(),
            role,
            region,
            port,
            monitor_port: None,
            child,
            log,
            exit: None,
            expected_exit: false,
            program: program.to_owned(),
            args: args.to_vec(),
            child_log: spec.child_log.clone(),
        });
        Ok(())
    }

    /// Starts an exited process again, with the same id, ports, store and flags (its log
    /// grows on), and waits (bounded by `timeout`) until it is ready: a coordinator or node
    /// answers `/readyz` with 200, a nats-server greets with JetStream (as
    /// [`Cluster::restart_nats_server`]).
    pub async fn restart(&mut self, id: &str, timeout: Duration) -> Result<()> {
        let (port, role) = self.relaunch(id)?;
        let deadline = Instant::now() + timeout;
        loop {
            let ready = match role {
                Role::Nats => probe_nats(port).await.map_err(|e| format!("{e:#}")),
                _ => bench::http_get(port, "/readyz")
                    .await
                    .map(drop)
                    .map_err(|e| format!("/readyz {e:#}")),
            };
            let why = match ready {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if let Some(status) = self.proc_mut(id)?.exited() {
                bail!("{id} exited again after its restart ({status})");
            }
            if Instant::now() >= deadline {
                bail!("{id} not ready within {timeout:?} of its restart: {why}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the exited nats-server `id` (`nats`, `nats2`, `nats3`) again on its ports, with
    /// its store and flags, and waits (bounded by `timeout`) until it greets with JetStream.
    /// A cluster server then rejoins the routes and catches its streams up by itself; a
    /// caller that needs it current asks JetStream (stream info lists each replica).
    pub async fn restart_nats_server(&mut self, id: &str, timeout: Duration) -> Result<()> {
        let role = self.proc_mut(id)?.role;
        if role != Role::Nats {
            bail!("{id} is no nats-server");
        }
        self.restart(id, timeout).await
    }

    /// Starts the exited process `id` again as it was started: (its port, its role).
    fn relaunch(&mut self, id: &str) -> Result<(u16, Role)> {
        let p = self.proc_mut(id)?;
        if p.exited().is_none() {
            bail!("{id} is still running");
        }
        p.child = launch(id, &p.program, &p.args, &p.child_log, &p.log)?;
        p.exit = None;
        p.expected_exit = false;
        Ok((p.port, p.role))
    }
}
