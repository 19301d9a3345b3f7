//! The admin HTTP listener (`--admin-listen`): Prometheus metrics, health and readiness, HTTP
//! publish with acknowledgements, the topic list, and a lame-duck drain. One side thread with a
//! small synchronous HTTP server (tiny_http): nothing here runs on a shard's ring, and the only
//! shared state it touches is what the shards already share (the registry, the bus, the stats).
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text format (metrics-exporter-prometheus) |
//! | `GET /healthz` | 200 while every shard thread is alive, else 503 |
//! | `GET /readyz` | 200 while accepting; 503 while draining or shutting down (or a relay or an ingest not synced with its source) |
//! | `POST /publish` | publisher key as `Authorization: Bearer`; JSON, one update or a batch; answers (epoch, seq) per update |
//! | `GET /topics` | name, seq and subscribers of every topic |
//! | `POST /drain?over=120s` | stop accepting, GOAWAY spread over the window, then exit 0 |

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response};
use yorker_engine::{Server, Totals};
use yorker_relay::FeedStats;
use yorker_wire::{frame::UPDATE_HEADER_LEN, topic, update_flags};

/// Installs the process's metrics recorder (before the engine starts, so the shards' histogram
/// handles bind to it) and returns the handle that renders it.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ])
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

/// HELP text and units of every metric (docs/OPERATIONS.md lists them too).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "yorker_connections",
        "Connection slots in use (open, draining or closing), per shard."
    );
    describe_gauge!("yorker_subscriptions", "Subscriptions, per shard.");
    describe_gauge!(
        "yorker_outbox_bytes",
        Unit::Bytes,
        "Bytes queued for connections, per shard."
    );
    describe_gauge!(
        "yorker_inbound_partial_bytes",
        Unit::Bytes,
        "Bytes held in partly received frames, per shard."
    );
    describe_gauge!("yorker_relay_links", "Relay connections served, per shard.");
    describe_counter!("yorker_accepted_total", "Connections accepted.");
    describe_counter!(
        "yorker_handoffs_total",
        "Connections accepted over a full shard's cap and moved to a shard with room: out (handed to another shard), in (taken from one), failed (could not be moved: refused with server_full)."
    );
    describe_counter!(
        "yorker_refused_total",
        "Connections or sessions turned away, by reason (server_full, server_busy, auth_failed, websocket_handshake, tls)."
    );
    describe_counter!(
        "yorker_closes_total",
        "Connections closed by the server, by reason."
    );
    describe_counter!(
        "yorker_updates_published_total",
        "PUBLISH/POST accepted from this shard's connections."
    );
    describe_counter!(
        "yorker_updates_fanned_out_total",
        "Updates this shard fanned out (every shard sees every update)."
    );
    describe_counter!(
        "yorker_deliveries_total",
        "Frames queued for subscribers (updates, snapshots, replays)."
    );
    describe_counter!(
        "yorker_conflated_total",
        "Queued updates replaced by a newer one of the same topic."
    );
    describe_counter!("yorker_urgent_total", "Urgent frames queued.");
    describe_counter!("yorker_heartbeats_total", "HEARTBEAT frames sent.");
    describe_counter!(
        "yorker_sends_total",
        "Gathered sends submitted to the ring."
    );
    describe_counter!(
        "yorker_frames_sent_total",
        "Frames in those sends (frames per send = this / sends)."
    );
    describe_counter!(
        "yorker_sent_bytes_total",
        Unit::Bytes,
        "Bytes of frames handed to sends (before WebSocket headers and TLS records)."
    );
    describe_gauge!(
        "yorker_websocket_connections",
        "WebSocket connections, per shard."
    );
    describe_gauge!("yorker_tls_connections", "TLS connections, per shard.");
    describe_counter!(
        "yorker_ring_enters_total",
        "io_uring_enter calls (sends per enter = sends / this)."
    );
    describe_counter!(
        "yorker_resyncs_total",
        "Resynchronisations after a shard's inbox overflowed."
    );
    describe_counter!(
        "yorker_tokens_verified_total",
        "Token signatures checked (the rest came from the cache)."
    );
    describe_counter!(
        "yorker_messages_total",
        "Client MESSAGEs, by outcome (accepted, acknowledged, refused)."
    );
    describe_counter!(
        "yorker_posts_total",
        "POSTs, by outcome (accepted, refused)."
    );
    describe_counter!("yorker_replies_total", "REPLY frames from backends.");
    describe_counter!(
        "yorker_replies_dropped_total",
        "RESPONSEs not delivered (session gone or its queue full)."
    );
    describe_counter!(
        "yorker_control_dropped_total",
        "Control messages a shard's full queue refused."
    );
    describe_gauge!(
        "yorker_topics",
        "Topics in the registry (placeholders included)."
    );
    describe_counter!(
        "yorker_frames_encoded_total",
        "UPDATE frames encoded (once per publish, whatever the subscribers)."
    );
    describe_gauge!("yorker_up", "1 while every shard thread is alive.");
    describe_gauge!(
        "yorker_process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the process."
    );
    describe_counter!(
        "yorker_feed_total",
        "Relay feed counters (origin or relay), by counter."
    );
    describe_gauge!(
        "yorker_feed_lag_seconds",
        Unit::Seconds,
        "Relay lag of the latest update: origin accept time to applied here."
    );
    describe_counter!(
        "yorker_http_publishes_total",
        "Updates published over POST /publish."
    );
    describe_histogram!("yorker_fanout_seconds", Unit::Seconds, "Per shard and burst: from the first update taken from the inbox to the last of its sends submitted.");
    describe_histogram!(
        "yorker_fanout_spread_seconds",
        Unit::Seconds,
        "Per shard and burst: from its first send submitted to its last (first-to-last spread)."
    );
}

/// What the admin thread serves from.
pub struct AdminState {
    /// The engine.
    pub server: Arc<Server>,
    /// Renders the metrics.
    pub metrics: PrometheusHandle,
    /// The publisher key `POST /publish` requires (none: publishing over HTTP is off).
    pub publisher_key: Option<String>,
    /// The relay feed's counters (an origin or a relay).
    pub feed: Option<Arc<FeedStats>>,
    /// Set by `POST /drain`: the window; the main thread drains and exits 0.
    pub drain: Arc<Mutex<Option<Duration>>>,
    /// True while the process is not ready (draining, shutting down).
    pub not_ready: Arc<AtomicBool>,
    /// A relay: ready only while its feed is synced.
    relay: bool,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

impl AdminState {
    /// State for `server`.
    pub fn new(
        server: Arc<Server>,
        metrics: PrometheusHandle,
        publisher_key: Option<String>,
        feed: Option<Arc<FeedStats>>,
        relay: bool,
    ) -> AdminState {
        AdminState {
            server,
            metrics,
            publisher_key,
            feed,
            relay,
            drain: Arc::new(Mutex::new(None)),
            not_ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The running admin listener.
pub struct Admin {
    http: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

/// How often the admin thread folds recorded histogram samples into their buckets. The
/// recorder keeps raw samples until then (or until a scrape renders them): without it, a server
/// nobody scrapes would hold every fan-out sample it ever recorded.
const UPKEEP: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("addr", &self.addr).finish()
    }
}

impl Admin {
    /// Binds `addr` and serves from `state` on a thread of its own.
    pub fn start(addr: SocketAddr, state: Arc<AdminState>) -> Result<Admin, String> {
        let http =
            tiny_http::Server::http(addr).map_err(|e| format!("--admin-listen {addr}: {e}"))?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| "--admin-listen: not an IP address".to_string())?;
        let http = Arc::new(http);
        let h = http.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("yorker-admin".into())
            .spawn(move || {
                let mut upkeep = std::time::Instant::now();
                while !stopped.load(Ordering::Acquire) {
                    match h.recv_timeout(UPKEEP) {
                        Ok(Some(req)) => handle(&state, req),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("admin listener: {e}"),
                    }
                    if upkeep.elapsed() >= UPKEEP {
                        state.metrics.run_upkeep();
                        upkeep = std::time::Instant::now();
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Admin {
            http,
            thread: Some(thread),
            addr,
            stop,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.http.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reply(req: Request, status: u16, body: Value) {
    let ct = Header::from_bytes("Content-Type", "application/json").expect("static header");
    let _ = req.respond(
        Response::from_string(body.to_string())
            .with_status_code(status)
            .with_header(ct),
    );
}

fn text(req: Request, status: u16, body: String, content_type: &str) {
    let ct = Header::from_bytes("Content-Type", content_type).expect("static header");
    let _ = req.respond(
        Response::from_string(body)
            .with_status_code(status)
            .with_header(ct),
    );
}

/// Largest request body accepted (a batch of publishes).
const MAX_BODY: u64 = 8 * 1024 * 1024;

fn handle(st: &AdminState, mut req: Request) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    match (req.method(), path) {
        (Method::Get, "/metrics") => {
            export(st);
            text(
                req,
                200,
                st.metrics.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        (Method::Get, "/healthz") => {
            let dead = st.server.dead_shards();
            if dead.is_empty() {
                reply(req, 200, json!({"status": "ok"}))
            } else {
                reply(req, 503, json!({"status": "shard dead", "shards": dead}))
            }
        }
        (Method::Get, "/readyz") => {
            let unsynced = st.relay
                && st
                    .feed
                    .as_ref()
                    .is_none_or(|f| !f.synced.load(Ordering::Acquire));
            if st.not_ready.load(Ordering::SeqCst) || st.server.is_shutting_down() {
                reply(req, 503, json!({"ready": false, "why": "draining"}))
            } else if unsynced {
                reply(
                    req,
                    503,
                    json!({"ready": false, "why": "feed not synced (a relay behind its upstream, or an ingest away from its source)"}),
                )
            } else {
                reply(req, 200, json!({"ready": true}))
            }
        }
        (Method::Get, "/topics") => {
            let reg = st.server.registry();
            let mut topics: Vec<Value> = reg
                .all()
                .iter()
                .map(|t| {
                    json!({
                        "name": &*t.name,
                        "id": t.id,
                        "seq": reg.seq(t),
                        "subscribers": reg.presence(t.id).members,
                    })
                })
                .collect();
            topics.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            reply(req, 200, json!({"epoch": reg.epoch(), "topics": topics}))
        }
        (Method::Post, "/publish") => {
            let body = match read_body(&mut req) {
                Ok(b) => b,
                Err((code, why)) => return reply(req, code, json!({"error": why})),
            };
            let authorised = st.publisher_key.as_deref().is_some_and(|k| {
                req.headers().iter().any(|h| {
                    h.field.equiv("Authorization")
                        && constant_time_eq(
                            h.value.as_str().as_bytes(),
                            format!("Bearer {k}").as_bytes(),
                        )
                })
            });
            if !authorised {
                return reply(
                    req,
                    401,
                    json!({"error": "Authorization: Bearer <publisher key> required"}),
                );
            }
            match publish(st, &body) {
                Ok(v) => reply(req, 200, v),
                Err(why) => reply(req, 400, json!({"error": why})),
            }
        }
        (Method::Post, "/drain") => {
            let over = match parse_over(query) {
                Ok(d) => d,
                Err(why) => return reply(req, 400, json!({"error": why})),
            };
            st.not_ready.store(true, Ordering::SeqCst);
            *st.drain.lock().unwrap_or_else(|e| e.into_inner()) = Some(over);
            tracing::info!(
                over_ms = over.as_millis() as u64,
                "drain requested over HTTP: not ready, GOAWAY spread over the window, then exit 0"
            );
            reply(
                req,
                202,
                json!({"draining": true, "over_ms": over.as_millis() as u64}),
            )
        }
        _ => reply(req, 404, json!({"error": "no such endpoint"})),
    }
}

fn read_body(req: &mut Request) -> Result<Vec<u8>, (u16, String)> {
    if req.body_length().is_some_and(|n| n as u64 > MAX_BODY) {
        return Err((413, format!("body larger than {MAX_BODY} bytes")));
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| (400, e.to_string()))?;
    if body.len() as u64 > MAX_BODY {
        return Err((413, format!("body larger than {MAX_BODY} bytes")));
    }
    Ok(body)
}

/// `over=120s`, `over=500ms`, `over=2m` or plain seconds; at most an hour.
fn parse_over(query: &str) -> Result<Duration, String> {
    let v = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("over="))
        .unwrap_or("30s");
    let (num, unit) = v
        .find(|c: char| !c.is_ascii_digit())
        .map_or((v, "s"), |i| (&v[..i], &v[i..]));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("over={v}: expected e.g. 120s, 500ms or 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("over={v}: unit must be ms, s or m")),
    };
    if d > Duration::from_secs(3600) {
        return Err("over: at most 1 hour".into());
    }
    Ok(d)
}

/// Applies one update or a batch: `{"topic", "payload" | "payload_base64", "urgent",
/// "broadcast", "idempotency_key"}` or `{"updates": [...]}`. Each is published exactly like a
/// PUBLISH (sequence number, one encode, every core's inbox) and answered with its seq.
fn publish(st: &AdminState, body: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let (batch, items): (bool, Vec<Value>) = match v.get("updates") {
        Some(Value::Array(a)) => (true, a.clone()),
        Some(_) => return Err("\"updates\" must be an array".into()),
        None => (false, vec![v]),
    };
    if items.len() > 10_000 {
        return Err("at most 10,000 updates per request".into());
    }
    let reg = st.server.registry();
    let max_payload = st.server.max_frame() as usize + 4 - UPDATE_HEADER_LEN;
    let mut results = Vec::with_capacity(items.len());
    for it in &items {
        results.push(match publish_one(st, it, max_payload) {
            Ok((seq, repeated)) => json!({"seq": seq, "duplicate": repeated}),
            Err(e) => json!({"error": e}),
        });
    }
    let epoch = reg.epoch();
    if batch {
        Ok(json!({"epoch": epoch, "results": results}))
    } else {
        let r = results.pop().expect("one item");
        if let Some(e) = r.get("error") {
            return Err(e.as_str().unwrap_or("refused").to_string());
        }
        Ok(json!({"epoch": epoch, "seq": r["seq"], "duplicate": r["duplicate"]}))
    }
}

fn publish_one(st: &AdminState, it: &Value, max_payload: usize) -> Result<(u64, bool), String> {
    use base64::Engine;
    let name = it
        .get("topic")
        .and_then(Value::as_str)
        .ok_or("\"topic\" (a string) is required")?;
    topic::validate(name).map_err(|e| e.to_string())?;
    let payload: Vec<u8> = match (it.get("payload"), it.get("payload_base64")) {
        (Some(Value::String(s)), None) => s.as_bytes().to_vec(),
        (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("payload_base64: {e}"))?,
        _ => return Err("exactly one of \"payload\" (text) or \"payload_base64\"".into()),
    };
    if payload.len() > max_payload {
        return Err(format!(
            "payload of {} bytes exceeds {max_payload}",
            payload.len()
        ));
    }
    let flag = |k: &str| it.get(k).and_then(Value::as_bool).unwrap_or(false);
    let mut flags = 0;
    if flag("urgent") {
        flags |= update_flags::URGENT;
    }
    if flag("broadcast") {
        flags |= update_flags::BROADCAST;
    }
    let key = match it.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 200 => Some(k.clone()),
        _ => return Err("idempotency_key must be a string of 1 to 200 bytes".into()),
    };
    let reg = st.server.registry();
    let t = reg.get_or_create(name).map_err(|e| e.to_string())?;
    if let Some(why) = t.fed_refusal() {
        return Err(why);
    }
    let unix_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let bus = st.server.bus();
    // The same window as POST's keys on the binary protocol: a retry may come either way.
    let (seq, duplicate) =
        reg.publish_once(key.as_deref(), &t, flags, &payload, unix_us, &mut |m| {
            bus.publish(m)
        });
    if !duplicate {
        metrics::counter!("yorker_http_publishes_total").increment(1);
    }
    Ok((seq, duplicate))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Copies the engine's counters into the recorder (absolute values: they are monotonic in the
/// engine), per shard.
fn export(st: &AdminState) {
    use metrics::{counter, gauge};
    for (i, (c, enters)) in st.server.shard_stats().iter().enumerate() {
        let s = i.to_string();
        gauge!("yorker_connections", "shard" => s.clone()).set(c.connections as f64);
        gauge!("yorker_subscriptions", "shard" => s.clone()).set(c.subscriptions as f64);
        gauge!("yorker_outbox_bytes", "shard" => s.clone()).set(c.outbox_bytes as f64);
        gauge!("yorker_inbound_partial_bytes", "shard" => s.clone()).set(c.inbound_bytes as f64);
        gauge!("yorker_relay_links", "shard" => s.clone()).set(c.relay_links as f64);
        counter!("yorker_accepted_total", "shard" => s.clone()).absolute(c.accepted);
        for (dir, v) in [
            ("out", c.handed_off),
            ("in", c.handed_in),
            ("failed", c.handoff_failed),
        ] {
            counter!("yorker_handoffs_total", "shard" => s.clone(), "direction" => dir).absolute(v);
        }
        for (reason, v) in [
            ("server_full", c.refused_full),
            ("server_busy", c.refused_busy),
            ("auth_failed", c.auth_refused),
        ] {
            counter!("yorker_refused_total", "shard" => s.clone(), "reason" => reason).absolute(v);
        }
        for (reason, v) in [
            ("slow_consumer", c.slow_disconnects),
            ("shard_outbox_cap", c.cap_disconnects),
            ("write_timeout", c.write_timeouts),
            ("frame_timeout", c.frame_timeouts),
            ("inbound_cap", c.inbound_cap_closes),
            ("token_expired", c.tokens_expired),
            ("error", c.errors_sent),
        ] {
            counter!("yorker_closes_total", "shard" => s.clone(), "reason" => reason).absolute(v);
        }
        counter!("yorker_updates_published_total", "shard" => s.clone()).absolute(c.updates_in);
        counter!("yorker_updates_fanned_out_total", "shard" => s.clone())
            .absolute(c.updates_fanned_out);
        counter!("yorker_deliveries_total", "shard" => s.clone()).absolute(c.deliveries);
        counter!("yorker_conflated_total", "shard" => s.clone()).absolute(c.conflated);
        counter!("yorker_urgent_total", "shard" => s.clone()).absolute(c.urgent);
        counter!("yorker_heartbeats_total", "shard" => s.clone()).absolute(c.heartbeats);
        counter!("yorker_sends_total", "shard" => s.clone()).absolute(c.sends);
        counter!("yorker_frames_sent_total", "shard" => s.clone()).absolute(c.frames_sent);
        counter!("yorker_sent_bytes_total", "shard" => s.clone()).absolute(c.bytes_sent);
        gauge!("yorker_websocket_connections", "shard" => s.clone()).set(c.ws_connections as f64);
        gauge!("yorker_tls_connections", "shard" => s.clone()).set(c.tls_connections as f64);
        counter!("yorker_refused_total", "shard" => s.clone(), "reason" => "websocket_handshake")
            .absolute(c.ws_refused);
        counter!("yorker_refused_total", "shard" => s.clone(), "reason" => "tls")
            .absolute(c.tls_refused);
        counter!("yorker_ring_enters_total", "shard" => s.clone()).absolute(*enters);
        counter!("yorker_resyncs_total", "shard" => s.clone()).absolute(c.resyncs);
        counter!("yorker_tokens_verified_total", "shard" => s.clone()).absolute(c.tokens_verified);
        for (outcome, v) in [
            ("accepted", c.messages_in),
            ("acknowledged", c.messages_acked),
            ("refused", c.messages_refused),
        ] {
            counter!("yorker_messages_total", "shard" => s.clone(), "outcome" => outcome)
                .absolute(v);
        }
        counter!("yorker_posts_total", "shard" => s.clone(), "outcome" => "accepted")
            .absolute(c.posts);
        counter!("yorker_posts_total", "shard" => s.clone(), "outcome" => "refused")
            .absolute(c.posts_refused);
        counter!("yorker_replies_total", "shard" => s.clone()).absolute(c.replies);
        counter!("yorker_replies_dropped_total", "shard" => s.clone()).absolute(c.replies_dropped);
        counter!("yorker_control_dropped_total", "shard" => s.clone()).absolute(c.control_dropped);
    }
    let t: Totals = st.server.totals();
    gauge!("yorker_topics").set(t.topics as f64);
    counter!("yorker_frames_encoded_total").absolute(t.frames_encoded);
    gauge!("yorker_up").set(if st.server.dead_shards().is_empty() {
        1.0
    } else {
        0.0
    });
    if let Some(rss) = rss_bytes() {
        gauge!("yorker_process_resident_memory_bytes").set(rss as f64);
    }
    if let Some(f) = &st.feed {
        for (name, v) in f.counters() {
            counter!("yorker_feed_total", "counter" => name).absolute(v);
        }
        gauge!("yorker_feed_lag_seconds").set(f.lag_us() as f64 / 1e6);
    }
}

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_windows_parse() {
        assert_eq!(parse_over("over=120s").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_over("x=1&over=500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_over("over=2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_over("over=7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_over("").unwrap(), Duration::from_secs(30));
        assert!(parse_over("over=2h").is_err());
        assert!(parse_over("over=99m").is_err());
        assert!(parse_over("over=s").is_err());
    }
}
