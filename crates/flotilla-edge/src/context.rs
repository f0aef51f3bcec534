//! What every step of a request after routing needs — the connection, who the client is, the
//! authority it asked for, its id — and what the access log records about it. The bottom of
//! the request path's types: every layer above (upstream, backend door, cache layer, phases)
//! takes a [`Call`]; nothing here calls up.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;

use crate::forwarding::{Client, ClientAddr};
use crate::group::TargetGroup;
use crate::{Runtime, Shared};

/// Facts about the client connection a request arrived on.
pub(crate) struct Conn {
    /// The client's address: the TCP peer's, or the one its PROXY header named.
    pub peer: SocketAddr,
    pub tls: bool,
    /// Set by the connection's framing tracker (see `framing.rs`).
    pub framing: Arc<crate::framing::FramingFlags>,
    /// Forwarding-header strings for this connection's peer, built once per connection.
    pub client_addr: ClientAddr,
    /// The client as requests on this connection see it, unless the peer is a trusted proxy.
    pub client: Client,
    /// The peer is in `edge.trusted_proxies`: each request's client is read from its
    /// forwarding headers.
    pub trusted: bool,
    /// This worker's connection pool to targets.
    pub pool: Arc<crate::pool::Pool>,
}

/// What the access log records about one exchange.
#[derive(Default)]
pub(crate) struct Outcome {
    pub group: Option<Arc<TargetGroup>>,
    pub target: Option<SocketAddr>,
    pub attempts: u32,
    /// The matched route's response-header policy, applied to whatever answers.
    pub headers: Option<Arc<crate::policy::Headers>>,
    /// Who answered; the edge unless a target or the cache did.
    pub source: crate::metrics::Source,
    /// The matched route's place in the route table, for its counters.
    pub route: Option<usize>,
}

/// One request's context below routing: the edge, the runtime snapshot it was routed with, its
/// connection, its client, the authority it is for, and its id.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub shared: &'a Arc<Shared>,
    pub rt: &'a Arc<Runtime>,
    pub conn: &'a Arc<Conn>,
    /// Who the client is and which scheme it used (see `forwarding.rs`).
    pub client: &'a Client,
    /// The authority the route matched and the key uses, and the origin gets as `Host`:
    /// lower-case host, plus the port when it is not the scheme's default.
    pub host: &'a str,
    pub rid: &'a HeaderValue,
}

impl Call<'_> {
    /// The host part of cache keys: the authority, prefixed by the scheme when it is https, so
    /// an origin's different answers to http and https (a redirect, absolute links) never meet.
    pub(crate) fn key_host(&self) -> std::borrow::Cow<'_, str> {
        if self.client.https {
            std::borrow::Cow::Owned(format!("https://{}", self.host))
        } else {
            std::borrow::Cow::Borrowed(self.host)
        }
    }
}

/// [`Call`] held beyond the request (a background refresh outlives it).
pub(crate) struct OwnedCall {
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
    conn: Arc<Conn>,
    client: Client,
    host: String,
    rid: HeaderValue,
}

impl OwnedCall {
    pub(crate) fn of(call: &Call<'_>) -> Self {
        Self {
            shared: call.shared.clone(),
            rt: call.rt.clone(),
            conn: call.conn.clone(),
            client: call.client.clone(),
            host: call.host.to_string(),
            rid: call.rid.clone(),
        }
    }

    pub(crate) fn borrow(&self) -> Call<'_> {
        Call {
            shared: &self.shared,
            rt: &self.rt,
            conn: &self.conn,
            client: &self.client,
            host: &self.host,
            rid: &self.rid,
        }
    }
}
