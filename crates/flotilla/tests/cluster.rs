//! Several Flotilla nodes sharing state through a real `redis-server` (started by each test on
//! a free loopback port): invalidations reach every node before the API answers, a restarted
//! node replays what it missed (or drops its cache when the stream no longer reaches back), a
//! node cut off from Redis by a real blackholing TCP proxy catches up when the partition heals,
//! the shared rate limit holds across nodes and degrades to per-node shares without Redis, and a
//! sticky cookie set by one node is honoured by another.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy in front of Redis that can be cut like a network partition: while cut it stops
/// forwarding (open connections go silent, new ones are accepted and never answered), so the node
/// sees timeouts, not resets; healing drops the silent connections, as TCP would in the end.
struct Partition {
    port: u16,
    cut: watch::Sender<bool>,
}

impl Partition {
    async fn start(upstream: u16) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(false);
        let cut_rx = cut.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    let blackholed = *cut.borrow();
                    if blackholed {
                        // Blackholed: hold the socket, say nothing, drop it when the cut heals.
                        let _ = cut.wait_for(|c| !*c).await.map(|_| ());
                        drop(client);
                        return;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let (mut client, mut server) = (client, server);
                    let was_cut = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        r = cut.wait_for(|c| *c) => r.is_ok(),
                    };
                    if was_cut {
                        let _ = cut.wait_for(|c| !*c).await.map(|_| ());
                    }
                });
            }
        });
        Partition { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

const BEHAVIOR: &str = "[cache_behaviors.main]\ndefault_ttl = \"1h\"\n\n";

struct Node {
    name: String,
    dir: PathBuf,
    text: String,
    port: u16,
    admin_port: u16,
    f: Option<Flotilla>,
}

impl Node {
    /// A cluster node in front of `apps`, talking to Redis at `redis_url`; `extra` goes into
    /// `[cluster]`, `body` after the route.
    fn new(name: &str, redis_url: &str, apps: &[&DemoApp], extra: &str, body: &str) -> Node {
        let port = free_port();
        let admin_port = free_port();
        let dir = scratch_dir(&format!("cluster-{name}"));
        let text = format!(
            "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n\
             [cluster]\nnode = \"{name}\"\nredis = \"{redis_url}\"\nheartbeat = \"300ms\"\nsecret = \"s3cret\"\n{extra}\n\n\
             {BEHAVIOR}{body}{}",
            group_toml("web", apps, "")
        );
        Node { name: name.into(), dir, text, port, admin_port, f: None }
    }

    async fn up(&mut self, apps: &[&DemoApp]) -> &Flotilla {
        let f = Flotilla::start_raw(&self.name, &self.dir, &self.text, self.port, self.admin_port);
        for app in apps {
            f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
        }
        self.f = Some(f);
        self.f.as_ref().unwrap()
    }

    fn f(&self) -> &Flotilla {
        self.f.as_ref().expect("node is up")
    }

    fn stop(&mut self) {
        if let Some(mut f) = self.f.take() {
            f.proc.signal("TERM");
            assert_eq!(f.proc.wait_exit(Duration::from_secs(15)), Some(0), "{}", f.log());
        }
    }

    /// `Cache-Status` of a GET through this node.
    async fn cache_status(&self, path: &str) -> String {
        let (status, h, body) = request(&client(), "GET", &self.f().url(path), &[], "").await.unwrap();
        assert_eq!(status, 200, "{body}");
        h.get("cache-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    }

    async fn invalidate(&self, body: &str) -> serde_json::Value {
        let (code, text) = self.f().admin_call("POST", "/api/v1/invalidations", body).await;
        assert_eq!(code, 202, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

const CACHED_ROUTE: &str = "[[routes]]\npath = \"/*\"\ntarget_group = \"web\"\ncache = \"main\"\n\n";

fn names(v: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    n.sort();
    n
}

/// Waits until `check` holds (polling), or fails with `what`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_members(node: &Node, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = get(&node.f().admin("/api/v1/cluster")).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if code == 200 && v["nodes"].as_array().is_some_and(|a| a.len() == n) {
            return v;
        }
        assert!(Instant::now() < deadline, "{n} nodes never listed: {code} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_is_in_effect_on_every_node_before_the_api_answers() {
    let Some(redis) = Redis::start("inval") else { return };
    let app = DemoApp::start("origin");
    // Disk tiers too: a disk write still under way must not bring an invalidated object back.
    let body = format!("[cache]\ndisk = {{ path = \"cache\", size = \"64MiB\" }}\n\n{CACHED_ROUTE}");
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::new(n, &redis.url(), &[&app], "", &body)).collect();
    for n in &mut nodes {
        n.up(&[&app]).await;
    }
    let cluster = wait_members(&nodes[0], 3).await;
    for row in cluster["nodes"].as_array().unwrap() {
        assert_eq!(row["config_differs"], false, "same routes and groups on every node: {cluster}");
        assert_eq!(row["address"].as_str().unwrap().parse::<SocketAddr>().unwrap().ip().to_string(), "127.0.0.1");
    }

    for round in 0..20 {
        let tagged = format!("/cached?cc=max-age=600&tag=t{round}&r={round}");
        let by_path = format!("/cached?cc=max-age=600&r={round}");
        for n in &nodes {
            n.cache_status(&tagged).await;
            n.cache_status(&by_path).await;
            assert!(n.cache_status(&tagged).await.starts_with("flotilla; hit"));
        }
        // Tags on one node, paths (a pattern) on another: gone everywhere before the 202.
        let (origin, body) = if round % 2 == 0 {
            (&nodes[round % 3], format!("{{\"tags\":[\"t{round}\"]}}"))
        } else {
            (&nodes[round % 3], "{\"paths\":[\"/cach*\"]}".to_string())
        };
        let answer = origin.invalidate(&body).await;
        assert_eq!(answer["status"], "completed", "{answer}");
        assert_eq!(names(&answer["cluster"]["applied"]), ["a", "b", "c"], "{answer}");
        assert!(answer["cluster"]["pending"].as_array().unwrap().is_empty());
        for n in &nodes {
            let cs = n.cache_status(&tagged).await;
            assert!(cs.contains("fwd=miss"), "node {} still served {tagged} after the answer: {cs}", n.name);
        }
        if round % 2 == 1 {
            for n in &nodes {
                assert!(n.cache_status(&by_path).await.contains("fwd=miss"), "node {}", n.name);
            }
        }
    }
    let m = get(&nodes[1].f().admin("/metrics")).await.1;
    assert!(m.contains("flotilla_cluster_redis_up 1"), "{m}");
    assert!(m.contains("flotilla_cluster_nodes 3"), "{m}");
    // Node b took 7 of the 20 itself (rounds 1, 4, …) and applied the other 13.
    assert_eq!(metric_value(&m, "flotilla_cluster_invalidations_applied_total"), Some(13), "{m}");
    // A deployment (invalidate everything) goes cluster-wide too.
    for n in &nodes {
        n.cache_status("/cached?cc=max-age=600&deploy=1").await;
    }
    let (code, text) = nodes[2].f().admin_call("POST", "/api/v1/deployments", "").await;
    assert_eq!(code, 202, "{text}");
    assert!(text.contains("\"completed\""), "{text}");
    for n in &nodes {
        assert!(n.cache_status("/cached?cc=max-age=600&deploy=1").await.contains("fwd=miss"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_replays_what_it_missed_or_drops_its_cache() {
    let Some(redis) = Redis::start("restart") else { return };
    let app = DemoApp::start("origin");
    let disk = "[cache]\ndisk = { path = \"cache\", size = \"64MiB\" }\n\n";
    let mut a = Node::new("a", &redis.url(), &[&app], "", CACHED_ROUTE);
    let mut b = Node::new("b", &redis.url(), &[&app], "", &format!("{disk}{CACHED_ROUTE}"));
    a.up(&[&app]).await;
    b.up(&[&app]).await;
    for q in ["tag=gone&x=1", "tag=kept&x=2", "tag=third&x=3"] {
        b.cache_status(&format!("/cached?cc=max-age=600&{q}")).await;
    }
    eventually(Duration::from_secs(10), "objects written to disk", || async {
        get(&b.f().admin("/metrics")).await.1.contains("flotilla_cache_disk_objects 3")
    })
    .await;
    b.stop();

    // While b is down: it is not waited for, and the invalidation is in the stream for it.
    let answer = a.invalidate("{\"tags\":[\"gone\"]}").await;
    assert_eq!(answer["status"], "completed", "{answer}");
    assert_eq!(names(&answer["cluster"]["applied"]), ["a"], "{answer}");
    b.up(&[&app]).await;
    assert!(b.cache_status("/cached?cc=max-age=600&tag=gone&x=1").await.contains("fwd=miss"), "replayed on restart");
    let kept = b.cache_status("/cached?cc=max-age=600&tag=kept&x=2").await;
    assert!(kept.starts_with("flotilla; hit"), "the disk cache survived the restart: {kept}");

    // Down again, and the stream is trimmed past b's last id: b cannot know what it missed.
    b.stop();
    a.invalidate("{\"tags\":[\"elsewhere\"]}").await;
    let key = "flotilla:invalidations";
    assert_eq!(redis.cli(&["XTRIM", key, "MAXLEN", "0"]), "2");
    b.up(&[&app]).await;
    let third = b.cache_status("/cached?cc=max-age=600&tag=third&x=3").await;
    assert!(third.contains("fwd=miss"), "history lost: the whole cache must go: {third}");
    let m = get(&b.f().admin("/metrics")).await.1;
    assert!(m.contains("flotilla_cluster_cache_drops_total 1"), "{m}");
    assert!(b.f().log().contains("dropping the whole cache"), "{}", b.f().log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_catches_up_when_the_partition_heals() {
    let Some(redis) = Redis::start("partition") else { return };
    let app = DemoApp::start("origin");
    let proxy = Partition::start(redis.port).await;
    let wait = "invalidation_wait = \"3s\"";
    let mut a = Node::new("a", &redis.url(), &[&app], wait, CACHED_ROUTE);
    let mut c = Node::new("c", &format!("redis://127.0.0.1:{}/0", proxy.port), &[&app], wait, CACHED_ROUTE);
    a.up(&[&app]).await;
    c.up(&[&app]).await;
    wait_members(&a, 2).await;
    let p1 = "/cached?cc=max-age=600&tag=p1";
    let p2 = "/cached?cc=max-age=600&tag=p2";
    for n in [&a, &c] {
        n.cache_status(p1).await;
        n.cache_status(p2).await;
    }

    proxy.set_cut(true);
    // a does not hang on c: once c's heartbeat lapses it is no longer waited for.
    let answer = a.invalidate("{\"tags\":[\"p1\"]}").await;
    assert!(!names(&answer["cluster"]["applied"]).contains(&"c".to_string()), "{answer}");
    assert!(answer["cluster"]["wait_ms"].as_f64().unwrap() <= 3_500.0, "{answer}");
    // c really is cut off: it still serves the object invalidated elsewhere.
    assert!(c.cache_status(p1).await.starts_with("flotilla; hit"));
    // An invalidation taken by c while cut off is applied there and journaled.
    let local = c.invalidate("{\"tags\":[\"p2\"]}").await;
    assert_eq!(local["status"], "local", "{local}");
    assert_eq!(local["cluster"]["journaled"], 1, "{local}");
    // The CLI says so too, and fails, so a deploy script does not take it for done.
    let cli = Command::new(BIN)
        .args(["invalidate", "--config", c.f().config.to_str().unwrap(), "--tag", "p3"])
        .output()
        .unwrap();
    assert!(!cli.status.success());
    let err = String::from_utf8_lossy(&cli.stderr);
    assert!(err.contains("applied on this node only"), "{err}");
    assert!(c.cache_status(p2).await.contains("fwd=miss"));
    assert!(a.cache_status(p2).await.starts_with("flotilla; hit"));
    let m = get(&c.f().admin("/metrics")).await.1;
    assert!(m.contains("flotilla_cluster_invalidations_journaled 2"), "{m}");

    proxy.set_cut(false);
    // c catches up on p1, and a receives c's journaled p2.
    eventually(Duration::from_secs(20), "c applies the invalidation it missed", || async {
        c.cache_status(p1).await.contains("fwd=miss")
    })
    .await;
    eventually(Duration::from_secs(20), "c's journaled invalidation reaches a", || async {
        a.cache_status(p2).await.contains("fwd=miss")
    })
    .await;
    let cluster = wait_members(&a, 2).await;
    assert_eq!(cluster["invalidations_journaled"], 0, "{cluster}");
    let m = get(&c.f().admin("/metrics")).await.1;
    assert!(m.contains("flotilla_cluster_invalidations_journaled 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_nodes_and_falls_back_to_shares_without_redis() {
    let Some(mut redis) = Redis::start("ratelimit") else { return };
    let app = DemoApp::start("origin");
    // Ten requests, then one a minute: nothing refills during the test.
    let route = "[[routes]]\npath = \"/*\"\ntarget_group = \"web\"\nrate_limit = { rate = \"1/min\", burst = 9, key = \"header:X-Api-Key\" }\n\n";
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::new(n, &redis.url(), &[&app], "", route)).collect();
    for n in &mut nodes {
        n.up(&[&app]).await;
    }
    wait_members(&nodes[0], 3).await;
    let http = client();
    let mut passed = 0;
    let mut statuses = Vec::new();
    for i in 0..30 {
        let n = &nodes[i % 3];
        let (s, _, _) = request(&http, "GET", &n.f().url("/whoami"), &[("x-api-key", "k1")], "").await.unwrap();
        statuses.push(s);
        passed += usize::from(s == 200);
    }
    assert_eq!(passed, 9, "one burst of 9 across all three nodes: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");

    // Redis gone: every node keeps answering, enforcing a third of the limit on its own.
    redis.stop();
    let mut per_node = Vec::new();
    for n in &nodes {
        let mut ok = 0;
        for _ in 0..10 {
            let (s, _, _) = request(&http, "GET", &n.f().url("/whoami"), &[("x-api-key", "k2")], "").await.unwrap();
            assert!(s == 200 || s == 429, "{s}");
            ok += usize::from(s == 200);
        }
        per_node.push(ok);
    }
    assert_eq!(per_node, [3, 3, 3], "each node allows its share of the burst of 9");
    let m = get(&nodes[0].f().admin("/metrics")).await.1;
    let fallbacks = metric_value(&m, "flotilla_cluster_ratelimit_fallbacks_total").unwrap_or(0);
    assert!(fallbacks >= 10, "{m}");
    assert!(nodes[0].f().log().contains("rate limits fall back to this node's share"));

    // Redis returns (empty): the nodes notice by themselves; the limit is shared again and an
    // invalidation is acknowledged by all three.
    redis.run();
    for n in &nodes {
        eventually(Duration::from_secs(15), "Redis seen again", || async {
            get(&n.f().admin("/metrics")).await.1.contains("flotilla_cluster_redis_up 1")
        })
        .await;
    }
    wait_members(&nodes[0], 3).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // the limiter's pause after a failure
    let mut passed = 0;
    for i in 0..30 {
        let n = &nodes[i % 3];
        let (s, _, _) = request(&http, "GET", &n.f().url("/whoami"), &[("x-api-key", "k3")], "").await.unwrap();
        passed += usize::from(s == 200);
    }
    assert_eq!(passed, 9, "one shared burst again once Redis is back");
    let answer = nodes[1].invalidate("{\"paths\":[\"/*\"]}").await;
    assert_eq!(answer["status"], "completed", "{answer}");
    assert_eq!(names(&answer["cluster"]["applied"]), ["a", "b", "c"], "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_set_by_one_node_is_honoured_by_another() {
    let Some(redis) = Redis::start("sticky") else { return };
    let apps = [DemoApp::start("s1"), DemoApp::start("s2"), DemoApp::start("s3")];
    let refs: Vec<&DemoApp> = apps.iter().collect();
    let route = "[[routes]]\npath = \"/*\"\ntarget_group = \"web\"\n\n";
    let sticky = "stickiness = { enabled = true, cookie = \"lb\", duration = \"1h\" }\n";
    let make = |name: &str| {
        let mut n = Node::new(name, &redis.url(), &refs, "", route);
        n.text = n.text.replace("[target_groups.web]\n", &format!("[target_groups.web]\n{sticky}"));
        assert!(n.text.contains("stickiness"), "{}", n.text);
        n
    };
    let (mut a, mut b) = (make("a"), make("b"));
    a.up(&refs).await;
    b.up(&refs).await;
    let http = client();
    let (_, h, first) = request(&http, "GET", &a.f().url("/whoami"), &[], "").await.unwrap();
    let set = h.get("set-cookie").expect("sticky cookie").to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(!cookie.contains("127.0.0.1"), "the cookie must not reveal the address: {cookie}");
    for _ in 0..12 {
        let (_, h, body) = request(&http, "GET", &b.f().url("/whoami"), &[("cookie", &cookie)], "").await.unwrap();
        assert_eq!(body, first, "node b must send a's sticky client to the same target");
        assert!(h.get("set-cookie").is_none(), "b honours the cookie, it does not replace it");
    }
    // A forged value is not honoured (and is replaced).
    let (_, h, _) =
        request(&http, "GET", &b.f().url("/whoami"), &[("cookie", "lb=0123456789abcdef01234567")], "").await.unwrap();
    assert!(h.get("set-cookie").is_some());
    drop(redis);
}

/// Without `[cluster]` nothing about Redis exists: the cluster endpoint says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_has_no_cluster() {
    let app = DemoApp::start("origin");
    let f = Flotilla::start("no-cluster", &(CACHED_ROUTE.to_string() + BEHAVIOR + &group_toml("web", &[&app], "")));
    let (code, body) = get(&f.admin("/api/v1/cluster")).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not part of a cluster"));
    let m = get(&f.admin("/metrics")).await.1;
    assert!(!m.contains("flotilla_cluster_"), "{m}");
}

/// CloudFront's Origin Shield: three edges whose cached routes ask one parent node first. A burst
/// of misses for the same object on all three costs the origin one request; with the parent
/// killed, the edges go straight to the origin and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_behind_a_shield_cost_the_origin_one_request_per_object() {
    let app = DemoApp::start("origin");
    let body = format!("{BEHAVIOR}{CACHED_ROUTE}{}", group_toml("web", &[&app], ""));
    let mut parent = Flotilla::start("shield-parent", &body);
    parent.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let child_body =
        format!("[cache]\nparent = \"http://127.0.0.1:{}\"\nparent_timeout = \"1s\"\n\n{body}", parent.port);
    let children: Vec<Flotilla> = (0..3).map(|i| Flotilla::start(&format!("shield-child-{i}"), &child_body)).collect();
    let parent_addr = format!("127.0.0.1:{}", parent.port);
    for c in &children {
        c.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
        c.wait_target_state("flotilla-shield", &parent_addr, "healthy", Duration::from_secs(10)).await;
    }
    let http = client();
    for obj in 0..3 {
        // The origin takes 300 ms, so the 30 requests overlap: each child coalesces its ten into
        // one request to the parent, and the parent coalesces the three into one origin fetch.
        // Clients name the site as they would behind one DNS name (each child has its own port
        // here, and a port that is not the default is part of the cache key).
        let path = format!("/cached?cc=max-age=600&ms=300&obj={obj}");
        let mut burst = Vec::new();
        for i in 0..30 {
            let url = children[i % 3].url(&path);
            let http = http.clone();
            burst
                .push(tokio::spawn(async move { request(&http, "GET", &url, &[("host", "site")], "").await.unwrap() }));
        }
        let mut bodies = std::collections::BTreeSet::new();
        for r in burst {
            let (status, _, body) = r.await.unwrap();
            assert_eq!(status, 200, "{body}");
            bodies.insert(body);
        }
        assert_eq!(bodies.len(), 1, "one origin response for object {obj}, got {bodies:?}");
    }
    let m = get(&parent.admin("/metrics")).await.1;
    assert!(m.contains("flotilla_cache_requests_total{behavior=\"main\",result=\"miss\"} 3"), "{m}");
    for c in &children {
        let m = get(&c.admin("/metrics")).await.1;
        assert!(m.contains("flotilla_cache_shield_parent_total 3"), "{m}");
        assert!(m.contains("flotilla_cache_shield_fallbacks_total 0"), "{m}");
    }

    // The parent stalls (stopped: the kernel still accepts its connections, nothing answers).
    // A miss waits `parent_timeout` at most, then asks the origin; nothing fails.
    let pid = parent.proc.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let mut stalled = Vec::new();
    for (i, c) in children.iter().enumerate() {
        let (http, url) = (http.clone(), c.url(&format!("/cached?cc=max-age=600&stalled={i}")));
        stalled.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = request(&http, "GET", &url, &[], "").await.unwrap();
            (r, started.elapsed())
        }));
    }
    for r in stalled {
        let ((status, _, body), took) = r.await.unwrap();
        assert_eq!(status, 200, "a miss failed while the parent stalled: {body}");
        eprintln!("miss during the stall answered in {took:?}");
        // Without the bound it would wait for `timeouts.target_response` (60 s).
        assert!(took < Duration::from_secs(15), "a miss waited {took:?} on a stalled parent");
    }

    // The parent dies: misses go to the origin, nothing fails.
    parent.proc.kill9();
    for i in 0..30 {
        let c = &children[i % 3];
        let (status, _, body) =
            request(&http, "GET", &c.url(&format!("/cached?cc=max-age=600&after={i}")), &[], "").await.unwrap();
        assert_eq!(status, 200, "request {i} failed with the parent down: {body}");
    }
    for c in &children {
        let m = get(&c.admin("/metrics")).await.1;
        let fallbacks = metric_value(&m, "flotilla_cache_shield_fallbacks_total");
        assert_eq!(fallbacks, Some(11), "the stalled miss and the ten after the parent died: {m}");
    }
}

/// `scope = "cluster"`: an SLO judged on every node's requests. Traffic goes through node b
/// only; node a's cluster-scoped SLO sees b's errors, its node-scoped one sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_scoped_slo_counts_every_nodes_requests() {
    let Some(redis) = Redis::start("slo") else { return };
    let app = DemoApp::start("origin");
    let body = "[watch]\nresolution = \"250ms\"\n\n\
        [[slos]]\nname = \"cluster-avail\"\ntarget_group = \"web\"\nobjective = \"99%\"\nkind = \"availability\"\nscope = \"cluster\"\n\n\
        [[slos]]\nname = \"node-avail\"\ntarget_group = \"web\"\nobjective = \"99%\"\nkind = \"availability\"\n\n\
        [[routes]]\npath = \"/*\"\ntarget_group = \"web\"\n\n";
    let mut a = Node::new("a", &redis.url(), &[&app], "", body);
    let mut b = Node::new("b", &redis.url(), &[&app], "", body);
    a.up(&[&app]).await;
    b.up(&[&app]).await;
    wait_members(&a, 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // both nodes have seen each other's counters
    for i in 0..40 {
        let path = if i % 4 == 3 { "/status/500" } else { "/whoami" };
        get(&b.f().url(path)).await;
    }
    let slo = |v: &serde_json::Value, name: &str| {
        v["slos"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value = serde_json::from_str(&get(&a.f().admin("/api/v1/slos")).await.1).unwrap();
        let cluster = slo(&v, "cluster-avail");
        if cluster["attainment"].as_f64().is_some_and(|x| (0.70..=0.80).contains(&x)) {
            assert!(slo(&v, "node-avail")["attainment"].is_null(), "node a served nothing itself: {v}");
            break;
        }
        assert!(Instant::now() < deadline, "node a's cluster SLO never saw b's errors: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // /metrics stays per node: the cluster series feed the watch only.
    assert!(!get(&a.f().admin("/metrics")).await.1.contains("flotilla_cluster_http_requests"));
}

/// `scope = "cluster"` on an alarm: every node judges it on the cluster's 5xx rate (traffic goes
/// through node b only, node a's alarm fires too), and the webhook gets one notification per
/// change — from the node leading the cluster's watch — not one per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_scoped_alarm_fires_on_every_node_and_notifies_once() {
    let Some(redis) = Redis::start("alarm") else { return };
    let app = DemoApp::start("origin");
    let (hook_port, mut hooks) = webhook_receiver(false).await;
    let body = format!(
        "[watch]\nresolution = \"250ms\"\n\n\
        [notifiers.ops]\nwebhook = \"http://127.0.0.1:{hook_port}/hook\"\n\n\
        [[alarms]]\nname = \"cluster-5xx\"\nmetric = \"http_requests_5xx_rate\"\nlabels = {{ target_group = \"web\" }}\n\
        statistic = \"max\"\nperiod = \"1s\"\nevaluation_periods = 2\ndatapoints_to_alarm = 2\nthreshold = 0\n\
        missing_data = \"not_breaching\"\nscope = \"cluster\"\nnotify = [\"ops\"]\n\n\
        [[routes]]\npath = \"/*\"\ntarget_group = \"web\"\n\n"
    );
    let mut a = Node::new("a", &redis.url(), &[&app], "", &body);
    let mut b = Node::new("b", &redis.url(), &[&app], "", &body);
    a.up(&[&app]).await;
    b.up(&[&app]).await;
    wait_members(&a, 2).await;
    let state = |f: &Flotilla| {
        let url = f.admin("/api/v1/alarms");
        async move {
            let v: serde_json::Value = serde_json::from_str(&get(&url).await.1).unwrap();
            v["alarms"][0]["state"].as_str().unwrap_or("").to_string()
        }
    };
    // Errors through b only, until both nodes' alarms are in ALARM.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for _ in 0..5 {
            get(&b.f().url("/status/500")).await;
        }
        if state(a.f()).await == "ALARM" && state(b.f()).await == "ALARM" {
            break;
        }
        assert!(Instant::now() < deadline, "both nodes never reached ALARM on b's errors");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two nodes changed state; one notification went out. Wait long enough for a second one.
    let mut alarms = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    while let Ok(Some(v)) = tokio::time::timeout(until.saturating_duration_since(Instant::now()), hooks.recv()).await {
        if v["state"] == "ALARM" {
            alarms.push(v);
        }
    }
    assert_eq!(alarms.len(), 1, "one ALARM notification for the cluster: {alarms:?}");
    assert_eq!(alarms[0]["alarm"], "cluster-5xx");
    let c: serde_json::Value = serde_json::from_str(&get(&a.f().admin("/api/v1/cluster")).await.1).unwrap();
    let leaders = c["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["leads"].as_array().is_some_and(|l| l.iter().any(|x| x == "watch:notifications")))
        .count();
    assert_eq!(leaders, 1, "exactly one node leads the cluster's notifications: {c}");
}
