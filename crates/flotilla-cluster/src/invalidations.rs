//! Invalidations that reach every node and are never lost.
//!
//! The node that takes an invalidation applies it to its own cache, appends it to the
//! `<prefix>:invalidations` Stream (so every invalidation has an id and an order) and waits until
//! every live node has acknowledged that id. Each node reads the stream from the id it last
//! applied — persisted beside its disk cache, so a restarted node replays what it missed —
//! applies the others' entries and acknowledges by setting `<prefix>:ack:<node>` and appending
//! to `<prefix>:acks` (a stream, so waiters are woken without polling and miss nothing).
//!
//! If the stream no longer reaches back to the id a node last applied (trimmed, or Redis lost its
//! data), the node cannot know what it missed and drops its whole cache instead. If Redis is down
//! when an invalidation arrives, the node applies it, keeps it in a journal (on disk when there is
//! a disk cache) and publishes it when Redis returns.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::streams::StreamReadReply;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::{backoff, within, Applier, Cluster, ClusterError, StreamId, CONTROL_TIMEOUT};

/// Entries kept in the stream (approximately): at one invalidation a second, over a day.
const STREAM_MAXLEN: u64 = 100_000;
/// Acks kept: waiters read them as they arrive, this only bounds the key.
const ACKS_MAXLEN: u64 = 10_000;
/// How long one blocking read waits before looping (it returns early on any new entry).
const BLOCK: Duration = Duration::from_secs(5);
/// Entries applied per read; a node catching up after a long partition does it in batches.
const BATCH: usize = 256;
/// Journal entries kept at most while Redis is down; beyond this the oldest are merged into one
/// "invalidate everything" entry so nothing is lost, only widened.
const MAX_JOURNAL: usize = 10_000;

/// One invalidation, as published to the stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct InvalidationSpec {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

/// What happened to an invalidation beyond this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// In the stream as `id`. `applied` lists the live nodes that acknowledged it (this one
    /// included); `pending` those that had not when the wait ended.
    Published { id: StreamId, applied: Vec<String>, pending: Vec<String>, waited: Duration },
    /// Redis could not take it: applied on this node, journaled (`queued` entries waiting) and
    /// published as soon as Redis answers again.
    Journaled { error: String, queued: usize },
}

pub(crate) struct State {
    applier: Arc<dyn Applier>,
    dir: Option<PathBuf>,
    /// The id of the last entry applied (or skipped as this node's own); `None` before the first
    /// sync of a node that has no persisted cursor.
    cursor: Mutex<Option<StreamId>>,
    pub synced: watch::Sender<bool>,
    /// The highest id each node has acknowledged, as seen on the acks stream.
    acks: Mutex<HashMap<String, StreamId>>,
    ack_event: Notify,
    journal: Mutex<VecDeque<InvalidationSpec>>,
    /// Serialises publishing so journaled entries go out before newer ones.
    publish_lock: tokio::sync::Mutex<()>,
}

impl State {
    pub(crate) fn load(dir: Option<PathBuf>, applier: Arc<dyn Applier>) -> Result<State, ClusterError> {
        let mut cursor = None;
        let mut journal = VecDeque::new();
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).map_err(|source| ClusterError::State { path: dir.clone(), source })?;
            let path = dir.join(CURSOR_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => cursor = StreamId::parse(text.trim()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ClusterError::State { path, source }),
            }
            let path = dir.join(JOURNAL_FILE);
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<VecDeque<InvalidationSpec>>(&bytes) {
                    Ok(j) => journal = j,
                    Err(e) => {
                        // Unreadable: its entries may be lost, so widen them to everything.
                        tracing::warn!(file = %path.display(), error = %e, "cluster: invalidation journal unreadable; will publish an invalidation of everything instead");
                        journal.push_back(InvalidationSpec { all: true, ..Default::default() });
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ClusterError::State { path, source }),
            }
        }
        Ok(State {
            applier,
            dir,
            cursor: Mutex::new(cursor),
            synced: watch::channel(false).0,
            acks: Mutex::new(HashMap::new()),
            ack_event: Notify::new(),
            journal: Mutex::new(journal),
            publish_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn applied(&self) -> StreamId {
        self.cursor.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(StreamId::ZERO)
    }

    pub(crate) fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub(crate) fn journal_len(&self) -> usize {
        self.journal.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn set_cursor(&self, id: StreamId) {
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
        if let Some(dir) = &self.dir {
            if let Err(e) = write_atomic(&dir.join(CURSOR_FILE), id.to_string().as_bytes()) {
                tracing::warn!(error = %e, "cluster: cannot persist the last applied invalidation id");
            }
        }
    }

    fn save_journal(&self, journal: &VecDeque<InvalidationSpec>) {
        let Some(dir) = &self.dir else { return };
        let bytes = serde_json::to_vec(journal).unwrap_or_default();
        if let Err(e) = write_atomic(&dir.join(JOURNAL_FILE), &bytes) {
            tracing::warn!(error = %e, "cluster: cannot persist the invalidation journal");
        }
    }

    fn push_journal(&self, spec: InvalidationSpec) -> usize {
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.push_back(spec);
        if j.len() > MAX_JOURNAL {
            j.clear();
            j.push_back(InvalidationSpec { all: true, ..Default::default() });
        }
        self.save_journal(&j);
        j.len()
    }
}

const CURSOR_FILE: &str = "cluster-applied";
const JOURNAL_FILE: &str = "cluster-journal.json";

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Cluster {
    /// Publishes an invalidation this node has already applied and waits (at most
    /// `cluster.invalidation_wait`) until every live node has applied it too.
    pub async fn invalidate(&self, spec: InvalidationSpec) -> Outcome {
        self.metrics.invalidations_taken.inc();
        let _order = self.invalidations.publish_lock.lock().await;
        if self.invalidations.journal_len() > 0 {
            if let Err(e) = self.flush_journal().await {
                let queued = self.invalidations.push_journal(spec);
                return Outcome::Journaled { error: e.to_string(), queued };
            }
        }
        match self.publish(&spec).await {
            Ok(id) => {
                drop(_order);
                let start = Instant::now();
                let (applied, pending) = self.wait_acks(id, start + self.cfg.invalidation_wait).await;
                let waited = start.elapsed();
                self.metrics.ack_wait.observe(waited.as_secs_f64());
                if !pending.is_empty() {
                    tracing::warn!(id = %id, pending = ?pending, "cluster: invalidation not acknowledged by every node in time");
                }
                Outcome::Published { id, applied, pending, waited }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot publish an invalidation; applied here and journaled until Redis returns");
                let queued = self.invalidations.push_journal(spec);
                Outcome::Journaled { error: e.to_string(), queued }
            }
        }
    }

    async fn publish(&self, spec: &InvalidationSpec) -> Result<StreamId, ClusterError> {
        let json = serde_json::to_string(spec).unwrap_or_default();
        let mut conn = self.conn.clone();
        let id: String = within(
            redis::cmd("XADD")
                .arg(&self.keys.invalidations)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAXLEN)
                .arg("*")
                .arg("origin")
                .arg(&self.cfg.node)
                .arg("run")
                .arg(&self.run)
                .arg("spec")
                .arg(json)
                .query_async(&mut conn),
        )
        .await?;
        self.metrics.invalidations_published.inc();
        StreamId::parse(&id).ok_or_else(|| {
            ClusterError::Redis(redis::RedisError::from((redis::ErrorKind::Parse, "XADD returned a malformed id", id)))
        })
    }

    /// Publishes journaled entries in order; stops at the first failure (they stay queued).
    async fn flush_journal(&self) -> Result<usize, ClusterError> {
        let mut sent = 0;
        loop {
            let next = self.invalidations.journal.lock().unwrap_or_else(|e| e.into_inner()).front().cloned();
            let Some(spec) = next else { return Ok(sent) };
            self.publish(&spec).await?;
            let mut j = self.invalidations.journal.lock().unwrap_or_else(|e| e.into_inner());
            j.pop_front();
            self.invalidations.save_journal(&j);
            sent += 1;
        }
    }

    /// Waits until every live node other than this one has acknowledged `id`, or `deadline`.
    /// The member list is re-read while waiting, so a node that drops out (killed, cut off)
    /// stops being waited for once its heartbeat expires.
    async fn wait_acks(&self, id: StreamId, deadline: Instant) -> (Vec<String>, Vec<String>) {
        let mut live = match self.fetch_nodes().await {
            Ok(n) => n.into_iter().map(|n| n.name).collect(),
            Err(_) => self.live_names(),
        };
        let mut refreshed = Instant::now();
        loop {
            let notified = self.invalidations.ack_event.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (applied, pending) = {
                let acks = self.invalidations.acks.lock().unwrap_or_else(|e| e.into_inner());
                live.iter()
                    .cloned()
                    .partition::<Vec<String>, _>(|n| *n == self.cfg.node || acks.get(n).is_some_and(|a| *a >= id))
            };
            let now = Instant::now();
            if pending.is_empty() || now >= deadline {
                return (applied, pending);
            }
            let poll = Duration::from_millis(100).min(deadline - now);
            if tokio::time::timeout(poll, notified).await.is_err() {
                // Quiet for a while: the acks stream may have been missed (reconnect), so read the
                // ack keys themselves, and refresh who is live.
                self.read_ack_keys(&pending).await;
                if refreshed.elapsed() >= Duration::from_millis(250) {
                    if let Ok(n) = self.fetch_nodes().await {
                        live = n.into_iter().map(|n| n.name).collect();
                    }
                    refreshed = Instant::now();
                }
            }
        }
    }

    async fn read_ack_keys(&self, nodes: &[String]) {
        if nodes.is_empty() {
            return;
        }
        let keys: Vec<String> = nodes.iter().map(|n| format!("{}{n}", self.keys.ack_prefix)).collect();
        let mut conn = self.conn.clone();
        if let Ok(values) = within(redis::cmd("MGET").arg(&keys).query_async::<Vec<Option<String>>>(&mut conn)).await {
            let mut acks = self.invalidations.acks.lock().unwrap_or_else(|e| e.into_inner());
            for (node, v) in nodes.iter().zip(values) {
                if let Some(id) = v.as_deref().and_then(StreamId::parse) {
                    let e = acks.entry(node.clone()).or_default();
                    *e = (*e).max(id);
                }
            }
        }
    }

    /// Tells the others this node has applied everything up to `id`.
    async fn ack(&self, id: StreamId) -> Result<(), ClusterError> {
        if !self.holds_name() {
            return Ok(()); // acks under the name are its holder's, not this run's
        }
        let mut conn = self.conn.clone();
        within(
            redis::pipe()
                .cmd("SET")
                .arg(format!("{}{}", self.keys.ack_prefix, self.cfg.node))
                .arg(id.to_string())
                .ignore()
                .cmd("XADD")
                .arg(&self.keys.acks)
                .arg("MAXLEN")
                .arg("~")
                .arg(ACKS_MAXLEN)
                .arg("*")
                .arg("node")
                .arg(&self.cfg.node)
                .arg("id")
                .arg(id.to_string())
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Decides where to read from after (re)connecting. A node with no cursor starts at the end
    /// (its cache holds nothing older than now). A node whose cursor fell out of the stream's
    /// history — trimmed past it, or the stream gone with Redis's data — drops its cache.
    async fn sync_history(&self, conn: &mut redis::aio::ConnectionManager) -> Result<StreamId, ClusterError> {
        let info =
            within(redis::cmd("XINFO").arg("STREAM").arg(&self.keys.invalidations).query_async::<redis::Value>(conn))
                .await;
        let info = match info {
            Err(ClusterError::Redis(e)) if e.to_string().to_ascii_lowercase().contains("no such key") => None,
            r => Some(stream_info(r?)),
        };
        let cursor = *self.invalidations.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let last = info.as_ref().map(|i| i.last_generated).unwrap_or(StreamId::ZERO);
        let next = match (cursor, &info) {
            (None, _) => last,
            (Some(c), None) if c > StreamId::ZERO => {
                self.drop_cache(c, "the invalidation stream is gone (Redis lost its data)");
                StreamId::ZERO
            }
            (Some(c), None) => c,
            (Some(c), Some(i)) => {
                let lost = i.lost_after(c);
                if lost {
                    self.drop_cache(c, "the invalidation stream no longer reaches back to the last id applied");
                    last
                } else {
                    c
                }
            }
        };
        self.invalidations.set_cursor(next);
        self.ack(next).await?;
        Ok(next)
    }

    fn drop_cache(&self, cursor: StreamId, why: &str) {
        tracing::warn!(last_applied = %cursor, "cluster: {why}; dropping the whole cache rather than risk serving an invalidated object");
        self.metrics.cache_drops.inc();
        self.invalidations.applier.apply(&InvalidationSpec { all: true, ..Default::default() });
    }

    fn apply_entry(&self, id: &str, fields: &HashMap<String, redis::Value>) {
        let text = |k: &str| fields.get(k).and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        // Applied before it was published. By this run: another process under the same name
        // (refused, but possible while Redis was unreachable) has not applied it.
        let own_run = text("run").is_none_or(|r| r == self.run);
        if text("origin").as_deref() == Some(self.cfg.node.as_str()) && own_run {
            return;
        }
        match text("spec").and_then(|s| serde_json::from_str::<InvalidationSpec>(&s).ok()) {
            Some(spec) => {
                self.invalidations.applier.apply(&spec);
                self.metrics.invalidations_applied.inc();
            }
            None => tracing::warn!(id, "cluster: malformed invalidation entry skipped"),
        }
    }
}

struct StreamInfo {
    last_generated: StreamId,
    max_deleted: Option<StreamId>,
    first: Option<StreamId>,
    length: u64,
    /// Entries ever added (Redis 7+); with `length`, how many were trimmed.
    entries_added: Option<u64>,
}

impl StreamInfo {
    /// Whether entries newer than `cursor` may have been removed (trimmed from the front, or
    /// deleted) — then a node at `cursor` cannot know what it missed. Trimming only removes the
    /// oldest entries, so if the oldest remaining is at or before `cursor`, nothing after it went.
    fn lost_after(&self, cursor: StreamId) -> bool {
        if self.max_deleted.is_some_and(|d| d > cursor) {
            return true;
        }
        if self.entries_added.is_some_and(|added| added == self.length) {
            return false; // nothing was ever removed
        }
        match self.first {
            Some(first) => first > cursor,
            None => self.last_generated > cursor,
        }
    }
}

/// Reads `XINFO STREAM`'s reply (a flat key/value array in RESP2, a map in RESP3).
fn stream_info(v: redis::Value) -> StreamInfo {
    let pairs: Vec<(String, redis::Value)> = match v {
        redis::Value::Array(items) => {
            let mut out = Vec::new();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Ok(k) = redis::from_redis_value::<String>(k) {
                    out.push((k, v));
                }
            }
            out
        }
        redis::Value::Map(m) => {
            m.into_iter().filter_map(|(k, v)| redis::from_redis_value::<String>(k).ok().map(|k| (k, v))).collect()
        }
        _ => Vec::new(),
    };
    let id = |v: &redis::Value| redis::from_redis_value_ref::<String>(v).ok().and_then(|s| StreamId::parse(&s));
    let mut info =
        StreamInfo { last_generated: StreamId::ZERO, max_deleted: None, first: None, length: 0, entries_added: None };
    for (k, v) in &pairs {
        match k.as_str() {
            "last-generated-id" => info.last_generated = id(v).unwrap_or(StreamId::ZERO),
            "max-deleted-entry-id" => info.max_deleted = id(v),
            "length" => info.length = redis::from_redis_value_ref::<u64>(v).unwrap_or(0),
            "entries-added" => info.entries_added = redis::from_redis_value_ref::<u64>(v).ok(),
            "first-entry" => {
                if let redis::Value::Array(entry) = v {
                    info.first = entry.first().and_then(id);
                }
            }
            _ => {}
        }
    }
    info
}

/// A connection for blocking reads: its own socket (a blocked read holds a connection), with a
/// response timeout longer than the block.
fn blocking_conn(cluster: &Cluster) -> Result<redis::aio::ConnectionManager, ClusterError> {
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONTROL_TIMEOUT))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(cluster.client.get_connection_manager_lazy(cfg)?)
}

/// One blocking read of up to `BATCH` entries after `cursor` (returns early on a new entry).
async fn xread(
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
    cursor: &str,
) -> redis::RedisResult<Option<StreamReadReply>> {
    redis::cmd("XREAD")
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(cursor)
        .query_async(conn)
        .await
}

/// Reads the invalidation stream from this node's cursor and applies what the others published.
pub(crate) async fn apply_loop(cluster: Arc<Cluster>) {
    let mut conn = match blocking_conn(&cluster) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "cluster: cannot create the invalidation reader"),
    };
    let state = &cluster.invalidations;
    let mut failures = 0u32;
    let mut ack_owed = false;
    loop {
        if !state.is_synced() {
            match cluster.sync_history(&mut conn).await {
                Ok(at) => {
                    tracing::info!(from = %at, "cluster: reading invalidations");
                    state.synced.send_replace(true);
                    failures = 0;
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(error = %e, "cluster: cannot read the invalidation stream; retrying");
                    }
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
            }
        }
        let cursor = state.applied();
        let read = xread(&mut conn, &cluster.keys.invalidations, &cursor.to_string()).await;
        match read {
            Ok(reply) => {
                let mut last = None;
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in key.ids {
                        cluster.apply_entry(&entry.id, &entry.map);
                        last = StreamId::parse(&entry.id).or(last);
                    }
                }
                if let Some(id) = last {
                    state.set_cursor(id);
                    ack_owed = true;
                }
                if ack_owed {
                    ack_owed = cluster.ack(state.applied()).await.is_err();
                }
            }
            Err(e) => {
                // Reconnected reads re-check the history: the stream may have been trimmed past
                // this node's cursor, or lost, while it was away.
                tracing::warn!(error = %e, "cluster: invalidation stream read failed");
                state.synced.send_replace(false);
                failures = failures.saturating_add(1);
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// Follows the acks stream so waiting invalidations wake as soon as the last node acknowledges.
pub(crate) async fn ack_loop(cluster: Arc<Cluster>) {
    let mut conn = match blocking_conn(&cluster) {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "cluster: cannot create the ack reader"),
    };
    let mut cursor = "$".to_string();
    let mut failures = 0u32;
    loop {
        let read = xread(&mut conn, &cluster.keys.acks, &cursor).await;
        match read {
            Ok(reply) => {
                failures = 0;
                let mut acks = cluster.invalidations.acks.lock().unwrap_or_else(|e| e.into_inner());
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in key.ids {
                        let text =
                            |k: &str| entry.map.get(k).and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
                        if let (Some(node), Some(id)) = (text("node"), text("id").as_deref().and_then(StreamId::parse))
                        {
                            let e = acks.entry(node).or_default();
                            *e = (*e).max(id);
                        }
                        cursor = entry.id;
                    }
                }
                drop(acks);
                cluster.invalidations.ack_event.notify_waiters();
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// Publishes journaled invalidations once Redis answers again.
pub(crate) async fn journal_loop(cluster: Arc<Cluster>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.metrics.journaled.set(cluster.invalidations.journal_len() as i64);
        if cluster.invalidations.journal_len() == 0 {
            continue;
        }
        let _order = cluster.invalidations.publish_lock.lock().await;
        match cluster.flush_journal().await {
            Ok(n) if n > 0 => tracing::info!(published = n, "cluster: journaled invalidations published"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn info(first: Option<u64>, last: u64, length: u64, added: Option<u64>) -> StreamInfo {
        StreamInfo { last_generated: id(last), max_deleted: None, first: first.map(id), length, entries_added: added }
    }

    #[test]
    fn history_is_lost_only_when_entries_after_the_cursor_may_be_gone() {
        // Nothing ever trimmed: a node at the very start has missed nothing.
        assert!(!info(Some(10), 20, 2, Some(2)).lost_after(StreamId::ZERO));
        // Trimmed, but the oldest remaining entry is at or before the cursor.
        assert!(!info(Some(10), 20, 2, Some(5)).lost_after(id(10)));
        assert!(!info(Some(10), 20, 2, Some(5)).lost_after(id(15)));
        // Trimmed past the cursor.
        assert!(info(Some(12), 20, 2, Some(5)).lost_after(id(10)));
        // Trimmed to nothing: lost unless the cursor is the last entry ever written.
        assert!(info(None, 20, 0, Some(2)).lost_after(id(10)));
        assert!(!info(None, 20, 0, Some(2)).lost_after(id(20)));
        // Redis 6 (no counters): conservative on the oldest entry.
        assert!(info(Some(12), 20, 2, None).lost_after(id(10)));
        assert!(!info(Some(8), 20, 2, None).lost_after(id(10)));
        // An entry deleted after the cursor.
        let mut i = info(Some(8), 20, 2, Some(3));
        i.max_deleted = Some(id(15));
        assert!(i.lost_after(id(10)));
    }
}
