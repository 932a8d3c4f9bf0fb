//! The status page and its data: `/api/status` reports what `/metrics` counts, the state
//! of each part, the latest rejection of each reason and the last closed minutes, with
//! every attacker-controlled string (payloads, topics, machine names) escaped; `/` is one
//! self-contained page that loads nothing from elsewhere; and in a real headless Chromium
//! the page shows those values, hostile strings as text, without a console message.

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::{
    broker_url, eventually, fleetagg_bin, http_get, http_raw, metric, service_config, unique, Publisher,
    ServiceProcess, TestDatabase,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A machine name that is markup: accepted (a name may hold any printable character), so
/// it reaches the closed minutes and the silent machines.
const HOSTILE_MACHINE: &str = "<img src=x onerror=\"document.title='pwned'\">";
/// A rejected payload whose `ts` is a script; its detail quotes it.
const HOSTILE_PAYLOAD: &str =
    r#"{"machine":"m1","ts":"<script>document.title='pwned'</script>","load_rate":1,"mileage":1}"#;

/// A running service that has received 12 valid samples of two machines in a past minute,
/// one malformed message and one hostile one.
struct Scene {
    service: ServiceProcess,
    port: u16,
    hostile_topic: String,
    /// The minute the valid samples are in, as the page shows it.
    minute: String,
    _db: TestDatabase,
    _lease: PortLease,
}

async fn scene() -> Scene {
    let db = TestDatabase::create().await;
    let lease = PortLease::acquire();
    let port = lease.port();
    let prefix = unique("status");
    let config = service_config(&db.url, &prefix, &unique("fleetagg"), "1s")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    let service = ServiceProcess::start(&config).await;
    let publisher = Publisher::connect(&broker_url()).await;
    let past = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(5);
    for n in 0..12 {
        let machine = if n % 3 == 0 { HOSTILE_MACHINE.replace('"', "\\\"") } else { "m1".to_owned() };
        let ts = (past + TimeDelta::seconds(n)).to_rfc3339();
        let body = format!(r#"{{"machine":"{machine}","ts":"{ts}","load_rate":{},"mileage":1}}"#, 10 + n);
        publisher.publish(&format!("{prefix}/m/telemetry"), body).await;
    }
    publisher.publish(&format!("{prefix}/m/telemetry"), "not json").await;
    let hostile_topic = format!("{prefix}/<svg onload=alert(1)>/telemetry");
    publisher.publish(&hostile_topic, HOSTILE_PAYLOAD).await;
    eventually(Duration::from_secs(30), "14 messages counted and both minutes closed", || async {
        let status = api_status(port).await.1;
        status["counters"]["received"] == 14
            && status["recent_minutes"].as_array().is_some_and(|m| m.len() == 2)
    })
    .await;
    let minute = past.format("%m-%d %H:%M").to_string();
    Scene { service, port, hostile_topic, minute, _db: db, _lease: lease }
}

/// The raw body and the parsed document.
async fn api_status(port: u16) -> (String, Value) {
    let (status, body) = http_get(port, "/api/status").await;
    assert_eq!(status, 200, "{body}");
    let parsed = serde_json::from_str(&body).unwrap_or_else(|err| panic!("not JSON ({err}): {body}"));
    (body, parsed)
}

#[actix_rt::test]
async fn api_status_reports_what_metrics_count_with_hostile_strings_escaped() {
    let scene = scene().await;
    let port = scene.port;
    let (_, metrics) = http_get(port, "/metrics").await;
    let (body, status) = api_status(port).await;

    // Markup never appears as such in the JSON served: `<`, `>` and `&` are \u escapes.
    assert!(!body.contains('<') && !body.contains('>') && !body.contains('&'), "{body}");
    assert!(body.contains("\\u003cscript\\u003e"), "{body}");

    let counted = |series: &str| metric(&metrics, series).unwrap_or_else(|| panic!("{series} missing"));
    let counters = &status["counters"];
    assert_eq!(counters["received"].as_f64(), Some(counted("fleetagg_messages_received_total")));
    assert_eq!(counters["accepted"], 12);
    assert_eq!(counters["rejected"], 2);
    assert_eq!(counters["rows_written"].as_f64(), Some(counted("fleetagg_rows_written_total")));

    let rejections = status["rejections"].as_array().expect("rejections");
    let reason = |name: &str| {
        rejections.iter().find(|r| r["reason"] == name).unwrap_or_else(|| panic!("{name}: {rejections:?}"))
    };
    assert_eq!(reason("malformed")["count"], 1);
    assert_eq!(reason("malformed")["latest"]["payload"], "not json");
    let hostile = &reason("bad_timestamp")["latest"];
    assert_eq!(hostile["payload"], HOSTILE_PAYLOAD, "the payload, decoded, is exactly what was sent");
    assert_eq!(hostile["topic"], scene.hostile_topic.as_str());
    assert_eq!(hostile["payload_cut"], false);

    let minutes = status["recent_minutes"].as_array().expect("recent_minutes");
    let minute =
        minutes.iter().find(|m| m["machine"] == HOSTILE_MACHINE).unwrap_or_else(|| panic!("{minutes:?}"));
    assert_eq!(minute["samples"], 4);
    assert_eq!(
        (minute["load_rate_min"].as_f64(), minute["load_rate_max"].as_f64()),
        (Some(10.0), Some(19.0))
    );
    assert_eq!(minute["load_rate_avg"].as_f64(), Some(14.5));

    assert_eq!(status["mqtt"]["connected"], true);
    assert_eq!(status["mqtt"]["subscribed"], true);
    assert_eq!(status["mqtt"]["session_resumed"], false, "a new client id has no session to resume");
    assert_eq!(status["postgres"]["healthy"], true);
    assert!(status["postgres"]["tls"].is_boolean(), "{}", status["postgres"]);
    assert_eq!(status["secret"], Value::Null);
    // The journal is on by default: every message received was appended first.
    let journal = &status["journal"];
    assert_eq!(journal["appended"], status["counters"]["received"], "{journal}");
    assert_eq!(journal["problem"], Value::Null);
    assert!(journal["segments"].as_u64() >= Some(1), "{journal}");
    assert_eq!(status["buffers"]["inbound_capacity"], 8192);
    assert_eq!(status["buffers"]["writer_buffer_full"], false);
    assert_eq!(
        (status["alive"].clone(), status["ready"].clone()),
        (Value::Bool(true), Value::Bool(true)),
        "{status}"
    );

    // The broker looks for silent machines every 5 s; the counters are sampled every 5 s.
    eventually(Duration::from_secs(20), "silent machines and a rate point", || async {
        let status = api_status(port).await.1;
        let silent = status["silent_machines"].as_array().cloned().unwrap_or_default();
        silent.len() == 2
            && silent.iter().any(|s| s["machine"] == HOSTILE_MACHINE)
            && status["rates"]["points"].as_array().is_some_and(|p| !p.is_empty())
    })
    .await;

    // `fleetagg status` prints the same, and exits 0 for a ready service.
    let output = Command::new(fleetagg_bin())
        .args(["status", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("run fleetagg status");
    let printed = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{printed}{stderr}");
    for expected in
        ["alive: yes   ready: yes", "received 14  accepted 12", "bad_timestamp", HOSTILE_PAYLOAD, "samples 4"]
    {
        assert!(printed.contains(expected), "{expected:?} missing in:\n{printed}");
    }
    let status = scene.service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
    // Nobody listens any more: exit 1 with the reason.
    let output = Command::new(fleetagg_bin())
        .args(["status", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("run fleetagg status");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/api/status"));
}

#[actix_rt::test]
async fn the_page_is_self_contained_and_writes_data_as_text() {
    let db = TestDatabase::create().await;
    let lease = PortLease::acquire();
    let port = lease.port();
    let config = service_config(&db.url, &unique("page"), &unique("fleetagg"), "1s")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    let service = ServiceProcess::start(&config).await;
    let response = http_raw(port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let (head, page) = response.split_once("\r\n\r\n").expect("a head and a body");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert!(head.contains("\r\ncontent-type: text/html; charset=utf-8"), "{head}");
    let policy = head.lines().find_map(|line| line.strip_prefix("content-security-policy: ")).expect("a CSP");
    for directive in ["default-src 'none'", "connect-src 'self'", "script-src 'sha256-", "style-src 'sha256-"]
    {
        assert!(policy.contains(directive), "{directive} missing in {policy}");
    }

    // Nothing from elsewhere: the only "://" is the SVG namespace (an identifier, never
    // fetched), and no element loads a resource.
    let urls: Vec<&str> =
        page.match_indices("://").map(|(at, _)| &page[at.saturating_sub(4)..at + 22]).collect();
    assert!(urls.iter().all(|url| *url == "http://www.w3.org/2000/svg"), "{urls:?}");
    for loader in ["<script src", "<link rel=\"stylesheet", "@import", "url(", "<iframe", "<img"] {
        assert!(!page.contains(loader), "the page loads something: {loader}");
    }
    assert!(page.contains("fetch(\"/api/status\""), "the page reads /api/status");
    // Data is written as text, never parsed as markup.
    assert!(page.contains("textContent"));
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"] {
        assert!(!page.contains(sink), "the page uses {sink}");
    }
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
}

#[actix_rt::test]
async fn a_real_browser_shows_the_live_values_and_hostile_strings_as_text() {
    let scene = scene().await;
    let port = scene.port;
    eventually(Duration::from_secs(20), "a rate point and the silent machines", || async {
        let status = api_status(port).await.1;
        status["rates"]["points"].as_array().is_some_and(|p| !p.is_empty())
            && status["silent_machines"].as_array().is_some_and(|s| s.len() == 2)
    })
    .await;
    let (_, metrics) = http_get(port, "/metrics").await;
    let url = format!("http://127.0.0.1:{port}/");
    let (dom, log) = chromium(&["--window-size=1280,2000", "--dump-dom", &url]);

    // The counts the service reports in /metrics.
    for (id, series) in [
        ("c-received", "fleetagg_messages_received_total"),
        ("c-accepted", "fleetagg_samples_accepted_total"),
        ("c-minutes_closed", "fleetagg_minutes_closed_total"),
        ("c-rows_written", "fleetagg_rows_written_total"),
    ] {
        let value = metric(&metrics, series).unwrap_or_else(|| panic!("{series} missing"));
        let shown = format!("id=\"{id}\">{value}</dd>");
        assert!(dom.contains(&shown), "{shown} missing in the page:\n{dom}");
    }
    assert!(dom.contains("id=\"c-rejected\">2</dd>"), "{dom}");
    assert!(dom.contains("id=\"ready\" class=\"badge ok\">ready</span>"), "{dom}");
    assert!(dom.contains("<rect"), "no rate column drawn:\n{dom}");
    // A rejection reason with its example, and a closed minute.
    assert!(dom.contains(">bad_timestamp</td>") && dom.contains(">malformed</td>"), "{dom}");
    assert!(dom.contains(&format!(">{}</td>", scene.minute)), "no closed minute {}:\n{dom}", scene.minute);

    // Hostile strings are text: serialized escaped, never elements; nothing ran.
    let as_text = |raw: &str| raw.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    assert!(dom.contains(&as_text(HOSTILE_PAYLOAD)), "the payload is not shown as text:\n{dom}");
    assert!(dom.contains(&as_text(HOSTILE_MACHINE)), "the machine name is not shown as text:\n{dom}");
    assert!(dom.contains(&as_text(&scene.hostile_topic)), "the topic is not shown as text:\n{dom}");
    assert!(!dom.contains("<img") && !dom.contains("<svg onload"), "markup from a sender became an element");
    assert_eq!(dom.matches("<script").count(), 1, "only the page's own script");
    assert!(dom.contains("<title>fleetagg status</title>") && !dom.contains("pwned</title>"), "{dom}");
    // No console message (errors, CSP refusals) and no error the page caught itself.
    let console: Vec<&str> = log.lines().filter(|line| line.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(dom.contains("<div id=\"errors\"></div>"), "the page reported errors:\n{dom}");
    assert!(
        !dom.contains("<div id=\"banner\" class=\"shown\">"),
        "the page could not read /api/status:\n{dom}"
    );

    // Screenshots with the test output: a desktop window and a 360 px phone.
    for (name, size) in [("wide", "1280,1900"), ("narrow", "360,2400")] {
        let path = output_dir().join(format!("status-page-{name}.png"));
        let _ = std::fs::remove_file(&path);
        chromium(&[&format!("--window-size={size}"), &format!("--screenshot={}", path.display()), &url]);
        let bytes = std::fs::metadata(&path).map_or(0, |meta| meta.len());
        assert!(bytes > 10_000, "{} is {bytes} bytes", path.display());
        println!("screenshot: {}", path.display());
    }
    let status = scene.service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
}

/// Runs headless Chromium on `args` with its own profile; returns standard output and
/// its log (standard error, where console messages appear as `…:CONSOLE…` lines).
fn chromium(args: &[&str]) -> (String, String) {
    let binary = std::env::var("FLEETAGG_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let profile = std::env::temp_dir().join(unique("chromium-profile"));
    let output = Command::new(&binary)
        // --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        // The virtual time budget lets the page fetch /api/status and render before the
        // DOM is dumped or the screenshot taken; --timeout bounds a hang.
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .args(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--timeout=30000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("{binary} cannot run ({err}): scripts/ensure-services.sh installs Debian's chromium")
        });
    let _ = std::fs::remove_dir_all(&profile);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{binary} failed ({}):\n{stderr}", output.status);
    (stdout, stderr)
}

/// `target/<profile>/test-output`, created.
fn output_dir() -> PathBuf {
    let bin = fleetagg_bin();
    let dir = bin.parent().unwrap_or(Path::new(".")).join("test-output");
    std::fs::create_dir_all(&dir).expect("create the test output directory");
    dir
}
