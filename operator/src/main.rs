//! The `auth-operator` command. It will reconcile Keygate custom resources into the server's
//! runtime configuration; until that lands it explains its role and exits.

use clap::Parser;

/// Keygate operator (not yet reconciling).
///
/// The operator will watch the Keygate custom resources (OidcProvider, SigningKey,
/// RateLimitPolicy and the policy kinds), generate signing-key material into Secrets, rotate
/// keys on schedule with a pre-publish window so that no verifier ever sees an unknown key,
/// register external OIDC issuers, and render one Secret holding the runtime configuration
/// that every auth-server replica mounts and hot-reloads. Until then, write that
/// configuration by hand (see the README's configuration reference) and pass it to
/// `auth-server --config`.
#[derive(Debug, Parser)]
#[command(name = "auth-operator", version, about, long_about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!(
        "auth-operator does not reconcile yet: see `auth-operator --help` for what it will do, \
         and write the runtime configuration by hand meanwhile"
    );
    std::process::exit(2);
}
