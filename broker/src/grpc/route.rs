//! Routes: which queues a topic has and where clients reach them.
//!
//! Every queue is on this broker. The endpoints returned are the ones the client used to reach
//! us when they carry our advertised port (so the Rust client, which opens one more Telemetry
//! stream per distinct address spelling, keeps a single stream), else the advertised address.

use crate::model::TopicRecord;
use std::net::IpAddr;
use txmq_proto::v2;

/// Endpoints for one `host:port`.
pub fn endpoints(host: &str, port: u16) -> v2::Endpoints {
    let scheme = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => v2::AddressScheme::IPv4,
        Ok(IpAddr::V6(_)) => v2::AddressScheme::IPv6,
        Err(_) => v2::AddressScheme::DomainName,
    };
    v2::Endpoints {
        scheme: scheme as i32,
        addresses: vec![v2::Address { host: host.to_string(), port: i32::from(port) }],
    }
}

/// The endpoints to put in a route answered to a client that dialled `requested`.
pub fn route_endpoints(advertised: &v2::Endpoints, requested: Option<&v2::Endpoints>) -> v2::Endpoints {
    let our_port = advertised.addresses.first().map(|a| a.port);
    match requested {
        Some(r)
            if r.addresses.len() == 1
                && Some(r.addresses[0].port) == our_port
                && !r.addresses[0].host.is_empty()
                && r.scheme != v2::AddressScheme::Unspecified as i32 =>
        {
            r.clone()
        }
        _ => advertised.clone(),
    }
}

/// One readable, writable queue per queue id of the topic.
pub fn queues(topic: &TopicRecord, namespace: &str, at: &v2::Endpoints) -> Vec<v2::MessageQueue> {
    let accept: Vec<i32> =
        topic.topic_type.accepted().into_iter().map(|t| super::convert::wire_message_type(t) as i32).collect();
    (0..topic.queue_count)
        .map(|id| v2::MessageQueue {
            topic: Some(v2::Resource { resource_namespace: namespace.to_string(), name: topic.name.clone() }),
            id: id as i32,
            permission: v2::Permission::ReadWrite as i32,
            broker: Some(v2::Broker { name: "txmq".into(), id: 0, endpoints: Some(at.clone()) }),
            accept_message_types: accept.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_spelling_is_echoed_only_for_our_port() {
        let ours = endpoints("127.0.0.1", 8081);
        let asked = endpoints("localhost", 8081);
        assert_eq!(route_endpoints(&ours, Some(&asked)), asked);
        assert_eq!(route_endpoints(&ours, Some(&endpoints("localhost", 9999))), ours);
        assert_eq!(route_endpoints(&ours, None), ours);
        assert_eq!(endpoints("localhost", 1).scheme, v2::AddressScheme::DomainName as i32);
    }
}
