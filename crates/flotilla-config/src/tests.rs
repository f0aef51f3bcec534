//! Data-driven config tests: one `check_err(input, expected)` helper, many cases.

use std::path::Path;
use std::time::Duration;

use super::*;

fn env(name: &str) -> Option<String> {
    (name == "FLOTILLA_ADMIN_TOKEN").then(|| "t0ken".to_string())
}

fn ok(text: &str) -> Config {
    match parse(Path::new("flotilla.toml"), text, &env) {
        Ok(c) => c,
        Err(e) => panic!("expected valid config, got:\n{e}"),
    }
}

/// Asserts the config is refused with exactly these rendered errors.
fn check_err(text: &str, expected: &[&str]) {
    let err = parse(Path::new("flotilla.toml"), text, &env).expect_err("config should be invalid");
    let got: Vec<String> = err.errors().iter().map(ToString::to_string).collect();
    assert_eq!(got, expected, "\nfull error:\n{err}");
}

const SKELETON: &str = r#"
[edge]
listen = ["127.0.0.1:8080"]
zone = "a"                      # optional; zone of this edge node

[admin]
listen = "127.0.0.1:9090"
token = "${FLOTILLA_ADMIN_TOKEN}"   # bearer token for mutating calls; env expansion

[[routes]]                      # first match wins
host = "*"                      # exact or *.example.com
path = "/*"                     # prefix glob
target_group = "web"

[target_groups.web]
targets = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", zone = "b", weight = 2 }]
algorithm = "least_outstanding" # round_robin | least_outstanding (power of two choices) | random | hash_header | hash_ip
deregistration_delay = "60s"
slow_start = "30s"              # 0 = off
stickiness = { enabled = true, cookie = "flotilla_sticky", duration = "1d" }
retries = 2                     # idempotent requests, on connect failure / reset / 502-503 from a target
[target_groups.web.health_check]
path = "/health"
interval = "30s"
timeout = "5s"
healthy_threshold = 2
unhealthy_threshold = 3
matcher = "200-399"
"#;

#[test]
fn the_issue_skeleton_parses_as_written() {
    let c = ok(SKELETON);
    assert_eq!(c.edge.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(c.edge.zone.as_deref(), Some("a"));
    assert_eq!(c.admin.as_ref().unwrap().token.as_deref(), Some("t0ken"));
    let web = &c.target_groups["web"];
    assert_eq!(web.targets.len(), 2);
    assert_eq!(web.targets[1].weight, 2);
    assert_eq!(web.targets[1].zone.as_deref(), Some("b"));
    assert_eq!(web.algorithm, Algorithm::LeastOutstanding);
    assert_eq!(web.slow_start, Duration::from_secs(30));
    assert!(web.stickiness.enabled);
    assert_eq!(web.health_check.interval, Duration::from_secs(30));
    assert!(web.health_check.is_healthy_status(302));
    assert!(!web.health_check.is_healthy_status(404));
    assert_eq!(c.routes[0].path, PathPattern::Prefix("/".into()));
}

#[test]
fn defaults_match_the_seeds() {
    let c = ok("[edge]\nlisten=[\"127.0.0.1:1\"]\n[target_groups.w]\ntargets=[\"127.0.0.1:2\"]\n[[routes]]\ntarget_group=\"w\"\n");
    let w = &c.target_groups["w"];
    assert_eq!(w.health_check.interval, Duration::from_secs(30));
    assert_eq!((w.health_check.healthy_threshold, w.health_check.unhealthy_threshold), (2, 3));
    assert_eq!(w.deregistration_delay, Duration::from_secs(60));
    assert_eq!(w.retries, 2);
    assert!(c.admin.is_none());
}

#[test]
fn syntax_errors_are_located() {
    check_err("[edge]\nlisten = [\"127.0.0.1:1\"\n", &["flotilla.toml:3:1: invalid array: expected `]`"]);
}

#[test]
fn unknown_keys_are_located() {
    let err = parse(Path::new("f.toml"), "[edge]\nlisten = []\nlisen = 3\n", &env).unwrap_err();
    let e = &err.errors()[0];
    assert_eq!((e.line, e.col), (3, 1), "{err}");
    assert!(e.message.contains("unknown field `lisen`"), "{err}");
}

#[test]
fn every_semantic_error_is_reported_at_its_value() {
    check_err(
        r#"[edge]
listen = ["nonsense"]
[[routes]]
path = "static/*"
target_group = "nope"
[target_groups.web]
targets = ["127.0.0.1:1", "127.0.0.1:1"]
algorithm = "fastest"
deregistration_delay = "60"
[target_groups.web.health_check]
interval = "5s"
timeout = "10s"
matcher = "200-"
healthy_threshold = 0
"#,
        &[
            "flotilla.toml:2:11: edge.listen: \"nonsense\" is not an address: expected host:port, e.g. \"127.0.0.1:8080\"",
            "flotilla.toml:7:27: target_groups.web.targets: 127.0.0.1:1 is listed twice",
            "flotilla.toml:8:13: target_groups.web.algorithm: unknown algorithm \"fastest\" (round_robin, least_outstanding, random, hash_header, hash_ip)",
            "flotilla.toml:12:11: target_groups.web.health_check.timeout must be greater than 0 and at most the interval (5s)",
            "flotilla.toml:14:21: target_groups.web.health_check.healthy_threshold must be between 1 and 10, got 0",
            "flotilla.toml:13:11: target_groups.web.health_check.matcher: \"\" is not an HTTP status code (100-599)",
            "flotilla.toml:9:24: target_groups.web.deregistration_delay: invalid duration \"60\": missing unit (ms, s, m, h, d, w)",
            "flotilla.toml:4:8: routes.path \"static/*\" must start with '/'",
            "flotilla.toml:5:16: routes.target_group \"nope\" is not defined (known: web)",
            "flotilla.toml:1:1: [edge] needs at least one address in listen (or in [edge.tls].listen)",
        ],
    );
}

#[test]
fn tls_files_must_exist_and_redirect_needs_a_tls_listener() {
    check_err(
        "[edge]\nlisten=[\"127.0.0.1:1\"]\n[edge.tls]\ncertificates=[{cert=\"missing.pem\", key=\"missing.key\"}]\nredirect_http=true\n",
        &[
            "flotilla.toml:4:21: edge.tls.certificates.cert: file missing.pem does not exist",
            "flotilla.toml:4:40: edge.tls.certificates.key: file missing.key does not exist",
            "flotilla.toml:3:1: edge.tls.redirect_http needs a TLS listener in edge.tls.listen",
        ],
    );
}

#[test]
fn host_and_path_patterns() {
    let c = ok(r#"[edge]
listen=["127.0.0.1:1"]
[[routes]]
host = "*.Example.com"
path = "/api/*"
target_group = "w"
[[routes]]
host = "exact.io"
path = "/login"
target_group = "w"
[target_groups.w]
"#);
    let (a, b) = (&c.routes[0], &c.routes[1]);
    assert!(a.host.matches("www.example.com") && !a.host.matches("example.com"));
    assert!(a.path.matches("/api/x") && !a.path.matches("/api"));
    assert!(b.host.matches("exact.io") && !b.host.matches("www.exact.io"));
    assert!(b.path.matches("/login") && !b.path.matches("/login/x"));
    assert!(c.warnings.iter().any(|w| w.contains("no targets")));
}

#[test]
fn unset_token_is_a_warning_not_an_error() {
    let c = ok("[edge]\nlisten=[\"127.0.0.1:1\"]\n[admin]\ntoken=\"${UNSET_VAR}\"\n");
    assert_eq!(c.admin.unwrap().token, None);
    assert!(c.warnings.iter().any(|w| w.contains("UNSET_VAR")), "{:?}", c.warnings);
}

#[test]
fn cache_behaviours_and_routes() {
    let c = ok(r#"[edge]
listen=["127.0.0.1:1"]
[cache]
memory = "64MiB"
fill_buffer = "16MiB"
fill_timeout = "5s"
[cache_behaviors.static]
default_ttl = "1h"
key = { query = ["v", "w"], headers = ["X-Tenant"], cookies = ["lang"] }
stale_if_error = "1d"
error_ttl = "30s"
other_cookies = "strip"
[[routes]]
path = "/static/*"
target_group = "w"
cache = "static"
[target_groups.w]
targets = ["127.0.0.1:2"]
"#);
    assert_eq!(c.cache.memory, 64 << 20);
    assert_eq!((c.cache.fill_buffer, c.cache.fill_timeout), (16 << 20, Duration::from_secs(5)));
    let b = &c.cache_behaviors["static"];
    assert_eq!(b.default_ttl, Duration::from_secs(3600));
    assert_eq!(b.max_ttl, Duration::from_secs(365 * 86_400));
    assert_eq!(b.key.query, QueryKeyConfig::Only(vec!["v".into(), "w".into()]));
    assert_eq!(b.key.headers, vec!["x-tenant".to_string()]);
    assert_eq!(b.error_ttl, Duration::from_secs(30));
    assert_eq!(b.other_cookies, OtherCookiesConfig::Strip);
    assert_eq!(b.key.cookies, vec!["lang".to_string()]);
    assert_eq!(c.routes[0].cache.as_deref(), Some("static"));
}

#[test]
fn cache_errors_are_located() {
    check_err(
        r#"[edge]
listen=["127.0.0.1:1"]
[cache_behaviors.b]
min_ttl = "1h"
default_ttl = "1m"
key = { query = "some" }
other_cookies = "ignore"
[[routes]]
target_group = "w"
cache = "nope"
[target_groups.w]
"#,
        &[
            "flotilla.toml:3:1: cache_behaviors.b: need min_ttl <= default_ttl <= max_ttl (got 3600s, 60s, 31536000s)",
            "flotilla.toml:6:17: cache_behaviors.b.key.query: \"some\" must be \"all\", \"none\" or a list of names",
            "flotilla.toml:7:17: cache_behaviors.b.other_cookies: \"ignore\" must be \"pass\" or \"strip\"",
            "flotilla.toml:10:9: routes.cache \"nope\" is not a [cache_behaviors] entry (known: b)",
        ],
    );
}

/// The contract example from the fleet issue, as written.
const GROUP: &str = r#"[edge]
listen = ["127.0.0.1:1"]
[target_groups.web]
[groups.web]
target_group = "web"            # instances register here once healthy, drain before they stop
min = 2
max = 10
desired = 2
health_check_grace = "300s"     # unhealthy during grace is not replaced
instance_warmup = "60s"         # a new instance's metrics don't count until then
cooldown = "300s"
termination_policy = ["zone_balance", "oldest_launch_template", "oldest_instance"]
zones = ["a", "b"]

[groups.web.launch]             # the launch template; a change = a new version
driver = "process"              # process | docker
command = ["flotilla", "demo-app", "--port", "{port}", "--id", "{instance}"]
env = { RUST_LOG = "info" }

[[groups.web.policies]]         # step scaling on an alarm, as in the seeds
type = "step"
metric = "cpu"                  # cpu | requests_per_target | latency_p95 | in_flight | any metric name
statistic = "avg"
period = "60s"
evaluation_periods = 4          # M of N: datapoints_to_alarm = 4
threshold = 70
comparison = ">"
adjustment = "+2"               # +N, -N, +N%, or =N
[[groups.web.policies]]
type = "step"
metric = "cpu"
period = "60s"
evaluation_periods = 4
threshold = 30
comparison = "<"
adjustment = "-1"

[[groups.web.policies]]
type = "target_tracking"        # keep metric near target: fast out, conservative in
metric = "requests_per_target"
target = 100

[[groups.web.schedules]]
cron = "0 8 * * MON-FRI"
timezone = "Europe/Berlin"
min = 4
"#;

#[test]
fn groups_contract_example() {
    let c = ok(GROUP);
    let g = &c.groups["web"];
    assert_eq!((g.min, g.max, g.desired), (2, 10, 2));
    assert_eq!(g.cooldown, Duration::from_secs(300));
    assert_eq!(g.zones, ["a", "b"]);
    assert_eq!(g.policies.len(), 3);
    let PolicyConfig::Step(up) = &g.policies[0] else { panic!("step expected") };
    assert_eq!((up.evaluation_periods, up.datapoints_to_alarm, up.threshold), (4, 4, 70.0));
    assert_eq!(up.adjustment, Adjustment::Change(2));
    assert_eq!(up.comparison, Comparison::Greater);
    let PolicyConfig::TargetTracking(tt) = &g.policies[2] else { panic!("target tracking expected") };
    assert_eq!((tt.target, tt.tolerance), (100.0, 0.1));
    let LaunchDriver::Process { command, .. } = &g.launch.driver else { panic!("process driver expected") };
    assert_eq!(command[3], "{port}");
    let sched = &g.schedules[0];
    assert_eq!((sched.timezone.as_str(), sched.min, sched.max), ("Europe/Berlin", Some(4), None));
    assert!(sched.cron.matches(0, 8, 30, 11, 1));
}

#[test]
fn group_errors_are_located() {
    check_err(
        r#"[edge]
listen=["127.0.0.1:1"]
[target_groups.web]
[groups.a]
target_group = "nope"
min = 5
max = 2
[groups.a.launch]
command = []
[[groups.a.policies]]
type = "step"
metric = "cpu"
threshold = 70
comparison = "gt"
adjustment = "2"
[[groups.a.policies]]
type = "tracking"
metric = "cpu"
"#,
        &[
            "flotilla.toml:5:16: groups.a.target_group \"nope\" is not defined (known: web)",
            "flotilla.toml:7:7: groups.a.max: min (5) is greater than max (2)",
            "flotilla.toml:9:11: groups.a.launch.command must name a program",
            "flotilla.toml:14:14: groups.a.policies.comparison: \"gt\" must be one of >, >=, <, <=",
            "flotilla.toml:15:14: groups.a.policies.adjustment: \"2\" must look like +N, -N, +N%, -N% or =N",
            "flotilla.toml:17:8: groups.a.policies.type: unknown policy type \"tracking\" (step, target_tracking)",
        ],
    );
}

#[test]
fn group_budget() {
    let text = |budget: &str| {
        format!("[target_groups.web]\n[groups.web]\ntarget_group = \"web\"\n[groups.web.launch]\ncommand = [\"app\"]\n[groups.web.budget]\n{budget}")
    };
    let c = ok(&text("price_per_instance_hour = 0.0416\nmonthly = 100\n"));
    // No policies named: the recommended one (as in examples/scaling/recommended.toml).
    assert_eq!(c.groups["web"].policies, vec![recommended_policy()]);
    let b = c.groups["web"].budget.clone().unwrap();
    assert_eq!((b.price_per_instance_hour, b.monthly, b.alerts, b.hard_cap), (0.0416, 100.0, vec![50, 80, 100], false));
    check_err(
        &text("monthly = -5\nalerts = [0]\n"),
        &[
            "flotilla.toml:6:1: groups.web.budget.price_per_instance_hour is required",
            "flotilla.toml:7:11: groups.web.budget.monthly must be greater than 0",
            "flotilla.toml:8:11: groups.web.budget.alerts: 0 must be a percentage between 1 and 1000",
        ],
    );
}

#[test]
fn schedule_errors_are_located() {
    check_err(
        r#"[target_groups.web]
[groups.web]
target_group = "web"
[groups.web.launch]
command = ["app"]
[[groups.web.schedules]]
cron = "0 25 * * *"
timezone = "Mars/Olympus"
[[groups.web.schedules]]
cron = "0 8 * * *"
min = 5
max = 3
"#,
        &[
            "flotilla.toml:7:8: groups.web.schedules.cron: hour \"25\" must be 0-23",
            "flotilla.toml:8:12: groups.web.schedules.timezone: unknown time zone \"Mars/Olympus\" (failed to find time zone `Mars/Olympus` in time zone database)",
            "flotilla.toml:6:1: groups.web.schedules.cron: a scheduled action needs min, max or desired",
            "flotilla.toml:9:1: groups.web.schedules.min: min (5) is greater than max (3)",
        ],
    );
}

#[test]
fn recommended_example_is_the_default_policy() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scaling/recommended.toml");
    let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.groups["web"].policies, vec![recommended_policy()]);
}

#[test]
fn watch_alarms_and_notifiers() {
    let c = ok(r#"
[watch]
retention = "14d"
resolution = "5s"

[[alarms]]
name = "high-5xx"
metric = "http_requests_5xx_rate"   # any metric, with labels: { target_group = "web" }
labels = { target_group = "web" }
statistic = "sum"
period = "60s"
evaluation_periods = 5
datapoints_to_alarm = 3
threshold = 1
comparison = ">"
missing_data = "not_breaching"
notify = ["ops"]

[notifiers.ops]
webhook = "http://127.0.0.1:9999/hook"
"#);
    let a = &c.alarms[0];
    assert_eq!((a.evaluation_periods, a.datapoints_to_alarm, a.threshold), (5, 3, 1.0));
    assert_eq!((a.statistic, a.missing_data), (AlarmStatistic::Sum, MissingData::NotBreaching));
    assert_eq!(a.labels["target_group"], "web");
    assert_eq!(c.notifiers["ops"].attempts, 5);
    assert_eq!(c.watch.resolution, Duration::from_secs(5));
    // A year at 10 s fits, and the default 14 days at 100 ms; 30 days at 100 ms does not.
    assert_eq!(ok("[watch]\nretention = \"365d\"\n").watch.retention, Duration::from_secs(365 * 86_400));
    assert_eq!(ok("[watch]\nresolution = \"100ms\"\n").watch.retention, Duration::from_secs(14 * 86_400));
    check_err(
        "[watch]\nretention = \"30d\"\nresolution = \"100ms\"\n",
        &["flotilla.toml:2:13: watch.retention / watch.resolution is 25920000 datapoints per series; at most 12096000 (a longer resolution or a shorter retention)"],
    );
    check_err(
        r#"[[alarms]]
name = "a"
metric = "m"
statistic = "p42"
threshold = 1
notify = ["pager"]
[notifiers.ops]
webhook = "http://example.com/"
"#,
        &[
            "flotilla.toml:8:11: notifiers.ops.webhook: http://example.com/…: http:// only to a loopback address (127.0.0.1, [::1], localhost); use https:// (with `ca` for a private CA)",
            "flotilla.toml:4:13: alarms.a.statistic: unknown statistic \"p42\" (avg, sum, min, max, count, p50, p95, p99)",
            "flotilla.toml:6:11: alarms.a.notify: \"pager\" is not a [notifiers] entry (known: ops)",
        ],
    );
}

#[test]
fn images_contract_parses_with_the_seeds_presets() {
    let text = format!(
        "{SKELETON}\n[images]\nroute = \"/_img\"\nsource = \"web\"\nformats = [\"avif\", \"webp\", \"jpeg\"]\nquality = {{ jpeg = 82, webp = 80, avif = 60 }}\nmax_source_pixels = 50_000_000\nmax_source_bytes = \"30MiB\"\nsigning_key = \"${{FLOTILLA_ADMIN_TOKEN}}-long-enough\"\n\n[images.presets]\nthumbnail = {{ width = 150, height = 150, fit = \"cover\" }}\nsmall = {{ width = 320 }}\nmedium = {{ width = 768 }}\nlarge = {{ width = 1440 }}\n"
    );
    let cfg = ok(&text);
    let i = cfg.images.expect("images");
    assert_eq!(i.source, ImageSource::TargetGroup("web".into()));
    assert_eq!(i.formats, vec![ImageFormat::Avif, ImageFormat::Webp, ImageFormat::Jpeg]);
    assert_eq!((i.max_source_pixels, i.max_source_bytes), (50_000_000, 30 << 20));
    assert_eq!(i.signing_key.as_deref(), Some("t0ken-long-enough"));
    assert_eq!(i.presets, ImagesConfig::default_presets());
    // Omitted presets are the seeds' four sizes.
    let minimal = ok(&format!("{SKELETON}\n[images]\nsource = \"web\"\n"));
    assert_eq!(minimal.images.unwrap().presets.len(), 4);
}

#[test]
fn images_errors_name_the_line() {
    check_err(
        &format!("{SKELETON}\n[images]\nsource = \"nope\"\nformats = [\"gif\"]\n[images.presets]\nx = {{ fit = \"cover\" }}\ny = {{ width = 0 }}\n"),
        &[
            "flotilla.toml:31:10: images.source: no target group named \"nope\"",
            "flotilla.toml:32:12: images.formats: unknown format \"gif\" (avif, webp, jpeg)",
            "flotilla.toml:34:5: images.presets.x needs a width, a height, or both",
            "flotilla.toml:35:15: images.presets.y.width must be between 1 and 8192, got 0",
        ],
    );
}

#[test]
fn routes_take_a_target_group_or_a_files_origin() {
    let cfg = ok("[[routes]]\npath = \"/static/*\"\norigin = \"files:.\"\n");
    assert_eq!(cfg.routes[0].origin, RouteOrigin::Files(Path::new(".").to_path_buf()));
    check_err(
        "[target_groups.web]\ntargets = []\n[[routes]]\ntarget_group = \"web\"\norigin = \"files:.\"\n[[routes]]\norigin = \"http://x\"\n",
        &[
            "flotilla.toml:4:16: a route has either target_group or origin, not both",
            "flotilla.toml:7:10: routes.origin \"http://x\": expected \"files:DIR\"",
        ],
    );
}

#[test]
fn route_headers_and_rate_limits_are_checked() {
    let cfg = ok("[[routes]]\norigin = \"files:.\"\nrate_limit = { rate = \"600/min\" }\nheaders = { hsts = \"max-age=60\", remove = [\"Server\"] }\n");
    let rl = cfg.routes[0].rate_limit.clone().unwrap();
    assert_eq!((rl.interval, rl.burst, rl.key), (std::time::Duration::from_millis(100), 10, RateKey::Ip));
    assert_eq!(cfg.routes[0].headers.as_ref().unwrap().remove, vec!["server".to_string()]);
    check_err(
        "[[routes]]\norigin = \"files:.\"\nrate_limit = { rate = \"5/fortnight\", key = \"cookie\" }\nheaders = { hsts = \"1 year\" }\n",
        &[
            "flotilla.toml:3:23: routes.rate_limit.rate: \"5/fortnight\": unknown unit \"fortnight\" (s, min, h)",
            "flotilla.toml:3:44: routes.rate_limit.key \"cookie\": \"ip\" or \"header:NAME\"",
            "flotilla.toml:4:20: routes.headers.hsts needs max-age=…, e.g. \"max-age=31536000; includeSubDomains\"",
        ],
    );
}

#[test]
fn acme_one_table_or_an_array_with_defaults() {
    let c = ok(r#"
[edge]
listen = ["127.0.0.1:80"]
[edge.tls]
listen = ["127.0.0.1:443"]
[edge.tls.acme]
email = "ops@example.com"
domains = ["App.Example.com", "www.example.com"]
"#);
    let acme = &c.edge.tls.as_ref().unwrap().acme;
    assert_eq!(acme.len(), 1);
    assert_eq!(acme[0].domains, ["app.example.com", "www.example.com"]);
    assert_eq!(acme[0].directory, LETS_ENCRYPT);
    assert_eq!(acme[0].challenge, AcmeChallenge::Http01);
    assert_eq!(acme[0].storage, Path::new("data/acme"));
    assert_eq!(acme[0].renew_before, None);
    let c = ok(r#"
[edge]
listen = ["127.0.0.1:80"]
[edge.tls]
listen = ["127.0.0.1:443"]
[[edge.tls.acme]]
domains = ["a.example.com"]
challenge = "tls-alpn-01"
renew_before = "30d"
[[edge.tls.acme]]
domains = ["b.example.com"]
directory = "https://acme-staging-v02.api.letsencrypt.org/directory"
"#);
    let acme = &c.edge.tls.as_ref().unwrap().acme;
    assert_eq!(acme.len(), 2);
    assert_eq!(
        (acme[0].challenge, acme[0].renew_before),
        (AcmeChallenge::TlsAlpn01, Some(Duration::from_secs(30 * 86_400)))
    );
    assert!(acme[1].directory.contains("staging"));
}

#[test]
fn acme_errors_name_the_line_and_key() {
    check_err(
        r#"[edge]
listen = ["127.0.0.1:80"]
[edge.tls]
listen = ["127.0.0.1:443"]
[edge.tls.acme]
email = "not an email"
domains = ["*.example.com", "localhost", "a.example.com", "a.example.com"]
directory = "http://insecure.example/dir"
challenge = "dns-01"
"#,
        &[
            "flotilla.toml:7:12: edge.tls.acme.domains: \"*.example.com\" is a wildcard, which needs the DNS-01 challenge (not supported); name each host",
            "flotilla.toml:7:29: edge.tls.acme.domains: \"localhost\" is not a DNS name a CA can issue for",
            "flotilla.toml:7:59: edge.tls.acme.domains: \"a.example.com\" is listed twice",
            "flotilla.toml:6:9: edge.tls.acme.email: \"not an email\" is not an email address",
            "flotilla.toml:8:13: edge.tls.acme.directory must be an https:// URL, got \"http://insecure.example/dir\"",
            "flotilla.toml:9:13: edge.tls.acme.challenge must be \"http-01\" or \"tls-alpn-01\", got \"dns-01\"",
        ],
    );
    check_err(
        "[edge]\nlisten = [\"127.0.0.1:80\"]\n[edge.tls]\nlisten = [\"127.0.0.1:443\"]\n[edge.tls.acme]\nemail = \"a@b.c\"\n",
        &[
            "flotilla.toml:5:1: edge.tls.acme.domains: name at least one domain, e.g. domains = [\"app.example.com\"]",
        ],
    );
}

#[test]
fn cluster_defaults_and_password_table() {
    let c = ok(r#"
[cluster]
node = "edge-1"
redis = { url = "redis://127.0.0.1:6379/0", password = "${FLOTILLA_ADMIN_TOKEN}" }
"#);
    let cl = c.cluster.expect("cluster");
    assert_eq!(cl.node, "edge-1");
    assert_eq!(cl.lease, Duration::from_secs(10));
    assert_eq!(cl.prefix, "flotilla");
    assert_eq!(cl.redis.url, "redis://127.0.0.1:6379/0");
    assert_eq!(cl.redis.connection_url(), "redis://:t0ken@127.0.0.1:6379/0");
    assert!(c.warnings.iter().any(|w| w.contains("cluster.secret")));
    assert!(ok("").cluster.is_none(), "no [cluster], no Redis");
}

#[test]
fn cluster_errors_name_line_and_key() {
    check_err(
        "[cluster]\nnode = \"edge 1\"\nredis = \"http://x\"\nlease = \"100ms\"\ntimeout = \"5s\"\n",
        &[
            "flotilla.toml:2:8: cluster.node \"edge 1\" must be letters, digits, '-' or '_'",
            "flotilla.toml:3:9: cluster.redis: the URL must start with redis:// (or unix://), not \"http\"",
            "flotilla.toml:4:9: cluster.lease must be at least 1s",
            "flotilla.toml:5:11: cluster.timeout must be between 1ms and 1s (it bounds how long a request waits on Redis)",
        ],
    );
    check_err(
        "[cluster]\nnode = \"a\"\n",
        &["flotilla.toml:1:1: [cluster] needs redis, e.g. redis = \"redis://127.0.0.1:6379/0\""],
    );
}

#[test]
fn cache_parent_is_an_http_address_and_reserves_the_shield_group() {
    let c = ok("[cache]\nparent = \"http://127.0.0.1:8081/\"\n");
    assert_eq!(c.cache.parent, Some("127.0.0.1:8081".parse().unwrap()));
    assert_eq!(c.cache.parent_timeout, Duration::from_secs(5));
    let c = ok("[cache]\nparent = \"http://127.0.0.1:8081\"\nparent_timeout = \"750ms\"\n");
    assert_eq!(c.cache.parent_timeout, Duration::from_millis(750));
    check_err("[cache]\nparent_timeout = \"0s\"\n", &["flotilla.toml:2:18: cache.parent_timeout must be more than 0"]);
    check_err(
        "[cache]\nparent = \"https://edge:443\"\n",
        &["flotilla.toml:2:10: cache.parent: \"https://edge:443\" must be http://host:port (another Flotilla node's edge)"],
    );
    check_err(
        "[cache]\nparent = \"http://127.0.0.1:8081\"\n\n[target_groups.flotilla-shield]\ntargets = [\"127.0.0.1:1\"]\n",
        &["flotilla.toml:4:16: target group name \"flotilla-shield\" is reserved for cache.parent"],
    );
}

#[test]
fn a_cluster_scoped_slo_needs_a_cluster() {
    let slo = "[target_groups.web]\ntargets = [\"127.0.0.1:1\"]\n\n[[slos]]\nname = \"s\"\ntarget_group = \"web\"\nobjective = \"99%\"\nkind = \"availability\"\nscope = \"cluster\"\n";
    check_err(slo, &["flotilla.toml:9:9: slos.s.scope: \"cluster\" needs a [cluster] table (nodes sharing Redis)"]);
    let c = ok(&format!("[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\nsecret = \"x\"\n\n{slo}"));
    assert!(c.slos[0].cluster);
}

#[test]
fn launch_env_expands_variables_and_refuses_bad_names() {
    let group = "[target_groups.web]\n[groups.web]\ntarget_group = \"web\"\n[groups.web.launch]\ncommand = [\"app\"]\n";
    let c = ok(&format!(
        "{group}env = {{ TOKEN = \"${{FLOTILLA_ADMIN_TOKEN}}\", MODE = \"${{UNSET_X:-on}}-{{port}}\" }}\n"
    ));
    let env = &c.groups["web"].launch.env;
    assert_eq!((env["TOKEN"].as_str(), env["MODE"].as_str()), ("t0ken", "on-{port}"));
    check_err(
        &format!("{group}env = {{ \"A=B\" = \"x\" }}\n"),
        &["flotilla.toml:6:17: groups.web.launch.env: variable name \"A=B\" must be non-empty, without '=' or NUL"],
    );
}

#[test]
fn a_password_in_the_redis_url_never_reaches_url_debug_or_errors() {
    let c = ok("[cluster]\nredis = \"redis://app:pw-1@127.0.0.1:6379/0\"\nsecret = \"sticky-1\"\n");
    let r = &c.cluster.as_ref().unwrap().redis;
    assert_eq!((r.url.as_str(), r.password.as_deref()), ("redis://app@127.0.0.1:6379/0", Some("pw-1")));
    assert_eq!(r.connection_url(), "redis://app:pw-1@127.0.0.1:6379/0");
    assert_eq!(r.scrub("refused pw-1".into()), "refused ***");
    let debug = format!("{c:?}");
    assert!(!debug.contains("pw-1") && !debug.contains("sticky-1") && debug.contains("redis://app@"), "{debug}");
    let err = parse(Path::new("f.toml"), "[cluster]\nredis = \"rediss://:pw-2@h:6380/0\"\n", &env).unwrap_err();
    assert!(!err.to_string().contains("pw-2") && err.to_string().contains("\"rediss\""), "{err}");
    check_err(
        "[cluster]\nredis = { url = \"redis://:a@h/0\", password = \"b\" }\n",
        &["flotilla.toml:2:9: cluster.redis: give the password in the URL or as password, not both"],
    );
}

#[test]
fn the_deployment_id_is_configured_or_derived_from_what_makes_the_deployment() {
    assert_eq!(ok("[fleet]\ndeployment = \"shop-eu\"\n").fleet.deployment, "shop-eu");
    let single = ok("").fleet;
    assert!(!single.deployment_configured && single.deployment.len() == 8, "{single:?}");
    assert_eq!(ok("").fleet.deployment, single.deployment, "stable for one file on one host");
    let other = parse(Path::new("/elsewhere/flotilla.toml"), "", &env).unwrap().fleet.deployment;
    assert_ne!(other, single.deployment, "another file, another deployment");
    // Cluster nodes agree however they spell the same Redis, and differ by Redis or prefix.
    let cl = |redis: &str, extra: &str| {
        ok(&format!("[cluster]\nnode = \"n{}\"\nredis = \"{redis}\"\nsecret = \"x\"\n{extra}", redis.len()))
            .fleet
            .deployment
    };
    let a = cl("redis://10.0.0.5:6379/0", "");
    assert_eq!(cl("redis://:pw@10.0.0.5", ""), a);
    assert_eq!(cl("redis://user:pw@10.0.0.5:6379/", ""), a);
    assert_ne!(cl("redis://10.0.0.6:6379/0", ""), a);
    assert_ne!(cl("redis://10.0.0.5:6379/1", ""), a);
    assert_ne!(cl("redis://10.0.0.5:6379/0", "prefix = \"shop\""), a);
    check_err(
        "[fleet]\ndeployment = \"Shop_EU\"\n",
        &["flotilla.toml:2:14: fleet.deployment \"Shop_EU\" must be 1-16 lower-case letters, digits or '-' (not first or last)"],
    );
    check_err("[fleet]\ndeploy = \"x\"\n", &["flotilla.toml:2:1: unknown field `deploy`, expected `deployment`"]);
}

#[test]
fn admin_reads_and_hosts() {
    let c = ok("[admin]\ntoken = \"t\"\nread_token = \"r\"\nallowed_hosts = [\"Admin.Internal.\"]\n");
    let a = c.admin.as_ref().unwrap();
    assert!(a.protect_reads && !a.open_metrics, "a read token protects reads");
    assert_eq!(a.allowed_hosts, ["admin.internal"]);
    assert!(!format!("{a:?}").contains("\"t\"") && !format!("{a:?}").contains("\"r\""), "{a:?}");
    let a = ok("[admin]\ntoken = \"t\"\nprotect_reads = true\nopen_metrics = true\n").admin.unwrap();
    assert!(a.protect_reads && a.open_metrics && a.read_token.is_none());
    assert!(!ok("[admin]\ntoken = \"t\"\n").admin.unwrap().protect_reads, "reads are open by default");
    check_err(
        "[admin]\ntoken = \"t\"\nread_token = \"t\"\nprotect_reads = false\nallowed_hosts = [\"http://x\"]\n",
        &[
            "flotilla.toml:3:14: admin.read_token must differ from admin.token (it may only read)",
            "flotilla.toml:4:17: admin.protect_reads = false with admin.read_token set: the read token would do nothing",
            "flotilla.toml:5:18: admin.allowed_hosts: \"http://x\" must be a host name, e.g. \"admin.internal\" (no scheme, port or '*')",
        ],
    );
    check_err(
        "[admin]\nprotect_reads = true\n",
        &["flotilla.toml:2:17: admin.protect_reads needs admin.token or admin.read_token (else nothing could read)"],
    );
}
