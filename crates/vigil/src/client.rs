//! A small blocking HTTP/1.1 client for the CLI's calls to a running server (`vigil query`):
//! one request per connection, `Content-Length` or chunked responses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Where and as whom to call a running server.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// Server base URL.
    #[arg(long, env = "VIGIL_URL", default_value = "http://127.0.0.1:9700")]
    pub url: String,
    /// Bearer token (else --token-file, else DATA_DIR/admin.token).
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Data directory whose admin.token is used when no token is given.
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = "./vigil-data")]
    pub data_dir: PathBuf,
    /// Environment (sent as X-Scope-OrgID).
    #[arg(long)]
    pub env: Option<String>,
}

impl Conn {
    /// Authorization (token, else token file, else the data directory's admin token) and
    /// environment headers.
    pub fn headers(&self) -> Result<Vec<(&'static str, String)>> {
        let mut h = Vec::new();
        let tok = match &self.token {
            Some(t) => Some(t.trim().to_string()),
            None => match read_token(self.token_file.as_deref())? {
                Some(t) => Some(t),
                None => std::fs::read_to_string(self.data_dir.join("admin.token"))
                    .ok()
                    .map(|t| t.trim().to_string()),
            },
        };
        if let Some(t) = tok {
            h.push(("Authorization", format!("Bearer {t}")));
        }
        if let Some(e) = &self.env {
            h.push(("X-Scope-OrgID", e.clone()));
        }
        Ok(h)
    }
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `host:port` of an `http://` URL (for the raw keep-alive senders of the benchmarks).
pub fn http_host(url: &str) -> Result<String> {
    Ok(url
        .strip_prefix("http://")
        .context("--url must start with http://")?
        .trim_end_matches('/')
        .to_string())
}

/// The token in `path`, trimmed; `None` without a path.
pub fn read_token(path: Option<&std::path::Path>) -> Result<Option<String>> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .with_context(|| format!("read {}", p.display()))
            .map(|t| t.trim().to_string())
    })
    .transpose()
}

/// Splits `http://host:port[/prefix]` into `host:port` and the path prefix.
fn split_url(url: &str) -> Result<(String, String)> {
    if url.starts_with("https://") {
        bail!(
            "{url}: this command speaks plain HTTP only; point it at a loopback listener or use curl with TLS"
        );
    }
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: expected http://HOST:PORT"))?;
    let (host, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        bail!("{url}: no host");
    }
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, prefix.to_string()))
}

/// Sends a form-encoded POST to `path` under `base_url`.
pub fn post_form(
    base_url: &str,
    path: &str,
    form: &[(&str, String)],
    headers: &[(&str, String)],
) -> Result<Response> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    post(
        base_url,
        path,
        "application/x-www-form-urlencoded",
        &body,
        headers,
        300,
    )
}

/// Sends a JSON POST to `path` under `base_url`.
pub fn post_json(
    base_url: &str,
    path: &str,
    body: &str,
    headers: &[(&str, String)],
) -> Result<Response> {
    post(base_url, path, "application/json", body, headers, 60)
}

fn post(
    base_url: &str,
    path: &str,
    content_type: &str,
    body: &str,
    headers: &[(&str, String)],
    timeout_s: u64,
) -> Result<Response> {
    request(
        "POST",
        base_url,
        path,
        content_type,
        body,
        headers,
        timeout_s,
    )
}

/// Sends `method` to `path` under `base_url` (a body only when not empty).
pub fn request(
    method: &str,
    base_url: &str,
    path: &str,
    content_type: &str,
    body: &str,
    headers: &[(&str, String)],
    timeout_s: u64,
) -> Result<Response> {
    let (host, prefix) = split_url(base_url)?;
    let mut s = TcpStream::connect(&host).with_context(|| format!("connect to {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(timeout_s)))?;
    let mut head = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        if v.contains(['\r', '\n']) {
            bail!("header {k} holds a line break");
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    read_response(BufReader::new(s))
}

fn read_response(mut r: BufReader<TcpStream>) -> Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP status line {line:?}"))?;
    let mut len: Option<usize> = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            if n == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9700").unwrap(),
            ("127.0.0.1:9700".to_string(), String::new())
        );
        assert_eq!(
            split_url("http://vigil/prefix/").unwrap(),
            ("vigil:80".to_string(), "/prefix".to_string())
        );
        assert!(split_url("https://x").is_err());
        assert!(split_url("ftp://x").is_err());
        assert!(split_url("http://").is_err());
    }
}
