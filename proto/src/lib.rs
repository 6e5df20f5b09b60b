//! Wire definitions for txmq, generated at build time from `proto/`.
//!
//! # Layout
//! - [`v2`]: `apache.rocketmq.v2`, the Apache RocketMQ 5 gRPC protocol (`MessagingService`),
//!   written for txmq with the official names and field numbers (docs/protocol.md), so the
//!   official RocketMQ clients talk to txmq unchanged.
//! - [`admin`]: `txmq.admin.v1`, our own operator API (`Admin`), served on the same port.
//! - [`cluster`]: `txmq.cluster.v1`, between the nodes of a cluster, on the same port.
//! - [`ext`]: `txmq.v1`, our extension of the messaging API for the txmq SDK (batched
//!   transaction decisions, and sends and decisions as messages of one stream), on the same
//!   port.
//!
//! Nothing here is hand-written Rust: the modules are `include!`s of prost/tonic output.

#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
// Comments of the .proto files become docs verbatim; they are prose, not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls, rustdoc::broken_intra_doc_links)]

/// `apache.rocketmq.v2`: messages, enums and the `MessagingService` client and server.
pub mod v2 {
    include!(concat!(env!("OUT_DIR"), "/apache.rocketmq.v2.rs"));
}

/// `txmq.admin.v1`: the operator API used by the `txmq` CLI.
pub mod admin {
    include!(concat!(env!("OUT_DIR"), "/txmq.admin.v1.rs"));
}

/// `txmq.cluster.v1`: what the nodes of a cluster ask each other (check-backs).
pub mod cluster {
    include!(concat!(env!("OUT_DIR"), "/txmq.cluster.v1.rs"));
}

/// `txmq.v1`: the `Transactions` extension (many transaction decisions in one call, and calls
/// on one stream).
pub mod ext {
    include!(concat!(env!("OUT_DIR"), "/txmq.v1.rs"));

    /// Decisions one `EndTransactions` call may carry: the broker refuses a call with more,
    /// and the SDK never sends one.
    pub const MAX_DECISIONS: usize = 1000;
}

/// The probe our parts use to tell a process that answers from one that only holds its socket
/// open (a stopped process's kernel still accepts connections): an HTTP/2 request to a path no
/// service has. Any answer (a txmq broker's is `UNIMPLEMENTED`) shows that a process reads and
/// answers at the address; only a transport failure or no answer in time shows it does not.
pub mod probe {
    /// The path probed.
    pub const PATH: &str = "/txmq.probe/Alive";

    /// A probe request, ready for a gRPC channel or an HTTP/2 connection.
    pub fn request() -> tonic::codegen::http::Request<tonic::body::Body> {
        let mut req = tonic::codegen::http::Request::new(tonic::body::Body::empty());
        *req.method_mut() = tonic::codegen::http::Method::POST;
        *req.uri_mut() = tonic::codegen::http::Uri::from_static(PATH);
        let headers = req.headers_mut();
        headers.insert("content-type", tonic::codegen::http::HeaderValue::from_static("application/grpc"));
        headers.insert("te", tonic::codegen::http::HeaderValue::from_static("trailers"));
        req
    }
}
