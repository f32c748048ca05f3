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
    let policies = kvsync::check::policies_for(&args, &binding, kube.as_ref()).await?;
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
