//! The TypeScript client (sdk/typescript) against a real engine over WebSocket: its Node test
//! suite (node --test), and a page in headless Chromium that subscribes and renders a live
//! scorecard; the screenshot taken proves it rendered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use yorker_conformance::{Engine, KEY};

fn sdk() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../typescript")
}

/// npm ci and tsc, once for this test binary.
fn build() {
    yorker_conformance::build_typescript();
}

static BUILD: std::sync::Once = std::sync::Once::new();

#[test]
fn typescript_client_passes_its_node_suite_against_the_engine() {
    BUILD.call_once(build);
    let engine = Engine::start();
    let addr = *engine.addr.lock().unwrap();
    let out = Command::new("node")
        .args(["--test", "test/client.test.mjs"])
        .current_dir(sdk())
        .env("YORKER_ADDR", addr.to_string())
        .env("YORKER_PUBLISHER_KEY", KEY)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "node --test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small HTTP server for the page: files under sdk/typescript, `/result?text=` (what the page
/// rendered) and `/hold` (answered once a result came, so the page's load event, and with it
/// Chromium's screenshot, waits for the scorecard).
struct Site {
    port: u16,
    result: Arc<(Mutex<Option<String>>, Condvar)>,
}

fn serve(root: PathBuf) -> Site {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let result: Arc<(Mutex<Option<String>>, Condvar)> = Arc::default();
    let r = result.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let (root, r) = (root.clone(), r.clone());
            std::thread::spawn(move || handle(s, &root, &r));
        }
    });
    Site { port, result }
}

fn handle(mut s: TcpStream, root: &std::path::Path, r: &(Mutex<Option<String>>, Condvar)) {
    let mut line = String::new();
    let mut rd = BufReader::new(s.try_clone().unwrap());
    if rd.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h).unwrap_or(0) <= 2 {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, ctype, body): (&str, &str, Vec<u8>) =
        if let Some(q) = path.strip_prefix("/result?text=") {
            let text = percent_decode(q);
            *r.0.lock().unwrap() = Some(text);
            r.1.notify_all();
            ("200 OK", "text/plain", b"ok".to_vec())
        } else if path == "/hold" {
            let g = r.0.lock().unwrap();
            let _ =
                r.1.wait_timeout_while(g, Duration::from_secs(20), |v| v.is_none());
            ("200 OK", "text/html", b"<p>ok</p>".to_vec())
        } else {
            let file = path.split('?').next().unwrap_or("/");
            let file = if file == "/" {
                "/test/scorecard.html"
            } else {
                file
            };
            match std::fs::read(root.join(file.trim_start_matches('/'))) {
                Ok(b) if !file.contains("..") => {
                    let t = if file.ends_with(".js") {
                        "text/javascript"
                    } else {
                        "text/html"
                    };
                    ("200 OK", t, b)
                }
                _ => ("404 Not Found", "text/plain", b"no".to_vec()),
            }
        };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(&body);
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn a_browser_renders_a_live_scorecard() {
    BUILD.call_once(build);
    let browser = chromium()
        .expect("chromium (Debian package chromium; scripts/install-test-deps.sh installs it)");
    let engine = Engine::start();
    let addr = *engine.addr.lock().unwrap();
    let topic = format!("match/{}", std::process::id());
    engine.publish(&topic, &[b"IND 97/2 (12.3)".to_vec()]);
    let site = serve(sdk());
    let shot = std::env::temp_dir().join(format!("yorker-scorecard-{}.png", std::process::id()));
    let _ = std::fs::remove_file(&shot);
    let url = format!(
        "http://127.0.0.1:{}/test/scorecard.html?ws=ws://{addr}/&topic={topic}&until=101",
        site.port
    );
    let profile = std::env::temp_dir().join(format!("yorker-chromium-{}", std::process::id()));
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=800,400", "--hide-scrollbars"])
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // The page shows the snapshot; then the live ball that makes it 101 arrives.
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    engine.publish(&topic, &[b"IND 101/2 (12.4)".to_vec()]);
    let (m, cv) = &*site.result;
    let g = m.lock().unwrap();
    let (g, _) = cv
        .wait_timeout_while(g, Duration::from_secs(30), |v| v.is_none())
        .unwrap();
    let rendered = g.clone();
    drop(g);
    // Chromium exits once the screenshot is written (bounded).
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("chromium did not finish: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        rendered.as_deref(),
        Some("IND 101/2 (12.4)"),
        "what the page rendered"
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 2000,
        "a {}-byte screenshot shows nothing",
        png.len()
    );
    eprintln!(
        "scorecard screenshot: {} ({} bytes)",
        shot.display(),
        png.len()
    );
    let _ = std::fs::remove_dir_all(&profile);
}
