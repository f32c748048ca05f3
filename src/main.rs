use std::process::ExitCode;

use clap::Parser;
use kvsync::cli::{Cli, Command, DevVaultArgs, LogFormat};

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
        Command::Crd => {
            print!("{}", kvsync::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::DevVault(args) => match dev_vault(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kvsync dev-vault: {e}");
                ExitCode::FAILURE
            }
        },
    }
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
