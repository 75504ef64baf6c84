//! `custodian nats …`: the bus's identities, nats-server's configuration rendered from the
//! permission table (`custodian_bus::trust`), and the provisioning of the stream and buckets.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use custodian_bus::trust::{self, Identity, Operator, Service};

use crate::config::Config;
use crate::services::{connect_client, stream_settings};

#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    /// NATS identities (nkeys): one per service, per view, per operator role.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Render nats-server's `tls` and `authorization` blocks from the permission table, for
    /// the identities whose public keys are in the credentials folder.
    ServerConfig(ServerConfigArgs),
    /// Create the stream and the KV buckets, as the provisioner (the services may not).
    Provision,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Make an nkey for one identity: writes `<name>.nk` (the seed, 0600) and `<name>.pub`
    /// in the credentials folder, and prints the public key.
    New(NewIdentityArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// A service: consent, gateway, sweeper, vault, audit, incident.
    #[arg(long)]
    service: Option<String>,
    /// A view, by its view id.
    #[arg(long)]
    view: Option<String>,
    /// An operator role at the command line: ops or dpo.
    #[arg(long)]
    operator: Option<String>,
    /// The identity that creates the stream and buckets.
    #[arg(long)]
    provisioner: bool,
    /// Every service, both operator roles and the provisioner (skips those that exist).
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
pub struct NewIdentityArgs {
    #[command(flatten)]
    who: Who,
    /// The credentials folder (default: `nats.credentials_dir`).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServerConfigArgs {
    /// The credentials folder whose `*.pub` files name the users (default: `nats.credentials_dir`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Instead of public keys from files, refer to `$NKEY_<NAME>` variables of the server's
    /// environment (a Kubernetes Secret), for the fixed identities and these views.
    #[arg(long)]
    env_keys: bool,
    /// Views to include with `--env-keys`.
    #[arg(long = "view")]
    views: Vec<String>,
    /// The server's certificate, its key and the CA of its clients (all three turn TLS on).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<String>,
    #[arg(long)]
    tls_key: Option<String>,
    #[arg(long)]
    tls_ca: Option<String>,
    /// Require a client certificate signed by `--tls-ca` (mTLS).
    #[arg(long)]
    verify_clients: bool,
    /// Write here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub async fn nats(config: &Config, cmd: NatsCommand) -> anyhow::Result<()> {
    match cmd {
        NatsCommand::Identity(IdentityCommand::New(args)) => {
            let dir = folder(config, args.dir.as_deref())?;
            for identity in who(&args.who)? {
                let (public, written) = new_identity(&dir, &identity, args.who.all)?;
                if written {
                    println!("{identity}: {public} (seed in {})", dir.join(format!("{identity}.nk")).display());
                }
            }
            println!("render the server's configuration again: custodian nats server-config");
            Ok(())
        }
        NatsCommand::ServerConfig(args) => {
            let users = if args.env_keys {
                let mut identities = Identity::fixed();
                for view in &args.views {
                    identities.push(Identity::view(view)?);
                }
                identities.into_iter().map(env_user).collect()
            } else {
                users_in(&folder(config, args.dir.as_deref())?)?
            };
            let tls = match (args.tls_cert, args.tls_key, args.tls_ca) {
                (Some(cert_file), Some(key_file), Some(ca_file)) => {
                    Some(trust::ServerTls { cert_file, key_file, ca_file, verify: args.verify_clients })
                }
                _ => None,
            };
            let rendered = trust::render_server_config(&users, tls.as_ref());
            match args.output {
                Some(path) => {
                    std::fs::write(&path, rendered).with_context(|| format!("cannot write {}", path.display()))
                }
                None => Ok(std::io::stdout().write_all(rendered.as_bytes())?),
            }
        }
        NatsCommand::Provision => {
            let client = connect_client(config, &Identity::Provisioner, "custodian-provision").await?;
            let bus = custodian_bus::Bus::new(client, &stream_settings(config)).await?;
            custodian_bus::provision(&bus, std::time::Duration::from_secs(config.sweeper.lease_ttl_secs)).await?;
            println!("stream {} and the KV buckets are in place", custodian_events::subjects::STREAM);
            Ok(())
        }
    }
}

fn folder(config: &Config, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| config.nats.credentials_dir.clone())
        .context("no credentials folder: pass --dir or set nats.credentials_dir (CUSTODIAN_NATS__CREDENTIALS_DIR)")
}

fn who(who: &Who) -> anyhow::Result<Vec<Identity>> {
    if who.all {
        return Ok(Identity::fixed());
    }
    if who.provisioner {
        return Ok(vec![Identity::Provisioner]);
    }
    if let Some(view) = &who.view {
        return Ok(vec![Identity::view(view)?]);
    }
    if let Some(name) = &who.service {
        let service = Service::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .with_context(|| format!("unknown service {name:?} (consent, gateway, sweeper, vault, audit, incident)"))?;
        return Ok(vec![Identity::Service(service)]);
    }
    match who.operator.as_deref() {
        Some("ops") => Ok(vec![Identity::Operator(Operator::Ops)]),
        Some("dpo") => Ok(vec![Identity::Operator(Operator::Dpo)]),
        Some(other) => bail!("unknown operator role {other:?} (ops or dpo)"),
        None => bail!("say whose identity: --service, --view, --operator, --provisioner or --all"),
    }
}

/// Writes a new seed and public key for `identity` in `dir`; an existing one is refused
/// (or kept, with `keep_existing`) so a running deployment's key is never overwritten.
pub fn new_identity(dir: &Path, identity: &Identity, keep_existing: bool) -> anyhow::Result<(String, bool)> {
    let seed_file = dir.join(format!("{identity}.nk"));
    let public_file = dir.join(format!("{identity}.pub"));
    if seed_file.exists() {
        if keep_existing {
            let public = std::fs::read_to_string(&public_file).unwrap_or_default();
            return Ok((public.trim().to_owned(), false));
        }
        bail!("{} exists: remove it first to replace {identity}'s key", seed_file.display());
    }
    create_private_dir(dir)?;
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().map_err(|e| anyhow::anyhow!("cannot make an nkey: {e}"))?;
    write_private(&seed_file, &seed)?;
    std::fs::write(&public_file, format!("{}\n", pair.public_key()))
        .with_context(|| format!("cannot write {}", public_file.display()))?;
    Ok((pair.public_key(), true))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// The users of the rendered configuration: one per `<name>.pub` in `dir`.
pub fn users_in(dir: &Path) -> anyhow::Result<Vec<trust::User>> {
    let mut users = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let (Some(stem), Some("pub")) =
            (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|s| s.to_str()))
        else {
            continue;
        };
        let identity = Identity::parse(stem).with_context(|| format!("{}", path.display()))?;
        let nkey = std::fs::read_to_string(&path)?.trim().to_owned();
        if !(nkey.starts_with('U') && nkey.len() == 56) {
            bail!("{} does not hold a user's public nkey", path.display());
        }
        users.push(trust::User { identity, nkey });
    }
    users.sort_by(|a, b| a.identity.cmp(&b.identity));
    if users.is_empty() {
        bail!("no identity in {}: make them with `custodian nats identity new --all`", dir.display());
    }
    Ok(users)
}

fn env_user(identity: Identity) -> trust::User {
    let nkey = format!("$NKEY_{}", identity.name().to_uppercase().replace('-', "_"));
    trust::User { identity, nkey }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_authorization_is_the_one_rendered_from_the_table() {
        let users: Vec<trust::User> = Identity::fixed().into_iter().map(env_user).collect();
        let rendered = trust::render_server_config(&users, None);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../k8s/base/nats/authorization.conf");
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            committed == rendered,
            "k8s/base/nats/authorization.conf is stale: run `custodian nats server-config --env-keys -o k8s/base/nats/authorization.conf`"
        );
    }

    #[test]
    fn identities_are_written_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        let vault = Identity::Service(Service::Vault);
        let (public, written) = new_identity(&creds, &vault, false).unwrap();
        assert!(written && public.starts_with('U'));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&creds), 0o700);
        assert_eq!(mode(&creds.join("vault.nk")), 0o600);
        assert!(new_identity(&creds, &vault, false).is_err(), "an existing key is never replaced");
        assert_eq!(new_identity(&creds, &vault, true).unwrap(), (public.clone(), false));
        let users = users_in(&creds).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!((users[0].identity.clone(), users[0].nkey.clone()), (vault, public));
    }
}
