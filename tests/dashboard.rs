//! The web dashboard in a real browser: Debian's `chromium`, headless, renders the page with
//! its JavaScript (`--dump-dom`) against a real mount, and the views are checked against what
//! the test did. The buttons (keep theirs, the offline switch, sync now) are clicked in a
//! headless Chromium driven over the DevTools protocol; the pin and retry actions and the
//! access checks send the requests the page's script sends (its JSON, its cookie, its Origin).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::mount::{eventually, Backend, Env, Mount};
use serde_json::Value;

/// The dashboard of a mount, as its state dir describes it.
struct Page {
    url: String,
    addr: String,
    token: String,
    profile: tempfile::TempDir,
}

impl Page {
    fn of(m: &Mount) -> Page {
        let url = fs::read_to_string(m.state.join("dashboard.url")).unwrap();
        let token = fs::read_to_string(m.state.join("dashboard.token")).unwrap();
        let addr = url
            .strip_prefix("http://")
            .and_then(|u| u.split('/').next())
            .unwrap()
            .to_string();
        assert!(url.ends_with(&format!("/?token={token}")), "{url}");
        Page {
            url,
            addr,
            token,
            profile: tempfile::tempdir().unwrap(),
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The page at `#view` after its script has run for a few seconds of virtual time.
    fn dom(&self, view: &str) -> String {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .arg("--dump-dom")
            .arg(format!("{}#{view}", self.url))
            .output()
            .expect("chromium runs (apt install chromium)");
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            dom.contains("data-loaded=\"1\""),
            "the page did not load its data:\n{dom}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dom
    }

    /// A screenshot of `#view` for docs/dashboard/, when STRATUS_SCREENSHOTS names a folder.
    fn screenshot(&self, view: &str) {
        let Some(dir) = std::env::var_os("STRATUS_SCREENSHOTS") else {
            return;
        };
        let file = PathBuf::from(dir).join(format!("{view}.png"));
        let _ = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .arg(format!("--screenshot={}", file.display()))
            .arg(format!("{}#{view}", self.url))
            .output();
    }

    /// Sends `method path` with `headers` and `body`; the status code and the body.
    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, body.to_string())
    }

    fn cookie(&self) -> (&'static str, String) {
        ("Cookie", format!("stratus_dashboard={}", self.token))
    }

    /// What the page's script sends for a button: POST with its cookie and its own Origin.
    fn post(&self, path: &str, args: Value) -> (u16, Value) {
        let (code, body) = self.raw(
            "POST",
            path,
            &[
                self.cookie(),
                ("Origin", self.origin()),
                ("Content-Type", "application/json".into()),
            ],
            &args.to_string(),
        );
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> Value {
        let (code, body) = self.raw("GET", path, &[self.cookie()], "");
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// A headless Chromium showing the page, driven over the DevTools protocol: the test clicks
/// the page's own buttons (`Runtime.evaluate` of `element.click()`), so a click sends exactly
/// what the page's script sends.
struct Browser {
    child: std::process::Child,
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        Browser::open_sized(url, (1280, 900))
    }

    /// The page in a window of `width` x `height` CSS pixels.
    fn open_sized(url: &str, (width, height): (u32, u32)) -> Browser {
        use std::io::BufRead;
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("chromium runs (apt install chromium)");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut port = None;
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                port = rest.split('/').next().map(str::to_string);
                break;
            }
        }
        let port = port.expect("chromium printed its DevTools address");
        // The page target's socket.
        let mut target = None;
        for _ in 0..100 {
            // DevTools keeps the connection open: read until the JSON is whole.
            let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            write!(
                s,
                "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
            )
            .unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            let mut list = Value::Null;
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw);
                if let Some((_, body)) = text.split_once("\r\n\r\n") {
                    if let Ok(v) = serde_json::from_str::<Value>(body) {
                        list = v;
                        break;
                    }
                }
            }
            target = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if target.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let target = target.expect("a page target");
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(target.as_str(), stream).unwrap();
        Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends a DevTools command; its result.
    fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let m = self.ws.read().unwrap();
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.send(
            "Runtime.evaluate",
            serde_json::json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
        );
        assert!(r["exceptionDetails"].is_null(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Presses a key as a keyboard would (`Tab`, `Enter`, ` `), through the browser's input
    /// pipeline: focus moves and the focused element acts as for a real key.
    fn press(&mut self, key: &str, code: u32) {
        let text = match key {
            "Enter" => "\r",
            " " => " ",
            _ => "",
        };
        let (named, key_code) = if key == " " {
            ("Space", 32)
        } else {
            (key, code)
        };
        self.send(
            "Input.dispatchKeyEvent",
            serde_json::json!({"type": "keyDown", "key": key, "code": named,
                "windowsVirtualKeyCode": key_code, "text": text}),
        );
        self.send(
            "Input.dispatchKeyEvent",
            serde_json::json!({"type": "keyUp", "key": key, "code": named,
                "windowsVirtualKeyCode": key_code}),
        );
    }

    /// Presses Tab until the focused element matches `selector`; how many presses it took.
    fn tab_to(&mut self, selector: &str) -> usize {
        let expr = format!(
            "!!document.activeElement && document.activeElement.matches({})",
            Value::from(selector)
        );
        for n in 1..=60 {
            self.press("Tab", 9);
            if self.eval(&expr) == Value::Bool(true) {
                return n;
            }
        }
        panic!("Tab never reaches {selector}");
    }

    /// Waits until `expr` is true in the page.
    fn wait_for(&mut self, secs: u64, expr: &str) {
        let ok = eventually(secs, || self.eval(expr) == Value::Bool(true));
        assert!(ok, "never true in the page: {expr}");
    }

    /// Clicks the element `selector` finds (it must exist).
    fn click(&mut self, selector: &str) {
        let expr = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return false; e.click(); return true; }})()",
            sel = Value::from(selector)
        );
        assert_eq!(
            self.eval(&expr),
            Value::Bool(true),
            "nothing to click at {selector}"
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dashboard_mount(env: &Env) -> Mount {
    let state = env.new_state_dir();
    env.try_mount(&state, &["--write-back", "0.2", "--dashboard"])
        .unwrap()
}

fn mp(m: &Mount) -> &str {
    m.dir.to_str().unwrap()
}

/// The part of the DOM from the element with `id` to the end of that section.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

const MINE: &[u8] = b"mine: written on this mount";
const THEIRS: &[u8] = b"theirs: written elsewhere while this mount was offline";

/// A conflict on notes.txt: this mount wrote [`MINE`] while offline, another machine
/// [`THEIRS`].
fn make_conflict(env: &Env, m: &Mount) -> (&'static [u8], &'static [u8]) {
    fs::write(m.path("notes.txt"), b"base").unwrap();
    m.sync();
    assert!(m.stratus(&["offline", mp(m), "on"]).status.success());
    fs::write(m.path("notes.txt"), MINE).unwrap();
    env.put_remote("notes.txt", THEIRS);
    assert!(m.stratus(&["offline", mp(m), "off"]).status.success());
    m.sync();
    (MINE, THEIRS)
}

/// The conflict copies beside the mount's files.
fn conflict_copies(m: &Mount) -> Vec<String> {
    fs::read_dir(&m.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("conflict"))
        .collect()
}

/// "Keep theirs" has taken effect: theirs at the path and no copy beside it. Theirs may have
/// been the file at the path all along (then the click only removes the copy, after the click
/// returns), so the path alone would not show that anything happened.
fn settled_on_theirs(m: &Mount, theirs: &[u8]) -> bool {
    fs::read(m.path("notes.txt")).ok().as_deref() == Some(theirs) && conflict_copies(m).is_empty()
}

#[test]
fn conflicts_view_shows_both_versions_and_keep_theirs_settles_it_on_disk() {
    let env = Env::new(Backend::Local);
    let m = dashboard_mount(&env);
    let page = Page::of(&m);
    let (mine, theirs) = make_conflict(&env, &m);

    let dom = page.dom("conflicts");
    page.screenshot("conflicts");
    let open = section(&dom, "conflicts-open");
    let open = &open[..open.find("id=\"conflicts-settled\"").unwrap()];
    assert!(open.contains("notes.txt"), "{open}");
    // Both versions, side by side, each with its own size.
    for v in [mine, theirs] {
        assert!(
            open.contains(&format!("<span class=\"size\">{} B</span>", v.len())),
            "no version of {} bytes in\n{open}",
            v.len()
        );
    }
    assert_eq!(open.matches("class=\"version\"").count(), 2, "{open}");
    // Who wrote each: this mount, and a program that left no stratus metadata (the other
    // machine wrote the remote folder directly, over the file this mount had uploaded).
    assert_eq!(
        open.matches("<span class=\"writer\">not recorded (written by another tool)</span>")
            .count(),
        1,
        "{open}"
    );
    // A line diff of the two texts: the line only in one version and the line only in the
    // other, each marked, and nothing else.
    let removed: Vec<&str> = open
        .split("<span class=\"del\">")
        .skip(1)
        .map(|s| &s[..s.find("</span>").unwrap()])
        .collect();
    let added: Vec<&str> = open
        .split("<span class=\"add\">")
        .skip(1)
        .map(|s| &s[..s.find("</span>").unwrap()])
        .collect();
    let (mine_s, theirs_s) = (
        String::from_utf8_lossy(mine),
        String::from_utf8_lossy(theirs),
    );
    let mut both: Vec<String> = removed
        .iter()
        .chain(&added)
        .map(|l| l.to_string())
        .collect();
    both.sort();
    let mut want = vec![format!("+ {theirs_s}"), format!("− {mine_s}")];
    if removed.first().is_some_and(|l| l.contains("theirs")) {
        want = vec![format!("+ {mine_s}"), format!("− {theirs_s}")];
    }
    want.sort();
    assert_eq!(both, want, "the line diff is wrong:\n{open}");
    assert!(open.contains("Keep theirs for notes.txt"), "{open}");
    // A click on "Keep theirs", in the browser.
    let mut b = Browser::open(&format!("{}#conflicts", page.url));
    b.wait_for(
        20,
        "!!document.body && document.body.dataset.loaded === '1'",
    );
    b.click("button[aria-label='Keep theirs for notes.txt']");

    assert!(
        eventually(20, || settled_on_theirs(&m, theirs)),
        "notes.txt holds {:?}; copies beside it: {:?}",
        fs::read_to_string(m.path("notes.txt")),
        conflict_copies(&m)
    );
    let out = m.stratus(&["--json", "conflicts", mp(&m)]);
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &all.as_array().unwrap()[0];
    assert!(!c["resolved_ms"].is_null(), "not settled: {c}");

    // The page shows it settled.
    let dom = page.dom("conflicts");
    let settled = section(&dom, "conflicts-settled");
    assert!(
        settled.contains("notes.txt") && settled.contains("settled"),
        "{settled}"
    );
    assert!(!settled.contains("Keep theirs"), "{settled}");
    page.screenshot("sync");
    m.unmount();
}

#[test]
fn offline_queue_view_lists_queued_files_and_the_offline_switch_stops_uploads() {
    let env = Env::new(Backend::Local);
    let m = dashboard_mount(&env);
    let page = Page::of(&m);
    fs::write(m.path("first.txt"), b"uploaded before").unwrap();
    m.sync();

    // The switch on the Sync view, clicked in the browser: offline.
    let mut b = Browser::open(&format!("{}#sync", page.url));
    b.wait_for(
        20,
        "!!document.body && document.body.dataset.loaded === '1'",
    );
    b.click("#offline-switch");
    b.wait_for(
        20,
        "document.getElementById('health').textContent === 'offline'",
    );
    // A toast says so.
    b.wait_for(
        10,
        "document.getElementById('toast').textContent.includes('Remote is offline')",
    );
    fs::write(m.path("queued-a.txt"), b"a while offline").unwrap();
    fs::write(m.path("queued-b.txt"), b"b while offline").unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let dom = page.dom("queue");
    page.screenshot("queue");
    let queue = section(&dom, "queue");
    for name in ["queued-a.txt", "queued-b.txt"] {
        assert!(
            queue.contains(&format!("<tr data-path=\"{name}\"")),
            "{name} not listed in\n{queue}"
        );
    }
    assert!(
        queue.find("queued-a.txt") < queue.find("queued-b.txt"),
        "out of order: {queue}"
    );
    let sync = page.dom("sync");
    assert!(
        sync.contains("id=\"health\" class=\"offline\""),
        "{}",
        section(&sync, "health")
    );
    let files = env.remote_files();
    assert!(
        !files.contains_key("queued-a.txt") && !files.contains_key("queued-b.txt"),
        "uploaded while offline: {:?}",
        files.keys()
    );

    // Online again, "sync now": both reach the remote, and the queue view empties.
    b.click("#offline-switch");
    b.wait_for(
        20,
        "document.getElementById('health').textContent === 'online'",
    );
    b.click("#sync-now");
    assert!(
        eventually(30, || {
            let f = env.remote_files();
            f.get("queued-a.txt").map(Vec::as_slice) == Some(&b"a while offline"[..])
                && f.contains_key("queued-b.txt")
        }),
        "not uploaded after going online: {:?}",
        env.remote_files().keys()
    );
    m.sync();
    let queue_now = page.get("/api/queue");
    assert_eq!(
        queue_now["rows"].as_array().unwrap().len(),
        0,
        "{queue_now}"
    );

    // Storage: the file browser shows each entry's state, and pins through the same attribute.
    let (code, body) = page.post(
        "/api/pin",
        serde_json::json!({"path": "first.txt", "on": true}),
    );
    assert_eq!(code, 200, "{body}");
    let pin = Command::new("getfattr")
        .args(["--only-values", "-n", "user.stratus.pin"])
        .arg(m.path("first.txt"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&pin.stdout), "1");
    let dom = page.dom("storage");
    page.screenshot("storage");
    let tree = section(&dom, "tree");
    assert!(tree.contains("<tr data-path=\"queued-a.txt\""), "{tree}");
    assert!(tree.contains("<td class=\"state\">synced</td>"), "{tree}");
    assert!(tree.contains(">Unpin</button>"), "{tree}");
    // A refusal comes back as JSON with its reason.
    let (code, body) = page.post("/api/retry", serde_json::json!({"path": "first.txt"}));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("nothing parked"),
        "{body}"
    );
    m.unmount();
}

#[test]
fn on_a_narrow_window_the_keyboard_alone_settles_a_conflict() {
    let env = Env::new(Backend::Local);
    let m = dashboard_mount(&env);
    let page = Page::of(&m);
    let (_, theirs) = make_conflict(&env, &m);
    // A phone-sized window: nothing is wider than it, on any view.
    let mut b = Browser::open_sized(&page.url, (390, 844));
    b.wait_for(
        20,
        "!!document.body && document.body.dataset.loaded === '1'",
    );
    let fits = "document.documentElement.scrollWidth <= window.innerWidth";
    assert_eq!(
        b.eval(fits),
        Value::Bool(true),
        "the Sync view scrolls sideways"
    );
    // Every control has a name a screen reader can read.
    let unnamed = b.eval(
        "[...document.querySelectorAll('button, input, a')].filter((e) => !(e.getAttribute('aria-label')          || e.textContent.trim() || (e.labels && e.labels.length))).map((e) => e.outerHTML)",
    );
    assert_eq!(unnamed, serde_json::json!([]), "controls without a name");

    // Tab to the Conflicts view's link and open it with Enter.
    b.tab_to("nav a[data-view='conflicts']");
    b.press("Enter", 13);
    b.wait_for(10, "!document.getElementById('view-conflicts').hidden");
    b.wait_for(
        20,
        "!!document.querySelector(\"button[aria-label='Keep theirs for notes.txt']\")",
    );
    assert_eq!(
        b.eval(fits),
        Value::Bool(true),
        "the Conflicts view scrolls sideways"
    );
    // Tab to "Keep theirs"; the page's refreshes (every second) leave the focus there.
    b.tab_to("button[aria-label='Keep theirs for notes.txt']");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        b.eval("document.activeElement.getAttribute('aria-label')"),
        Value::from("Keep theirs for notes.txt"),
        "a refresh took the focus away"
    );
    b.press("Enter", 13);
    assert!(
        eventually(20, || settled_on_theirs(&m, theirs)),
        "Enter on Keep theirs did not settle: notes.txt holds {:?}; copies beside it: {:?}",
        fs::read_to_string(m.path("notes.txt")),
        conflict_copies(&m)
    );
    for view in ["storage", "queue"] {
        b.eval(&format!("location.hash = '#{view}'"));
        b.wait_for(
            10,
            &format!("!document.getElementById('view-{view}').hidden"),
        );
        assert_eq!(
            b.eval(fits),
            Value::Bool(true),
            "the {view} view scrolls sideways"
        );
    }
    m.unmount();
}

#[test]
fn a_long_queue_is_listed_whole_and_the_quota_bar_reads_the_quota() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env
        .try_mount(
            &state,
            &["--write-back", "0.2", "--dashboard", "--quota", "10M"],
        )
        .unwrap();
    let page = Page::of(&m);
    assert!(m.stratus(&["offline", mp(&m), "on"]).status.success());
    // More than one page of the queue (200 rows): every entry shows, in order.
    for i in 0..250 {
        fs::write(m.path(&format!("q{i:03}.txt")), format!("file {i}")).unwrap();
    }
    fs::write(m.path("big.bin"), vec![1u8; 3 << 20]).unwrap();
    let dom = page.dom("queue");
    let queue = section(&dom, "queue");
    let listed: Vec<&str> = queue
        .split("<tr data-path=\"")
        .skip(1)
        .map(|r| &r[..r.find('"').unwrap()])
        .collect();
    let mut want: Vec<String> = (0..250).map(|i| format!("q{i:03}.txt")).collect();
    want.push("big.bin".into());
    assert_eq!(listed, want, "the queue view lists a different queue");

    // The storage bar measures against the quota, not the cache budget.
    let dom = page.dom("storage");
    let bar = section(&dom, "quota-label");
    assert!(bar.contains(">Used / quota<"), "{bar}");
    assert!(bar.contains("aria-valuemax=\"10485760\""), "{bar}");
    let used = m.status_json()["storage"]["used"].as_u64().unwrap();
    assert!(used >= 3 << 20, "used {used}");
    assert!(bar.contains(" of 10.0 MiB"), "{bar}");
    m.unmount();
}

#[test]
fn requests_without_the_token_get_nothing_and_foreign_origins_change_nothing() {
    let env = Env::new(Backend::Local);
    let m = dashboard_mount(&env);
    let page = Page::of(&m);
    for f in ["dashboard.token", "dashboard.url"] {
        let mode = fs::metadata(m.state.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // `stratus dashboard` prints the URL.
    let out = m.stratus(&["dashboard", mp(&m)]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), page.url);

    for path in ["/", "/api/status", "/api/conflicts", "/api/tree?path="] {
        let (code, body) = page.raw("GET", path, &[], "");
        assert_eq!((code, body.as_str()), (401, ""), "{path}");
        let (code, body) = page.raw(
            "GET",
            path,
            &[("Cookie", format!("stratus_dashboard={}", "0".repeat(64)))],
            "",
        );
        assert_eq!(
            (code, body.as_str()),
            (401, ""),
            "{path} with a wrong cookie"
        );
    }
    let (code, body) = page.raw("GET", "/?token=nottheone", &[], "");
    assert_eq!((code, body.as_str()), (401, ""));
    let (code, _) = page.raw(
        "POST",
        "/api/offline",
        &[("Origin", page.origin())],
        r#"{"on":true}"#,
    );
    assert_eq!(code, 401);

    // The token in the URL becomes an HttpOnly, SameSite=Strict cookie.
    let mut s = TcpStream::connect(&page.addr).unwrap();
    write!(
        s,
        "GET /?token={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        page.token, page.addr
    )
    .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let lower = head.to_lowercase();
    assert!(lower.contains("location: /\r\n"), "{head}");
    assert!(
        lower.contains("httponly") && lower.contains("samesite=strict"),
        "{head}"
    );

    // A page elsewhere cannot change state even when the browser sends the cookie along.
    for origin in [
        vec![("Origin", "http://evil.example".to_string())],
        vec![("Referer", "http://evil.example/page".to_string())],
        vec![],
    ] {
        let mut h = origin.clone();
        h.push(page.cookie());
        let (code, body) = page.raw("POST", "/api/offline", &h, r#"{"on":true}"#);
        assert_eq!(code, 403, "{origin:?}: {body}");
    }
    assert_eq!(page.get("/api/status")["health"]["state"], "online");
    let (code, _) = page.post("/api/offline", serde_json::json!({"on": true}));
    assert_eq!(code, 200);
    assert_eq!(page.get("/api/status")["health"]["state"], "offline");
    m.unmount();
}

#[test]
fn a_mount_without_dashboard_opens_no_port_and_says_so() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    // An earlier mount of this state dir served a dashboard; this one does not.
    let m = env.try_mount(&state, &["--dashboard"]).unwrap();
    let old = Page::of(&m);
    // The check below sees a listening socket when there is one.
    assert_eq!(sockets_of(m.daemon_pid()), 1);
    m.unmount();
    let m = env.try_mount(&state, &[]).unwrap();
    assert!(!state.join("dashboard.url").exists());
    assert!(!state.join("dashboard.token").exists());
    let out = m.stratus(&["dashboard", mp(&m)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no dashboard"), "{err}");
    assert!(
        TcpStream::connect(&old.addr).is_err(),
        "{} still answers",
        old.addr
    );
    assert_eq!(
        sockets_of(m.daemon_pid()),
        0,
        "the daemon listens on a port"
    );

    // A non-loopback address needs the explicit flag.
    let err = env
        .try_mount(&env.new_state_dir(), &["--dashboard=0.0.0.0:0"])
        .err()
        .expect("a non-loopback dashboard needs --dashboard-allow-remote");
    assert!(err.contains("--dashboard-allow-remote"), "{err}");
    m.unmount();
}

/// Listening TCP sockets held by `pid`.
fn sockets_of(pid: u32) -> usize {
    let listening: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .filter_map(|l| l.split_whitespace().nth(9).map(str::to_string))
        .collect();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|f| f.ok())
        .filter_map(|f| fs::read_link(f.path()).ok())
        .filter_map(|l| {
            l.to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .filter(|inode| listening.contains(inode))
        .count()
}
