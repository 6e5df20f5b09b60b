//! `txmq.admin.v1.Admin`: the operator API behind the `txmq` CLI.

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::model::{TopicRecord, TopicType};
use pb::admin_server::Admin;
use std::sync::Arc;
use tonic::{Request, Response};
use txmq_proto::admin as pb;

type GrpcResult<T> = Result<Response<T>, tonic::Status>;

/// The admin service over the shared broker.
pub struct AdminService {
    pub(crate) broker: Arc<Broker>,
}

fn ok() -> Option<pb::Status> {
    Some(pb::Status {
        code: pb::StatusCode::Ok as i32,
        message: "OK".into(),
    })
}

/// The admin status for a broker error (the admin API has its own small code set).
fn status(e: &BrokerError) -> Option<pb::Status> {
    use pb::StatusCode as C;
    let code = match e {
        BrokerError::TopicNotFound(_) => C::NotFound,
        BrokerError::TopicExists(_) => C::AlreadyExists,
        BrokerError::NotImplemented(_) => C::NotImplemented,
        BrokerError::Store(_) => C::Unavailable,
        BrokerError::Internal(_) => C::Internal,
        _ => C::InvalidArgument,
    };
    Some(pb::Status {
        code: code as i32,
        message: e.to_string(),
    })
}

fn topic_type(t: pb::TopicType) -> Option<TopicType> {
    Some(match t {
        pb::TopicType::Unspecified => return None,
        pb::TopicType::Normal => TopicType::Normal,
        pb::TopicType::Fifo => TopicType::Fifo,
        pb::TopicType::Delay => TopicType::Delay,
        pb::TopicType::Transaction => TopicType::Transaction,
        pb::TopicType::Mixed => TopicType::Mixed,
    })
}

fn wire_topic(t: &TopicRecord) -> pb::Topic {
    let ty = match t.topic_type {
        TopicType::Normal => pb::TopicType::Normal,
        TopicType::Fifo => pb::TopicType::Fifo,
        TopicType::Delay => pb::TopicType::Delay,
        TopicType::Transaction => pb::TopicType::Transaction,
        TopicType::Mixed => pb::TopicType::Mixed,
    };
    pb::Topic {
        name: t.name.clone(),
        r#type: ty as i32,
        queue_count: t.queue_count,
        created_at_ms: t.created_at,
        auto_created: t.auto_created,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> GrpcResult<pb::CreateTopicResponse> {
        let req = req.into_inner();
        let ty = pb::TopicType::try_from(req.r#type)
            .ok()
            .and_then(topic_type)
            .unwrap_or(TopicType::Mixed);
        let res = self
            .broker
            .create_topic(&req.name, ty, req.queue_count)
            .await;
        Ok(Response::new(match res {
            Ok(t) => pb::CreateTopicResponse {
                status: ok(),
                topic: Some(wire_topic(&t)),
            },
            Err(e) => pb::CreateTopicResponse {
                status: status(&e),
                topic: None,
            },
        }))
    }

    async fn list_topics(
        &self,
        _req: Request<pb::ListTopicsRequest>,
    ) -> GrpcResult<pb::ListTopicsResponse> {
        let topics = self.broker.topics().iter().map(|t| wire_topic(t)).collect();
        Ok(Response::new(pb::ListTopicsResponse {
            status: ok(),
            topics,
        }))
    }

    async fn describe_topic(
        &self,
        req: Request<pb::DescribeTopicRequest>,
    ) -> GrpcResult<pb::DescribeTopicResponse> {
        let name = req.into_inner().name;
        let Some(topic) = self.broker.topic(&name) else {
            return Ok(Response::new(pb::DescribeTopicResponse {
                status: status(&BrokerError::TopicNotFound(name)),
                ..Default::default()
            }));
        };
        let queues: Vec<pb::QueueStats> = self
            .broker
            .queue_offsets(&topic)
            .into_iter()
            .map(|q| pb::QueueStats {
                queue_id: q.queue,
                min_offset: q.min,
                max_offset: q.durable,
            })
            .collect();
        let message_count = queues
            .iter()
            .map(|q| q.max_offset.saturating_sub(q.min_offset))
            .sum();
        Ok(Response::new(pb::DescribeTopicResponse {
            status: ok(),
            topic: Some(wire_topic(&topic)),
            queues,
            message_count,
        }))
    }

    async fn broker_status(
        &self,
        _req: Request<pb::BrokerStatusRequest>,
    ) -> GrpcResult<pb::BrokerStatusResponse> {
        let s = self.broker.status();
        Ok(Response::new(pb::BrokerStatusResponse {
            status: ok(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: s.started_at,
            store_writable: s.store_error.is_none(),
            store_error: s.store_error.unwrap_or_default(),
            topic_count: s.topic_count as u64,
            flush_count: s.commits.flushes,
            flushed_write_count: s.commits.jobs,
        }))
    }
}
