//! The dashboard (`/ui/`) in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (fantoccini), against the real `aip serve` with a real `aip device`. Sign
//! in (a wrong key refused), a device appears live, a plan dispatched from the form runs
//! to the end on the page, its stdout shows, a long session is cancelled from its page, the
//! device going offline shows without a reload, a refused key sends back to the form; a
//! natural-language task planned by a scripted model shows its steps, tokens and answer;
//! a fleet job made through the API is listed and followed live to its end on its page,
//! and a long one is cancelled from it.
//!
//! Needs `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`;
//! `.ci/run` installs them); without them the test fails, saying so. Screenshots go to
//! `target/tmp/`; with `AIP_UPDATE_SCREENSHOTS=1` to `docs/screenshots/` (the README's).

#![cfg(unix)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aip_llm::scripted::{call, finish, Mock};
use aip_testkit::process::{free_port, Server};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const KEY: &str = "dashboard-test-key-0123456789";
/// How long the page may take to show anything the test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// chromedriver on a free port with a headless Chromium session; both stop on drop.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = tool("AIP_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("AIP_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        // Its own process group: the browsers it starts are stopped with it.
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {chromedriver}: {e}"));
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,860",
                    format!("--user-data-dir={}", profile.path().display())],
            }
        });
        let caps: serde_json::Map<String, Value> = caps.as_object().cloned().unwrap_or_default();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("chromedriver at {url}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Browser {
            client: Some(client),
            driver,
            _profile: profile,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("client")
    }

    /// Evaluates `js` (a function body returning a value) in the page.
    /// Asserts that the page's main view shows every one of `wanted`.
    async fn assert_shows(&self, wanted: &[&str]) {
        let page = self
            .eval("return document.getElementById('view').innerText")
            .await;
        let page = page.as_str().unwrap_or_default();
        for w in wanted {
            assert!(page.contains(w), "{w:?} not on the page:\n{page}");
        }
    }

    async fn eval(&self, js: &str) -> Value {
        self.c().execute(js, vec![]).await.unwrap_or(Value::Null)
    }

    /// Waits until `js` returns a truthy value; returns it.
    async fn until(&self, what: &str, js: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.eval(js).await;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("return document.body.innerText").await;
                panic!("the page never showed {what}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let el = self.c().find(Locator::Css(css)).await.expect(css);
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("type");
    }

    /// Clicks the page's Cancel button and confirms it.
    async fn confirm_cancel(&self) {
        self.click("#cancel").await;
        self.c().accept_alert().await.expect("confirm the cancel");
    }

    async fn click(&self, css: &str) {
        let el = self.c().find(Locator::Css(css)).await.expect(css);
        el.click().await.expect("click");
    }

    /// Saves a screenshot as `name`.png (see the file's header for where).
    async fn screenshot(&self, name: &str) -> usize {
        let png = self.c().screenshot().await.expect("screenshot");
        let dir = if std::env::var_os("AIP_UPDATE_SCREENSHOTS").is_some() {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
        } else {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
        };
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), &png).expect("write screenshot");
        png.len()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Ends the browser session (Chromium exits), also while a failed test unwinds.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                tokio::task::block_in_place(|| {
                    let _ =
                        rt.block_on(tokio::time::timeout(Duration::from_secs(5), client.close()));
                });
            }
        }
        // Then chromedriver and anything left in its process group.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

/// The path of a browser tool: the environment variable, else Debian's path; a clear
/// failure when it is missing.
fn tool(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} not found: the dashboard's browser tests need Chromium and chromedriver \
         (Debian: apt-get install chromium chromium-driver; or set {var})"
    );
    path
}

/// Text of the first element matching `css`, or "" (JavaScript for [`Browser::until`]).
fn text_of(css: &str) -> String {
    format!("const e = document.querySelector({css:?}); return e ? e.innerText : ''")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_fleet_and_its_sessions_live_in_a_real_browser() {
    // A scripted model (the real wire format) plans the natural-language task.
    let model = Mock::start(vec![
        call(
            "c1",
            "execute_command",
            json!({"command": "echo from-the-model"}),
        ),
        finish("completed", "All good."),
    ])
    .await
    .expect("scripted model");
    let model_url = format!("http://{}/v1", model.addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        &[
            "--api-key",
            KEY,
            "--llm-base-url",
            &model_url,
            "--llm-model",
            "scripted",
        ],
    );
    let base = server.url();
    let b = Browser::start().await;

    // Signing in: the page loads without the key, a wrong key is refused.
    b.c().goto(&format!("{base}/")).await.expect("open /");
    b.until(
        "the sign-in form",
        "return !document.getElementById('login').hidden",
    )
    .await;
    let timing = b
        .eval("const n = performance.getEntriesByType('navigation')[0]; return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd, bytes: performance.getEntriesByType('resource').reduce((s, r) => s + r.transferSize, n.transferSize)}")
        .await;
    eprintln!("dashboard load (sign-in page, cold): {timing}");
    b.fill("#key", "not-the-key-0123456789").await;
    b.click("#login button").await;
    b.until("the refusal", &text_of("#login-error")).await;
    assert_eq!(
        b.eval(&text_of("#login-error")).await,
        "Wrong API key.",
        "a wrong key"
    );
    // From the keyboard: the field has the focus, Enter signs in.
    assert_eq!(b.eval("return document.activeElement.id").await, "key");
    b.fill("#key", &format!("{KEY}\u{E007}")).await;
    b.until("the fleet", "return document.querySelector('#view h1')?.innerText === 'Fleet' && !document.getElementById('view').hidden").await;
    b.until(
        "the live stream",
        "return document.getElementById('live').dataset.state === 'live'",
    )
    .await;
    let url = b.c().current_url().await.expect("url");
    assert!(
        !url.as_str().contains(KEY),
        "the key is never in a URL: {url}"
    );

    // A device appears without a reload.
    let started = Instant::now();
    let device = server.device(
        "laptop",
        &["--api-key", KEY, "--tag", "rack=4", "--tag", "role=build"],
    );
    let _other = server.device("web-01", &["--api-key", KEY, "--tag", "role=web"]);
    b.until(
        "the device online",
        "return document.querySelector('tr[data-client=laptop] .b-online')",
    )
    .await;
    eprintln!("device shown {:?} after it started", started.elapsed());
    let row = b.eval(&text_of("tr[data-client=laptop]")).await;
    assert!(
        row.as_str()
            .is_some_and(|r| r.contains("rack=4") && r.contains("linux")),
        "{row}"
    );
    b.screenshot("fleet").await;

    // A plan from the form runs to the end on the session's page, stdout shown.
    b.click("a[data-nav=dispatch]").await;
    b.until("the form", "return document.getElementById('dispatch')")
        .await;
    // The new page's heading takes the focus (a screen reader announces it).
    assert_eq!(
        b.eval("return document.activeElement.innerText").await,
        "Dispatch a task"
    );
    b.fill("#target", "laptop").await;
    b.fill("#request", "echo hello-from-the-dashboard\nuname -s")
        .await;
    b.fill("#task-name", "hello").await;
    b.click("#dispatch button[type=submit]").await;
    b.until(
        "the session completed",
        "return document.querySelector('#view h1 .b-completed')",
    )
    .await;
    let path = b.c().current_url().await.expect("url").path().to_owned();
    assert!(path.starts_with("/ui/sessions/"), "{path}");
    let stdout = b.until("the stdout", &text_of("pre.stdout")).await;
    assert_eq!(stdout, "hello-from-the-dashboard\n");
    b.assert_shows(&[
        "$ echo hello-from-the-dashboard",
        "$ uname -s",
        "exit 0",
        "Round 1",
        "Round 2",
        "laptop",
    ])
    .await;
    b.screenshot("session").await;
    // Readable on a phone: nothing wider than the screen.
    b.c().set_window_size(390, 844).await.expect("resize");
    let overflow = "return document.documentElement.scrollWidth <= window.innerWidth";
    b.until("the session page within a phone's width", overflow)
        .await;
    b.c().set_window_size(1280, 860).await.expect("resize");

    // The link can be shared: a fresh load of the same address shows the same session.
    b.c().goto(&format!("{base}{path}")).await.expect("reload");
    b.until(
        "the session after a reload",
        "return document.querySelector('#view h1 .b-completed')",
    )
    .await;
    let (_, load) = (
        (),
        b.eval("const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd")
            .await,
    );
    let shown = b
        .until(
            "the rounds",
            "return document.querySelector('pre.stdout') && performance.now()",
        )
        .await;
    eprintln!("session page: load event {load} ms, session shown at {shown} ms");

    // A natural-language task: the model's steps, tool calls, tokens and answer.
    b.click("a[data-nav=dispatch]").await;
    b.until("the form", "return document.getElementById('dispatch')")
        .await;
    b.fill("#target", "laptop").await;
    b.click("input[name=mode][value=request]").await;
    b.fill("#request", "Say something from the machine").await;
    b.click("#dispatch button[type=submit]").await;
    b.until(
        "the agent's session completed",
        "return document.querySelector('#view h1 .b-completed')",
    )
    .await;
    let agent = b.until("the agent's answer", &text_of(".answer")).await;
    assert!(
        agent.as_str().is_some_and(|a| a.contains("All good.")),
        "{agent}"
    );
    b.assert_shows(&[
        "Step 1",
        "→ execute_command",
        "from-the-model",
        "Tokens: 200 prompt + 40 completion",
        "$ echo from-the-model",
    ])
    .await;

    // A long session is cancelled from its page.
    b.click("a[data-nav=dispatch]").await;
    b.until("the form", "return document.getElementById('dispatch')")
        .await;
    b.fill("#target", "laptop").await;
    b.fill("#request", "sleep 30").await;
    b.click("#dispatch button[type=submit]").await;
    b.until(
        "the session running",
        "return document.querySelector('#view h1 .b-running')",
    )
    .await;
    // The fleet counts it as the device's live session; back to it with the browser.
    let live_sessions = "const r = document.querySelector('tr[data-client=laptop]'); return r && r.cells[7].innerText";
    b.click("a[data-nav=fleet]").await;
    b.until("one live session", &format!("{live_sessions} === '1'"))
        .await;
    b.c().back().await.expect("back");
    b.until(
        "the session again",
        "return document.querySelector('#cancel')",
    )
    .await;
    b.confirm_cancel().await;
    b.until(
        "the session cancelled",
        "return document.querySelector('#view h1 .b-cancelled')",
    )
    .await;

    // The sessions, newest first, counted by state; one dispatched elsewhere appears live.
    b.click("a[data-nav=sessions]").await;
    b.until(
        "the list",
        "return document.querySelector('#sessions tbody tr[data-session]')",
    )
    .await;
    let list = b.eval(&text_of("#sessions tbody")).await;
    let list = list.as_str().unwrap_or_default().to_owned();
    assert!(
        list.contains("hello") && list.contains("completed") && list.contains("cancelled"),
        "{list}"
    );
    tokio::task::block_in_place(|| {
        server
            .aip(&[
                "dispatch",
                "--api-key",
                KEY,
                "--target",
                "web-01",
                "--task-name",
                "from-cli",
                "--command",
                "true",
                "--wait",
            ])
            .expect_code(0);
    });
    b.until(
        "the new session, completed",
        "return [...document.querySelectorAll('#sessions tbody tr')].some((r) => r.innerText.includes('from-cli') && r.querySelector('.b-completed'))",
    )
    .await;
    let counts = b.eval(&text_of(".counts")).await;
    assert!(
        counts
            .as_str()
            .is_some_and(|c| c.contains("completed 3") && c.contains("cancelled 1")),
        "{counts}"
    );

    // A fleet job over the real device, created through the API: listed, then followed
    // live on its page until the device's row shows it completed with its output.
    let job: Value = reqwest::Client::new()
        .post(format!("{base}/api/jobs"))
        .header("X-API-Key", KEY)
        .json(
            &json!({"selector": {"client_ids": "laptop"}, "task_name": "job-demo",
            "commands": [{"tool_name": "execute_command", "tool_type": "action",
                "parameters": {"command": "sleep 3; echo job-output; echo second-line"}}]}),
        )
        .send()
        .await
        .expect("POST /api/jobs")
        .json()
        .await
        .expect("the job");
    let job_id = job["job_id"].as_str().expect("job_id").to_owned();
    b.click("a[data-nav=jobs]").await;
    let row = format!("#jobs tr[data-job='{job_id}']");
    b.until(
        "the job in the list",
        &format!("return document.querySelector(\"{row}\")"),
    )
    .await;
    let listed = b.eval(&text_of(&row)).await;
    assert!(
        listed
            .as_str()
            .is_some_and(|r| r.contains(&job_id[..8]) && r.contains("job-demo")),
        "{listed}"
    );
    b.click(&format!("{row} a")).await;
    b.until(
        "the job's page",
        "return document.querySelector('#members tr[data-client=laptop]')",
    )
    .await;
    assert_eq!(
        b.c().current_url().await.expect("url").path(),
        format!("/ui/jobs/{job_id}")
    );
    let running_at_first = b
        .eval("return !!document.querySelector('#view h1 .b-running')")
        .await;
    eprintln!("job page opened while the job ran: {running_at_first}");
    b.until(
        "the job completed, without a reload",
        "return document.querySelector('#view h1 .b-completed') && document.querySelector('#members tr[data-client=laptop] .b-completed')",
    )
    .await;
    let member = b.eval(&text_of("#members tr[data-client=laptop]")).await;
    let member = member.as_str().unwrap_or_default().to_owned();
    assert!(
        member.contains("completed")
            && member.contains("job-output")
            && !member.contains("second-line"),
        "{member}"
    );
    let counts = b.eval(&text_of(".counts")).await;
    assert!(
        counts.as_str().is_some_and(|c| c.contains("completed 1")),
        "{counts}"
    );
    b.screenshot("job").await;
    b.c().set_window_size(390, 844).await.expect("resize");
    b.until("the job page within a phone's width", overflow)
        .await;
    b.c().set_window_size(1280, 860).await.expect("resize");
    // Its device's session is a link away.
    b.click("#members tr[data-client=laptop] a").await;
    b.until(
        "the member's session",
        "return document.querySelector('#view h1 .b-completed') && document.querySelector('pre.stdout')",
    )
    .await;
    assert!(b
        .c()
        .current_url()
        .await
        .expect("url")
        .path()
        .starts_with("/ui/sessions/"));

    // A long job is cancelled from its page.
    let long: Value = reqwest::Client::new()
        .post(format!("{base}/api/jobs"))
        .header("X-API-Key", KEY)
        .json(&json!({"selector": {"client_ids": "laptop"},
            "commands": [{"tool_name": "execute_command", "tool_type": "action",
                "parameters": {"command": "sleep 30"}}]}))
        .send()
        .await
        .expect("POST /api/jobs")
        .json()
        .await
        .expect("the job");
    let long_id = long["job_id"].as_str().expect("job_id");
    b.click("a[data-nav=jobs]").await;
    let row = format!("#jobs tr[data-job='{long_id}'] a");
    b.until(
        "the long job in the list",
        &format!("return document.querySelector(\"{row}\")"),
    )
    .await;
    b.click(&row).await;
    b.until(
        "the job running",
        "return document.querySelector('#members tr[data-client=laptop] .b-running') && document.querySelector('#cancel')",
    )
    .await;
    b.confirm_cancel().await;
    b.until(
        "the job cancelled",
        "return document.querySelector('#view h1 .b-cancelled') && document.querySelector('#members tr[data-client=laptop] .b-cancelled') && !document.querySelector('#cancel')",
    )
    .await;

    // The device going offline shows on the fleet without a reload.
    b.click("a[data-nav=fleet]").await;
    b.until(
        "the device online",
        "return document.querySelector('tr[data-client=laptop] .b-online')",
    )
    .await;
    b.until("no live session", &format!("{live_sessions} === '0'"))
        .await;
    b.c().set_window_size(390, 844).await.expect("resize");
    b.until("the fleet within a phone's width", overflow).await;
    b.c().set_window_size(1280, 860).await.expect("resize");
    drop(device);
    b.until(
        "the device offline",
        "return document.querySelector('tr[data-client=laptop] .b-offline')",
    )
    .await;

    // A key the server refuses sends the user back to the form.
    b.eval("sessionStorage.setItem('aip.apiKey', 'revoked-key-0123456789'); return true")
        .await;
    b.c()
        .goto(&format!("{base}/ui/sessions"))
        .await
        .expect("open");
    b.until(
        "the sign-in form",
        "return !document.getElementById('login').hidden",
    )
    .await;
}
