//! Starts the real `vigil` binary on an ephemeral port with a temporary data directory and
//! talks HTTP/1.1 to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_vigil");

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    pub admin: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `dir` (kept by the caller).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Server {
        let s = Self::spawn(dir, extra);
        s.wait_ready();
        s
    }

    /// Starts a server without waiting for readiness over plain HTTP (for TLS).
    pub fn spawn(dir: &Path, extra: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("VIGIL_LOG", "warn");
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let mut addr = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("vigil listening on ") {
                addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .to_string();
                break;
            }
        }
        assert!(!addr.is_empty(), "server did not start");
        std::thread::spawn(move || for _ in lines {});
        let admin = std::fs::read_to_string(dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Server {
            child,
            addr,
            dir: dir.to_path_buf(),
            admin,
            _tmp: None,
        }
    }

    pub fn wait_ready(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(r) = request(&self.addr, "GET", "/readyz", &[], b"")
                && r.status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server not ready");
    }

    /// Mints a token with the CLI against this server's data directory (while it runs).
    pub fn token(&self, role: &str, envs: &[&str]) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "token",
            "create",
            "--role",
            role,
            "--sub",
            "test",
            "--data-dir",
        ])
        .arg(&self.dir);
        for e in envs {
            cmd.args(["--env", e]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn post(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut h: Vec<(String, String)> = headers
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        if let Some(t) = token {
            h.push(("Authorization".into(), format!("Bearer {t}")));
        }
        let hr: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        request(&self.addr, "POST", path, &hr, body).unwrap()
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let h = token.map(|t| format!("Bearer {t}"));
        let hr: Vec<(&str, &str)> = h.iter().map(|v| ("Authorization", v.as_str())).collect();
        request(&self.addr, "GET", path, &hr, b"").unwrap()
    }

    /// Head series count from /metrics.
    pub fn head_series(&self) -> f64 {
        let m = self.get("/metrics", Some(&self.admin)).body_str();
        m.lines()
            .find_map(|l| l.strip_prefix("vigil_tsdb_head_series "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    }

    pub fn signal(&mut self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_str()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Asserts the JSON error shape and returns (code, message).
    pub fn error(&self) -> (String, String) {
        let j = self.json();
        let e = &j["error"];
        (
            e["code"]
                .as_str()
                .unwrap_or_else(|| panic!("no error.code in {j}"))
                .to_string(),
            e["message"].as_str().unwrap().to_string(),
        )
    }
}

pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    let mut chunked = false;
    let mut length: Option<usize> = None;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok();
            }
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut c = vec![0u8; n + 2];
            r.read_exact(&mut c)?;
            body.extend_from_slice(&c[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Reads every sample of `env` from a stopped server's data directory.
pub fn read_store(dir: &Path, env: &str) -> Vec<(String, Vec<(i64, f64)>)> {
    let opts = vigil_tsdb::Options {
        maintenance_interval: None,
        ..vigil_tsdb::Options::default()
    };
    let db = vigil_tsdb::Db::open(dir, opts).unwrap();
    let q = db.querier(env, 0, i64::MAX);
    let m = vigil_model::Matcher::new(vigil_model::MatchOp::Re, "__name__", ".+").unwrap();
    q.select(&[m])
        .unwrap()
        .map(|s| {
            (
                s.labels.to_string(),
                vigil_tsdb::collect_samples(s.samples).unwrap(),
            )
        })
        .collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a program is on PATH; the peer tests need it (CI installs it) and fail loudly
/// without it rather than passing vacuously.
pub fn require(program: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{program} is required by this test (CI installs it; locally: apt-get install …)"
    );
}
