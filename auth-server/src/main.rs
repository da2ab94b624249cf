//! The `auth-server` command: serve (the default), migrate, add users, print the OpenAPI
//! document.

use anyhow::{Context, bail};
use auth_server::app;
use auth_server::auth::clock::SystemClock;
use auth_server::auth::users::UserInput;
use auth_server::settings::{ServeSettings, StorageSettings};
use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::sync::Arc;

/// Keygate authentication server.
///
/// Without a subcommand it serves: `auth-server` on a fresh machine starts a working service
/// on 127.0.0.1:8080 with a SQLite database and a generated signing key in ./data, and the
/// tenant `default`. Create the first user with `auth-server user add`. Every flag can also be
/// set through the environment variable shown with it.
#[derive(Debug, Parser)]
#[command(
    name = "auth-server",
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    storage: StorageSettings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve(Box<ServeSettings>),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage signing keys of the runtime configuration.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print the OpenAPI document.
    Openapi {
        /// Prefix of the API routes in the document.
        #[arg(long, env = "KEYGATE_BASE_PATH", default_value = "/api/v1")]
        base_path: String,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant. Its users, identities and policy (runtime configuration
    /// `tenants.<id>`) are its own.
    Add {
        /// Tenant id: 1-63 of a-z, 0-9 and '-', starting with a letter.
        #[arg(long)]
        id: String,
        /// Name shown to people.
        #[arg(long)]
        display_name: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Generate a signing key and print it as one `signing_keys` entry (JSON) of the runtime
    /// configuration, with its `kid` set to the key's RFC 7638 thumbprint.
    Generate {
        /// ES256, EdDSA or RS256.
        #[arg(long, default_value = "ES256")]
        alg: keygate_config::SigningAlgorithm,
        /// Publish the key now but sign with it only after this many seconds (rotation:
        /// longer than the configuration's propagation delay to every replica).
        #[arg(long, default_value_t = 0)]
        activate_in: i64,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user and print its id. The password is read from the first line of
    /// standard input: `printf '%s\n' "$PW" | auth-server user add --username alice --password-stdin`.
    Add {
        /// Username (letters, digits, '.', '_', '-'; stored lowercase).
        #[arg(long)]
        username: String,
        /// Email address.
        #[arg(long)]
        email: Option<String>,
        /// Phone number in E.164 form (+14155550123).
        #[arg(long)]
        phone: Option<String>,
        /// Tenant id.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Role to grant (repeatable): admin.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Read the password from standard input (required: passwords never go on the
        /// command line).
        #[arg(long)]
        password_stdin: bool,
        /// Require a password change at first sign-in.
        #[arg(long)]
        must_change_password: bool,
    },
}

/// A domain error as one line for the terminal, with every field violation.
fn describe(e: auth_server::auth::error::AuthError) -> String {
    match e {
        auth_server::auth::error::AuthError::Validation(v) => v
            .iter()
            .map(|f| format!("{}: {}", f.field, f.description))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// Logs (and, for `serve`, traces when the `OTEL_*` variables ask for them).
fn init_telemetry(
    format: keygate_telemetry::LogFormat,
) -> anyhow::Result<keygate_telemetry::Telemetry> {
    keygate_telemetry::init(
        &keygate_telemetry::Options {
            service_name: "keygate-auth-server",
            service_version: env!("CARGO_PKG_VERSION"),
            format,
            default_filter: "info,sqlx=warn",
        },
        Some(auth_server::metrics::span_timings()),
    )
}

/// `serve`'s settings alone, for when no subcommand is given.
#[derive(Debug, Parser)]
struct ServeOnly {
    #[command(flatten)]
    settings: ServeSettings,
}

fn parse_cli() -> (StorageSettings, Command) {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or_else(|| {
        // No subcommand: serve, with every setting from the environment or its default.
        Command::Serve(Box::new(ServeOnly::parse_from(["auth-server"]).settings))
    });
    (cli.storage, command)
}

fn main() -> anyhow::Result<()> {
    auth_server::auth::jwt_crypto::install();
    let (storage, command) = parse_cli();
    let workers = match &command {
        Command::Serve(settings) => settings.effective_worker_threads(),
        _ => 1,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(storage, command))
}

async fn run(storage: StorageSettings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(settings) => {
            let telemetry = init_telemetry(settings.log_format)?;
            let served = app::serve(storage, *settings).await;
            telemetry.shutdown().await;
            served?;
        }
        Command::Migrate => {
            let _telemetry = init_telemetry(keygate_telemetry::LogFormat::Text)?;
            let store = auth_server::store::SqlStore::open(&storage.effective_database_url())
                .await
                .context("migrate")?;
            store.close().await;
            eprintln!("migrations applied");
        }
        Command::User(UserCommand::Add {
            username,
            email,
            phone,
            tenant,
            roles,
            password_stdin,
            must_change_password,
        }) => {
            let _telemetry = init_telemetry(keygate_telemetry::LogFormat::Text)?;
            if !password_stdin {
                bail!("--password-stdin is required: pipe the password on standard input");
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password")?;
            let password = line.trim_end_matches(['\r', '\n']).to_owned();
            let opened = app::open(&storage).await?;
            let (auth, _) =
                app::service(opened, None, String::new(), Arc::new(SystemClock)).await?;
            let user = auth
                .create_user(
                    &tenant,
                    UserInput {
                        username,
                        email,
                        phone,
                        password: Some(password),
                        roles,
                        must_change_password,
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("invalid user: {}", describe(e)))?;
            auth.store.close().await;
            println!("{}", user.id);
        }
        Command::Tenant(TenantCommand::Add { id, display_name }) => {
            let _telemetry = init_telemetry(keygate_telemetry::LogFormat::Text)?;
            let opened = app::open(&storage).await?;
            let (auth, _) =
                app::service(opened, None, String::new(), Arc::new(SystemClock)).await?;
            let tenant = auth
                .create_tenant(&id, &display_name)
                .await
                .map_err(|e| anyhow::anyhow!("{}", describe(e)))?;
            auth.store.close().await;
            println!("{}", tenant.id);
        }
        Command::Key(KeyCommand::Generate { alg, activate_in }) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let activates = (activate_in > 0).then_some(now + activate_in);
            let key = auth_server::auth::keys::generate_config(alg, activates, None)?;
            println!("{}", serde_json::to_string_pretty(&key)?);
        }
        Command::Openapi { base_path } => {
            let base = auth_server::settings::normalize_base_path(&base_path);
            println!("{}", auth_server::http::openapi(&base).to_pretty_json()?);
        }
    }
    Ok(())
}
