//! `txmq`: the operator CLI. Talks to a broker's admin service (and, for `bench`, to its
//! RocketMQ service) over gRPC.
//!
//! # Layout
//! - `admin`: topic and status commands.
//! - `audit`: the operator actions a broker recorded.
//! - `console`: the web console (`txmq console`).
//! - `txn`: in-doubt transactions: list, timeline, operator decisions.
//! - `group`: consumer groups and dead letters.
//! - `msg`: messages by id or key.
//! - `users`: users and access policies (`user`, `acl`).
//! - `connection`: credentials and TLS of every connection.
//! - `bench`: load generators that print throughput and latency.
//! - `output`: human tables and `--json`.

mod admin;
mod audit;
mod bench;
mod connection;
mod console;
mod group;
mod msg;
mod output;
mod txn;
mod users;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "txmq",
    version,
    about = "Operate a txmq broker: topics, transactions, groups, messages, dead letters, benchmarks"
)]
struct Cli {
    /// Broker address, host:port.
    #[arg(long, global = true, env = "TXMQ_BROKER", default_value = "127.0.0.1:8081")]
    broker: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Access key to sign requests with (a broker run with --auth); the secret is read from
    /// TXMQ_SECRET_KEY, never from a flag.
    #[arg(long, global = true, env = "TXMQ_ACCESS_KEY")]
    access_key: Option<String>,
    /// Connect over TLS (trusting the system's roots, or --ca-file).
    #[arg(long, global = true, env = "TXMQ_TLS")]
    tls: bool,
    /// CA certificates (PEM) to trust for the broker's TLS certificate; implies --tls.
    #[arg(long, global = true, env = "TXMQ_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list and describe topics.
    #[command(subcommand)]
    Topic(admin::TopicCommand),
    /// Transactions (half messages): list, show timeline, commit, rollback, resume.
    #[command(subcommand)]
    Txn(txn::TxnCommand),
    /// Consumer groups: list, describe backlog and in-flight messages.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Messages by id or key.
    #[command(subcommand)]
    Msg(msg::MsgCommand),
    /// Dead letters of a consumer group: list, resend.
    #[command(subcommand)]
    Dlq(group::DlqCommand),
    /// Broker version, uptime, store state and counters.
    Status,
    /// The cluster a broker belongs to: its live nodes.
    #[command(subcommand)]
    Cluster(admin::ClusterCommand),
    /// Users of a broker run with --auth: create, list, delete.
    #[command(subcommand)]
    User(users::UserCommand),
    /// Access policies of users: grant, revoke, list.
    #[command(subcommand)]
    Acl(users::AclCommand),
    /// Operator actions the broker recorded: who, when, what, why.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Serve the web console: in-doubt transactions, consumer groups, messages, dead letters,
    /// the audit log (over the admin API of --broker).
    Console(console::ConsoleArgs),
    /// Measure the broker.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = output::Output { json: cli.json };
    let credentials = match (&cli.access_key, std::env::var("TXMQ_SECRET_KEY")) {
        (Some(ak), Ok(sk)) => Some(txmq_client::Credentials::new(ak.clone(), sk)),
        (Some(_), Err(_)) => {
            eprintln!("txmq: --access-key needs the secret in the TXMQ_SECRET_KEY environment variable");
            return ExitCode::FAILURE;
        }
        (None, _) => None,
    };
    let tls = (cli.tls || cli.ca_file.is_some()).then(|| cli.ca_file.clone());
    connection::configure(connection::Connection { credentials, tls });
    let result = match cli.command {
        Command::Topic(cmd) => admin::topic(&cli.broker, cmd, out).await,
        Command::Txn(cmd) => txn::run(&cli.broker, cmd, out).await,
        Command::Group(cmd) => group::group(&cli.broker, cmd, out).await,
        Command::Msg(cmd) => msg::run(&cli.broker, cmd, out).await,
        Command::Dlq(cmd) => group::dlq(&cli.broker, cmd, out).await,
        Command::Status => admin::status(&cli.broker, out).await,
        Command::Cluster(cmd) => admin::cluster(&cli.broker, cmd, out).await,
        Command::User(cmd) => users::user(&cli.broker, cmd, out).await,
        Command::Acl(cmd) => users::acl(&cli.broker, cmd, out).await,
        Command::Audit(cmd) => audit::run(&cli.broker, cmd, out).await,
        Command::Console(args) => console::run(&cli.broker, args).await,
        Command::Bench(cmd) => bench::run(&cli.broker, cmd, out).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("txmq: {e:#}");
            ExitCode::FAILURE
        }
    }
}
