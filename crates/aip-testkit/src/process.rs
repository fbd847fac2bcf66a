//! The real `aip` binary as child processes, for the tests of `aip-cli` (which make cargo
//! build it): a server on port 0 (its address read from its own log line), devices, and
//! one-shot client runs with their exit code and output, and a client on a pseudo-terminal
//! ([`Terminal`]).

// A harness: any failure here is the calling test's failure.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `aip` binary beside the running test's own executable (`target/<profile>/aip`; a
/// test executable lives in `target/<profile>/deps/`).
pub static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable in target/<profile>/deps");
    let bin = profile_dir.join(format!("aip{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not built: process tests belong to aip-cli",
        bin.display()
    );
    bin.to_string_lossy().into_owned()
});

/// `aip <args>` with `env`, none of the caller's AIP settings or log filter, stdin closed
/// and both outputs piped.
fn aip(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(&*BIN);
    cmd.args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .env_remove("AIP_URL")
        .env_remove("AIP_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A port that was free a moment ago (the kernel's pick for an unbound socket).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child `aip` whose stderr lines are collected; killed and reaped on drop.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawns `aip <args>` with stdout and stderr collected.
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_env(args, &[])
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = aip(args, env).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Proc { child, lines }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The first line holding `needle` (10 s), else a panic with the output.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "aip exited ({st}) before printing {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within 10 s:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit (15 s); its code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "aip did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `aip serve` on 127.0.0.1, port chosen by the kernel.
pub struct Server {
    pub proc: Proc,
    pub port: u16,
}

impl Server {
    /// `aip serve --port 0 --data-dir DIR <extra>`, ready when it logs its address.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_on(0, data_dir, extra)
    }

    /// [`Server::start`] on a given port (0: any).
    pub fn start_on(port: u16, data_dir: &Path, extra: &[&str]) -> Server {
        let port = port.to_string();
        let mut args = vec![
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args);
        let line = proc.wait_for_line("aip server listening");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Server { proc, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Starts the real device agent `aip device` as `id` and waits until it is registered.
    pub fn device(&self, id: &str, extra: &[&str]) -> Proc {
        let ws = self.ws();
        let mut args = vec!["device", "--server", &ws, "--client-id", id];
        args.extend_from_slice(extra);
        let mut dev = Proc::spawn(&args);
        dev.wait_for_line("registered");
        dev
    }

    /// `aip <args> --url <this server>` to completion.
    pub fn aip(&self, args: &[&str]) -> Run {
        let url = self.url();
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--url", &url]);
        run(&all)
    }
}

/// A finished client run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the whole run unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "{self:#?}");
        self
    }

    /// Panics unless stdout holds every one of `wanted`.
    pub fn stdout_has(&self, wanted: &[&str]) -> &Run {
        for w in wanted {
            assert!(self.stdout.contains(w), "stdout lacks {w:?}: {self:#?}");
        }
        self
    }

    /// Panics unless stderr holds every one of `wanted`.
    pub fn stderr_has(&self, wanted: &[&str]) -> &Run {
        for w in wanted {
            assert!(self.stderr.contains(w), "stderr lacks {w:?}: {self:#?}");
        }
        self
    }
}

/// `aip <args>` to completion (60 s at most).
pub fn run(args: &[&str]) -> Run {
    run_env(args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let child = aip(args, env).spawn().unwrap();
    // Output is read while the child runs (a full pipe would block it).
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("aip {args:?} did not finish within 60 s");
        }
    };
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `aip <args>` on a pseudo-terminal (util-linux `script`): keys in, the screen out.
pub struct Terminal {
    child: std::process::Child,
    keys: std::process::ChildStdin,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Terminal {
    /// `aip <args>` with `TERM=xterm`.
    pub fn run(args: &str) -> Terminal {
        Terminal::run_as(args, Some("xterm"))
    }

    /// `TERM` is `term` (`None`: unset, a terminal nothing can draw on).
    pub fn run_as(args: &str, term: Option<&str>) -> Terminal {
        use std::io::Read;
        // `exec`: no shell stays between `script` and the client (dash, CI's /bin/sh, would
        // take the Ctrl-C itself and exit 130 whatever the client chose).
        let line = format!("exec {} {args}", *BIN);
        let mut command = std::process::Command::new("script");
        command.env_remove("TERM");
        if let Some(term) = term {
            command.env("TERM", term);
        }
        let mut child = command
            .args(["-qec", &line, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("util-linux `script` runs the client on a pseudo-terminal");
        let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut out = child.stdout.take().unwrap();
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let keys = child.stdin.take().unwrap();
        Terminal {
            child,
            keys,
            screen,
        }
    }

    /// Everything the terminal showed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits (10 s) until the screen shows `needle`.
    pub fn wait_for(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.text().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} on the terminal:\n{}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Types `keys` on the terminal.
    pub fn type_keys(&mut self, keys: &[u8]) {
        use std::io::Write;
        self.keys.write_all(keys).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits for the client's exit; its code.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }
}
