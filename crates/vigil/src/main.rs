//! The `vigil` command. Thin: parses arguments and configuration, installs logging, and calls
//! into `vigil-server` (serve, tokens) and the benchmark module.

mod alerts;
mod bench;
mod client;
mod query;
mod sim;

/// mimalloc instead of glibc malloc: the request, ingest and query paths allocate small
/// short-lived buffers, and glibc spent ~15 % of the heartbeat path in malloc/free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use vigil_model::{Clock, SystemClock};
use vigil_server::auth::{self, Envs, Role};
use vigil_server::config::{Config, parse_duration};

/// Vigil: telemetry and health monitoring for large fleets.
#[derive(Parser, Debug)]
#[command(name = "vigil", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the server.
    Serve(ServeArgs),
    /// Create, list and revoke API tokens (works while the server runs).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Load generators and benchmarks against a running server.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Run a PromQL query against a running server (instant, or --range).
    Query(query::QueryArgs),
    /// Simulate a fleet against the failure detector (in process, simulated time).
    Sim(sim::SimArgs),
    /// Prometheus rule files (check).
    #[command(subcommand)]
    Rules(alerts::RulesCmd),
    /// Silences on a running server (add, list, expire).
    #[command(subcommand)]
    Silence(alerts::SilenceCmd),
    /// Alerts on a running server (list, ack).
    #[command(subcommand)]
    Alerts(alerts::AlertsCmd),
}

/// Where configuration comes from; shared by every command that touches the data directory.
#[derive(Args, Debug, Clone)]
struct Common {
    /// TOML configuration file (see config/vigil.example.toml).
    #[arg(long, env = "VIGIL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./vigil-data].
    #[arg(long, env = "VIGIL_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on [default: 127.0.0.1:9700].
    #[arg(long, env = "VIGIL_LISTEN")]
    listen: Option<String>,
    /// WAL sync policy: always, interval or never [default: interval].
    #[arg(long, env = "VIGIL_SYNC")]
    sync: Option<String>,
    /// Require tokens (true/false) [default: true]. Turning auth off logs a warning at every start.
    #[arg(long, env = "VIGIL_AUTH_ENABLED")]
    auth_enabled: Option<bool>,
    /// TLS certificate chain (PEM); with --tls-key serves HTTPS, TLS 1.3 only.
    #[arg(long, env = "VIGIL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "VIGIL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "VIGIL_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Prometheus rule file to evaluate (repeatable; adds to `[alerting] rule_files`).
    #[arg(long = "rules")]
    rules: Vec<PathBuf>,
    /// Alertmanager-format routing file (replaces `[alerting] notify_config`).
    #[arg(long, env = "VIGIL_NOTIFY_CONFIG")]
    notify_config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Mint a token and print it.
    Create {
        #[command(flatten)]
        common: Common,
        /// admin, operator, viewer or agent.
        #[arg(long)]
        role: String,
        /// Environment the token may use (repeat for several; `*` for all). The first is its default.
        #[arg(long = "env", required = true)]
        envs: Vec<String>,
        /// Subject (who or what holds it).
        #[arg(long, default_value = "cli")]
        sub: String,
        /// Lifetime, e.g. 30d, 12h.
        #[arg(long, default_value = "365d")]
        ttl: String,
    },
    /// List tokens.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a token by its id (jti).
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The token id.
        jti: String,
    },
}

fn load_config(common: &Common) -> Result<Config> {
    let mut cfg = match &common.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("read configuration {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("configuration {}", p.display()))?
        }
        None => Config::default(),
    };
    if let Some(d) = &common.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file or journal gets plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("Shutting down: no new connections; finishing in-flight requests.");
}

fn serve(a: ServeArgs) -> Result<()> {
    init_logging(a.log_format == "json");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = load_config(&a.common)?;
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(s) = a.sync {
        cfg.tsdb.sync = s;
    }
    if let Some(e) = a.auth_enabled {
        cfg.auth.enabled = e;
    }
    cfg.alerting.rule_files.extend(a.rules);
    if let Some(n) = a.notify_config {
        cfg.alerting.notify_config = Some(n);
    }
    if a.tls_cert.is_some() || a.tls_key.is_some() {
        cfg.tls.cert = a.tls_cert;
        cfg.tls.key = a.tls_key;
    }
    let resolved = cfg.resolve()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigil")
        .build()?;
    rt.block_on(async move {
        let server = vigil_server::Server::bind(resolved.clone())?;
        let scheme = if server.is_tls() { "https" } else { "http" };
        println!(
            "vigil listening on {scheme}://{} (data: {})",
            server.local_addr(),
            resolved.data_dir.display()
        );
        match &server.admin_token_path {
            Some(p) => println!("admin token written to {} (mode 0600)", p.display()),
            None => println!(
                "admin token: {}",
                vigil_server::admin_token_path(&resolved.data_dir).display()
            ),
        }
        server.run(shutdown_signal()).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    println!("vigil stopped");
    Ok(())
}

fn token(cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            common,
            role,
            envs,
            sub,
            ttl,
        } => {
            let cfg = load_config(&common)?;
            let role = Role::parse(&role).with_context(|| {
                format!("--role {role:?}: use admin, operator, viewer or agent")
            })?;
            for e in envs.iter().filter(|e| *e != "*") {
                vigil_model::EnvId::new(e).with_context(|| format!("--env {e:?}"))?;
            }
            let ttl = parse_duration(&ttl)
                .with_context(|| format!("--ttl {ttl:?}: use a duration like 30d or 12h"))?;
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("create {}", cfg.data_dir.display()))?;
            let meta = vigil_meta::Meta::open(&cfg.data_dir.join("meta.db"))?;
            let (key, _) = auth::load_or_create_key(&cfg.data_dir).context("signing key")?;
            let (token, rec) = auth::mint(
                &meta,
                &key,
                &sub,
                role,
                Envs::from_names(&envs),
                ttl,
                SystemClock.now_ms(),
            )
            .map_err(anyhow::Error::msg)?;
            eprintln!(
                "token {} for {} ({}, envs {}) expires {}",
                rec.jti,
                rec.sub,
                rec.role,
                rec.envs.join(","),
                rec.expires_ms / 1000
            );
            println!("{token}");
        }
        TokenCmd::List { common } => {
            let cfg = load_config(&common)?;
            let p = cfg.data_dir.join("meta.db");
            if !p.exists() {
                bail!(
                    "no metadata store at {}; start `vigil serve` or create a token first",
                    p.display()
                );
            }
            let meta = vigil_meta::Meta::open(&p)?;
            println!(
                "{:<26} {:<16} {:<9} {:<20} {:<10} {:<10} revoked",
                "jti", "sub", "role", "envs", "created", "expires"
            );
            for t in meta.list_tokens()? {
                println!(
                    "{:<26} {:<16} {:<9} {:<20} {:<10} {:<10} {}",
                    t.jti,
                    t.sub,
                    t.role,
                    t.envs.join(","),
                    t.created_ms / 1000,
                    t.expires_ms / 1000,
                    t.revoked_ms
                        .map_or("-".to_string(), |r| (r / 1000).to_string())
                );
            }
        }
        TokenCmd::Revoke { common, jti } => {
            let cfg = load_config(&common)?;
            let meta = vigil_meta::Meta::open(&cfg.data_dir.join("meta.db"))?;
            meta.revoke_token(&jti, SystemClock.now_ms())?;
            println!("revoked {jti}");
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Token(t) => token(t),
        Cmd::Bench(b) => bench::run(b),
        Cmd::Query(q) => query::run(q),
        Cmd::Sim(a) => sim::run(a),
        Cmd::Rules(c) => alerts::rules(c),
        Cmd::Silence(c) => alerts::silence(c),
        Cmd::Alerts(c) => alerts::alerts(c),
    };
    if let Err(e) = r {
        eprintln!("vigil: {e:#}");
        std::process::exit(1);
    }
}
