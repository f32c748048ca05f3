use std::process::ExitCode;

use clap::Parser;
use std::sync::Arc;

use kvsync::cli::{CheckArgs, Cli, Command, DevVaultArgs, LogFormat, RunArgs, VaultArgs};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Crd { kind } => {
            match kind {
                kvsync::cli::CrdKind::Vaultsecretbindings => print!("{}", kvsync::crd::crd_yaml()),
                kvsync::cli::CrdKind::Vaultaccesspolicies => {
                    print!("{}", kvsync::crd::policy::crd_yaml())
                }
                kvsync::cli::CrdKind::Clustervaultsecretbindings => {
                    print!("{}", kvsync::crd::cluster::crd_yaml())
                }
            }
            ExitCode::SUCCESS
        }
        Command::Run(args) => match run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kvsync run: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check(args) => match check(args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("kvsync check: {e}");
                ExitCode::from(2)
            }
        },
        Command::DevVault(args) => match dev_vault(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kvsync dev-vault: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn azure_access(args: &VaultArgs) -> Result<kvsync::azure::AzureAccess, String> {
    use kvsync::azure::{
        AzureAccess, hosts::VaultHostPolicy, http, identity::AzureEnvironment, retry::RetryPolicy,
    };
    let roots = match &args.ca_file {
        Some(path) => http::load_ca_file(path).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let client = http::build_client(&roots).map_err(|e| e.to_string())?;
    let env = AzureEnvironment::from_env();
    if let Err(e) = env.check() {
        // Not fatal: bindings with an identity of their own still work; those
        // that use the operator's own identity report this as their condition.
        tracing::error!(error = %e, "the operator's Azure environment is invalid");
    }
    Ok(AzureAccess::new(
        client,
        VaultHostPolicy::new(args.allowed_vault_hosts.clone()),
        env,
        RetryPolicy::default(),
    ))
}

async fn run(args: RunArgs) -> Result<(), String> {
    let metrics = Arc::new(kvsync::metrics::Metrics::default());
    let observed = metrics.clone();
    let access = Arc::new(azure_access(&args.vault)?.with_observer(Arc::new(
        move |vault, op, status| observed.vault_request(vault, op.label(), status),
    )));
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API (KUBECONFIG or in-cluster): {e}"))?;
    let health = Arc::new(kvsync::server::Health::default());
    let addr = args.metrics_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on --metrics-addr {addr}: {e}"))?;
    let server = tokio::spawn(kvsync::server::serve(
        listener,
        health.clone(),
        metrics.clone(),
    ));
    let hash_key_namespace = args
        .hash_key_namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_string());
    let settings = kvsync::reconcile::Settings {
        default_refresh: args.vault.default_refresh_interval,
        rollout_window: args.rollout_window,
        force_sync_cooldown: args.force_sync_cooldown,
        status_heartbeat: args.status_heartbeat,
        concurrency: args.concurrency,
        access_policy: args.access_policy,
        hash_key: kvsync::hashkey::load_or_create(&client, &hash_key_namespace)
            .await
            .map_err(|e| e.to_string())?,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shard = args.shard.unwrap_or_default();
    // Leader election: its own stop signal, sent after the controllers have
    // stopped writing, so the Lease is released last and a standby takes
    // over in seconds.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (leader, election) = if args.leader_elect {
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or("--leader-elect needs POD_NAMESPACE (the namespace of the Lease): set it from the pod's metadata.namespace")?;
        let cfg = kvsync::leader::LeaderConfig {
            namespace,
            lease_name: shard.lease_name("kvsync"),
            identity: kvsync::leader::LeaderConfig::identity_from_env(),
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
        };
        tracing::info!(lease = %cfg.lease_name, namespace = %cfg.namespace, identity = %cfg.identity, "leader election");
        let mut rx = release_rx.clone();
        let (leader, handle) = kvsync::leader::start(client.clone(), cfg, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })
        .map_err(|e| e.to_string())?;
        let role_health = health.clone();
        let mut role_rx = leader.clone();
        tokio::spawn(async move {
            loop {
                let role = kvsync::leader::Role::from(*role_rx.borrow_and_update());
                tracing::info!(%role, "leader election");
                role_health.set_role(if *role_rx.borrow() {
                    "leader"
                } else {
                    "standby"
                });
                if role_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        (Some(leader), Some(handle))
    } else {
        (None, None)
    };
    let replica = kvsync::controller::Replica {
        namespace: None,
        leader,
        shard,
    };
    let namespaces: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    // Every controller registers its watches with `health` here, before any
    // runs: /readyz waits for all of them. They share one poller per
    // (vault, identity).
    let shared = kvsync::controller::Shared::start();
    let controllers: Vec<_> = namespaces
        .into_iter()
        .map(|ns| {
            let mut rx = stop_rx.clone();
            let shutdown = async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            kvsync::controller::run(
                client.clone(),
                access.clone(),
                settings.clone(),
                metrics.clone(),
                &health,
                kvsync::controller::Replica {
                    namespace: ns,
                    ..replica.clone()
                },
                &shared,
                shutdown,
            )
        })
        .collect();
    // ClusterVaultSecretBindings are fanned out by one replica: the leader
    // of shard 0 (the namespaces' bindings it writes are then sharded).
    let mut controllers: Vec<_> = controllers
        .into_iter()
        .map(futures::FutureExt::boxed)
        .collect();
    if shard.index == 0 {
        let mut rx = stop_rx.clone();
        let scope = (!args.namespaces.is_empty()).then(|| args.namespaces.clone());
        controllers.push(futures::FutureExt::boxed(kvsync::cluster::run(
            client.clone(),
            scope,
            replica.leader.clone(),
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            },
        )));
    }
    tracing::info!(metrics_addr = %addr, "kvsync controller starting");
    let all = futures::future::join_all(controllers);
    tokio::pin!(all);
    tokio::select! {
        _ = &mut all => {}
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            health.set_stopping();
            let _ = stop_tx.send(true);
            all.await;
        }
    }
    // Writes have stopped: give the Lease back.
    let _ = release_tx.send(true);
    if let Some(handle) = election {
        let _ = handle.await;
    }
    server.abort();
    Ok(())
}

async fn check(args: CheckArgs) -> Result<bool, String> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let kind = serde_yaml::from_str::<serde_yaml::Value>(&text)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string));
    if let Some(other) = kind.filter(|k| k != "VaultSecretBinding") {
        return Err(format!(
            "{} is a {other}: kvsync check reads one VaultSecretBinding (for a ClusterVaultSecretBinding, check the binding it keeps in a namespace: kubectl get vsb NAME -n NS -o yaml)",
            args.file.display()
        ));
    }
    let mut binding: kvsync::crd::VaultSecretBinding = serde_yaml::from_str(&text)
        .map_err(|e| format!("{} is not a VaultSecretBinding: {e}", args.file.display()))?;
    if let Some(ns) = &args.namespace {
        binding.metadata.namespace = Some(ns.clone());
    }
    let access = azure_access(&args.vault)?;
    let kube = kube::Client::try_default().await.ok();
    let policies = check_policies(&args, &binding, kube.as_ref()).await?;
    let report = kvsync::check::check(
        &binding,
        &access,
        kube.as_ref(),
        args.vault.default_refresh_interval,
        policies.as_ref(),
    )
    .await;
    print!("{}", report.to_text());
    Ok(report.ok())
}

/// The VaultAccessPolicies and namespace labels `check` decides with: from
/// `--policies`/`--namespace-labels`, else from the cluster; `None` when
/// neither is there (no decision is made, and `check` says so).
async fn check_policies(
    args: &CheckArgs,
    binding: &kvsync::crd::VaultSecretBinding,
    kube: Option<&kube::Client>,
) -> Result<Option<kvsync::check::PolicyInput>, String> {
    use kube::ResourceExt;
    use kvsync::crd::policy::VaultAccessPolicy;
    use kvsync::policy::{Policies, Policy};
    let ns = binding.namespace().unwrap_or_else(|| "default".into());
    let from_file = match &args.policies {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut all = Vec::new();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let p =
                    <VaultAccessPolicy as serde::Deserialize>::deserialize(doc).map_err(|e| {
                        format!(
                            "{} holds something that is not a VaultAccessPolicy: {e}",
                            path.display()
                        )
                    })?;
                all.push(p);
            }
            Some(all)
        }
        None => None,
    };
    let labels: Option<std::collections::BTreeMap<String, String>> = match &args.namespace_labels {
        Some(text) => Some(
            text.split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("--namespace-labels: {kv:?} is not k=v"))
                })
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    let (found, labels) = match (from_file, labels, kube) {
        (Some(p), Some(l), _) => (p, l),
        (p, l, Some(client)) => {
            let found = match p {
                Some(p) => p,
                None => {
                    kube::Api::<VaultAccessPolicy>::all(client.clone())
                        .list(&Default::default())
                        .await
                        .map_err(|e| {
                            format!("cannot list VaultAccessPolicies: {e} (or give --policies)")
                        })?
                        .items
                }
            };
            let labels = match l {
                Some(l) => l,
                None => kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                    .get_metadata(&ns)
                    .await
                    .map_err(|e| {
                        format!("cannot read namespace {ns}: {e} (or give --namespace-labels)")
                    })?
                    .labels()
                    .clone(),
            };
            (found, labels)
        }
        (Some(p), None, None) => (p, Default::default()),
        (None, _, None) => {
            println!("no cluster and no --policies: VaultAccessPolicies are not checked");
            return Ok(None);
        }
    };
    Ok(Some(kvsync::check::PolicyInput {
        policies: Policies::new(
            found
                .into_iter()
                .map(|p| Policy {
                    name: p.name_any(),
                    spec: p.spec,
                })
                .collect(),
        ),
        labels,
        mode: args.access_policy,
    }))
}

async fn dev_vault(args: DevVaultArgs) -> Result<(), String> {
    use kvsync::devvault;
    let seed = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read seed file {}: {e}", path.display()))?;
            devvault::Seed::from_yaml(&text)?
        }
        None => devvault::Seed::default(),
    };
    let secrets = seed.secrets.len();
    let vault = devvault::start(devvault::DevVaultConfig {
        addr: args.addr,
        seed,
        token_lifetime: args.token_lifetime,
    })
    .await
    .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    std::fs::write(&args.ca_out, vault.ca_pem())
        .map_err(|e| format!("cannot write {}: {e}", args.ca_out.display()))?;
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| devvault::default_token_file(&args.ca_out));
    devvault::write_federated_token(&token_file, "system:serviceaccount:kvsync:kvsync")
        .map_err(|e| format!("cannot write {}: {e}", token_file.display()))?;
    let ca = std::fs::canonicalize(&args.ca_out).unwrap_or(args.ca_out.clone());
    let token = std::fs::canonicalize(&token_file).unwrap_or(token_file);
    print!("{}", devvault::export_lines(&vault.url(), &ca, &token));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(url = %vault.url(), secrets, "dev vault serving");
    shutdown_signal().await;
    vault.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
