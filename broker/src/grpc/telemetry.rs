//! The Telemetry stream: client Settings in, completed Settings (and later server commands) out.
//!
//! The response headers go out as soon as the call is accepted (the Rust client's `start()`
//! waits for them). The server ends a stream on its own only at shutdown, or when its client
//! was swept as silent (every stream unanswered and no sign of life for the liveness window):
//! the Rust 5.0.0 client never re-opens one, and losing it would silently cut transaction
//! check-backs. Streams of peers that vanished without closing end through HTTP/2 keepalive.

use super::clients::Clients;
use super::status;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Streaming;
use txmq_proto::v2;
use v2::telemetry_command::Command;

/// Commands buffered per stream before writes to it are refused. The check-back loop sends at
/// most this many commands per round, so one round never overflows a stream.
pub const STREAM_BUFFER: usize = 256;

/// Producer retry policy (RocketMQ proxy defaults): 3 attempts, 10 ms doubling to 1 s.
fn producer_backoff() -> v2::RetryPolicy {
    v2::RetryPolicy {
        max_attempts: 3,
        strategy: Some(v2::retry_policy::Strategy::ExponentialBackoff(v2::ExponentialBackoff {
            initial: Some(duration(Duration::from_millis(10))),
            max: Some(duration(Duration::from_secs(1))),
            multiplier: 2.0,
        })),
    }
}

/// Consumer retry policy: `max_attempts` deliveries, 1 s doubling to 60 s between them.
fn consumer_backoff(max_attempts: i32) -> v2::RetryPolicy {
    v2::RetryPolicy {
        max_attempts,
        strategy: Some(v2::retry_policy::Strategy::ExponentialBackoff(v2::ExponentialBackoff {
            initial: Some(duration(Duration::from_secs(1))),
            max: Some(duration(Duration::from_secs(60))),
            multiplier: 2.0,
        })),
    }
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// Limits the broker announces in its Settings replies.
#[derive(Debug, Clone, Copy)]
pub struct Announced {
    pub max_body_size: usize,
    pub long_polling_timeout: Duration,
    pub max_delivery_attempts: i32,
    /// Lite topics one lite consumer may subscribe to (the broker's whole quota).
    pub lite_subscription_quota: i32,
}

/// The client's Settings completed with the broker's values (docs/protocol.md §3): producers always get
/// `publishing.max_body_size > 0` and `validate_message_type` (Python fails every send without
/// them); consumers get long-polling time, batch size and retry policy; lite consumers also
/// their subscription quota and the longest lite topic name (Python's lite consumers refuse
/// every subscription until they have both).
pub fn complete_settings(mut s: v2::Settings, a: Announced) -> v2::Settings {
    match &mut s.pub_sub {
        Some(v2::settings::PubSub::Publishing(p)) => {
            p.max_body_size = a.max_body_size as i32;
            p.validate_message_type = true;
            s.backoff_policy = Some(producer_backoff());
        }
        Some(v2::settings::PubSub::Subscription(sub)) => {
            sub.long_polling_timeout = Some(duration(a.long_polling_timeout));
            sub.receive_batch_size = Some(sub.receive_batch_size.unwrap_or(32).clamp(1, 32));
            sub.fifo = Some(sub.fifo.unwrap_or(false));
            let lite = [v2::ClientType::LitePushConsumer, v2::ClientType::LiteSimpleConsumer]
                .iter()
                .any(|t| s.client_type == Some(*t as i32));
            if lite {
                sub.lite_subscription_quota = Some(a.lite_subscription_quota);
                sub.max_lite_topic_size = Some(crate::topics::MAX_LITE_TOPIC_LEN as i32);
            }
            s.backoff_policy = Some(consumer_backoff(a.max_delivery_attempts));
        }
        None => {
            let producer = s.client_type == Some(v2::ClientType::Producer as i32);
            if producer || s.client_type.is_none() {
                s.pub_sub = Some(v2::settings::PubSub::Publishing(v2::Publishing {
                    topics: Vec::new(),
                    max_body_size: a.max_body_size as i32,
                    validate_message_type: true,
                }));
                s.backoff_policy = Some(producer_backoff());
            }
        }
    }
    s.metric = Some(v2::Metric { on: false, endpoints: None });
    s
}

/// Serves one Telemetry stream until the client ends it or the broker shuts down.
pub fn serve(
    client_id: String,
    identity: super::clients::Identity,
    mut inbound: Streaming<v2::TelemetryCommand>,
    clients: Arc<Clients>,
    announced: Announced,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> mpsc::Receiver<Result<v2::TelemetryCommand, tonic::Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let opened = clients.open_stream(&client_id, tx.clone(), identity);
    let (stream_id, swept) = (opened.id, opened.cancel);
    tracing::debug!(client_id, stream_id, "telemetry stream opened");
    tracker.spawn(async move {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = swept.cancelled() => break,
                next = inbound.message() => next,
            };
            match next {
                Ok(Some(cmd)) => {
                    clients.touch(&client_id);
                    if let Some(reply) = handle(&client_id, cmd, &clients, announced) {
                        if resend_settings(&reply) {
                            // The Node.js client misses a Settings reply that arrives while it is
                            // still fetching its routes (it waits for the next, five minutes
                            // later): it gets a second copy once it has surely started waiting.
                            let (tx, copy) = (tx.clone(), reply.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(SETTINGS_RESEND_AFTER).await;
                                let _ = tx.try_send(Ok(copy));
                            });
                        }
                        if tx.try_send(Ok(reply)).is_err() {
                            tracing::warn!(client_id, "telemetry stream is not being read; reply dropped");
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(client_id, error = %e, "telemetry stream failed");
                    break;
                }
            }
        }
        clients.close_stream(&client_id, stream_id);
        tracing::debug!(client_id, stream_id, "telemetry stream closed");
    });
    rx
}

/// Largest Settings command taken (encoded). The official clients send a few kilobytes even
/// with hundreds of topics; the broker keeps one per client and echoes each, so a bigger one is
/// refused rather than held.
pub const MAX_SETTINGS_BYTES: usize = 64 * 1024;

/// When a Node.js client gets its Settings reply again (see `serve`).
const SETTINGS_RESEND_AFTER: Duration = Duration::from_secs(1);

/// Whether a Settings reply goes to a client that may miss it: the Node.js client (1.0.x)
/// registers for its first Settings only after fetching every route, and drops one that came
/// sooner. Settings may arrive at any time, so a second copy is harmless.
fn resend_settings(reply: &v2::TelemetryCommand) -> bool {
    match &reply.command {
        Some(Command::Settings(s)) => {
            s.user_agent.as_ref().is_some_and(|ua| ua.language == v2::Language::NodeJs as i32)
        }
        _ => false,
    }
}

fn handle(client_id: &str, cmd: v2::TelemetryCommand, clients: &Clients, a: Announced) -> Option<v2::TelemetryCommand> {
    match cmd.command {
        Some(Command::Settings(settings)) => {
            let size = prost::Message::encoded_len(&settings);
            if size > MAX_SETTINGS_BYTES {
                tracing::debug!(client_id, size, "settings refused: too large");
                let why = format!("settings of {size} bytes; at most {MAX_SETTINGS_BYTES} are accepted");
                return Some(v2::TelemetryCommand {
                    status: Some(status::with(v2::Code::BadRequest, why)),
                    command: None,
                });
            }
            let completed = complete_settings(settings, a);
            clients.set_settings(client_id, completed.clone());
            Some(v2::TelemetryCommand { status: Some(status::ok()), command: Some(Command::Settings(completed)) })
        }
        Some(other) => {
            tracing::debug!(client_id, command = ?std::mem::discriminant(&other), "telemetry command ignored");
            None
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Announced = Announced {
        max_body_size: 4000,
        long_polling_timeout: Duration::from_secs(20),
        max_delivery_attempts: 17,
        lite_subscription_quota: 99,
    };

    #[test]
    fn producers_always_get_a_body_limit_and_a_retry_policy() {
        let rust_settings = v2::Settings {
            client_type: Some(v2::ClientType::Producer as i32),
            pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
                topics: vec![v2::Resource { resource_namespace: String::new(), name: "t".into() }],
                max_body_size: 0,
                validate_message_type: true,
            })),
            ..Default::default()
        };
        let s = complete_settings(rust_settings, A);
        let Some(v2::settings::PubSub::Publishing(p)) = s.pub_sub else { panic!("publishing missing") };
        assert_eq!(p.max_body_size, 4000);
        assert_eq!(p.topics.len(), 1);
        assert_eq!(s.backoff_policy.unwrap().max_attempts, 3);
    }

    #[test]
    fn consumers_get_long_polling_and_batch_size() {
        let s = complete_settings(
            v2::Settings {
                client_type: Some(v2::ClientType::SimpleConsumer as i32),
                pub_sub: Some(v2::settings::PubSub::Subscription(v2::Subscription::default())),
                ..Default::default()
            },
            A,
        );
        let Some(v2::settings::PubSub::Subscription(sub)) = s.pub_sub else { panic!("subscription missing") };
        assert_eq!(sub.long_polling_timeout.unwrap().seconds, 20);
        assert_eq!(sub.receive_batch_size, Some(32));
        assert_eq!(sub.lite_subscription_quota, None, "only lite consumers get lite limits");
        assert_eq!(s.backoff_policy.unwrap().max_attempts, 17);
    }

    #[test]
    fn settings_too_large_are_refused_and_a_client_keeps_only_its_latest_topics() {
        let clients = Clients::default();
        let publishing = |names: Vec<String>| v2::TelemetryCommand {
            status: None,
            command: Some(Command::Settings(v2::Settings {
                client_type: Some(v2::ClientType::Producer as i32),
                pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
                    topics: names.into_iter().map(|name| v2::Resource { name, ..Default::default() }).collect(),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        };
        let declared = |clients: &Clients| -> Vec<String> {
            clients.producers().into_iter().filter(|(_, c)| c == "c").map(|(t, _)| t).collect()
        };
        let _stream = clients.open_stream("c", mpsc::channel(1).0, None);
        let reply = handle("c", publishing(vec!["a".into(), "b".into(), "bad name!".into()]), &clients, A).unwrap();
        assert_eq!(reply.status.unwrap().code, v2::Code::Ok as i32);
        assert_eq!(declared(&clients), ["a", "b"], "invalid names are not kept");
        handle("c", publishing(vec!["c".into()]), &clients, A).unwrap();
        assert_eq!(declared(&clients), ["c"], "the latest settings replace the topics before");
        let many: Vec<String> = (0..MAX_SETTINGS_BYTES / 8).map(|i| format!("topic-{i}")).collect();
        let reply = handle("c", publishing(many), &clients, A).unwrap();
        assert_eq!(reply.status.unwrap().code, v2::Code::BadRequest as i32);
        assert!(reply.command.is_none());
        assert_eq!(declared(&clients), ["c"], "refused settings change nothing");
    }

    #[test]
    fn only_node_js_clients_get_their_settings_twice() {
        let reply = |language: v2::Language| v2::TelemetryCommand {
            status: None,
            command: Some(Command::Settings(v2::Settings {
                user_agent: Some(v2::Ua { language: language as i32, ..Default::default() }),
                ..Default::default()
            })),
        };
        assert!(resend_settings(&reply(v2::Language::NodeJs)));
        assert!(!resend_settings(&reply(v2::Language::Rust)));
        assert!(!resend_settings(&reply(v2::Language::Python)));
    }

    #[test]
    fn lite_consumers_get_their_quota_and_name_limit() {
        let s = complete_settings(
            v2::Settings {
                client_type: Some(v2::ClientType::LiteSimpleConsumer as i32),
                pub_sub: Some(v2::settings::PubSub::Subscription(v2::Subscription::default())),
                ..Default::default()
            },
            A,
        );
        let Some(v2::settings::PubSub::Subscription(sub)) = s.pub_sub else { panic!("subscription missing") };
        assert_eq!((sub.lite_subscription_quota, sub.max_lite_topic_size), (Some(99), Some(64)));
    }
}
