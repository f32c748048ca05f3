use std::process::ExitCode;

use clap::Parser;

use kvsync::cli::{CheckArgs, Cli, Command, DevVaultArgs, LogFormat};

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
        Command::Run(args) => match kvsync::operator::run(args).await {
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
    let access = kvsync::operator::azure_access(&args.vault)?;
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
    kvsync::operator::shutdown_signal().await;
    vault.stop().await;
    Ok(())
}
