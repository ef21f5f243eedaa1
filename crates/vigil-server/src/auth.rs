//! Authentication and authorisation: JWT bearer tokens (HS256 with a key kept in the data
//! directory, plus RS256/EdDSA public keys for tokens issued elsewhere), roles, environment
//! scopes, revocation.
//!
//! Claims: `sub`, `role` (`admin` > `operator` > `viewer`; `agent` may only write and
//! heartbeat), `envs` (a list of environment names, or `"*"`), `exp`, `iat`, `jti`. The first
//! listed environment is the token's default.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use vigil_meta::{Meta, TokenRecord};

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read, write, acknowledge and manage operational objects.
    Operator,
    /// Read only.
    Viewer,
    /// Write metrics and heartbeats only.
    Agent,
}

impl Role {
    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "viewer" => Role::Viewer,
            "agent" => Role::Agent,
            _ => return None,
        })
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Write samples or heartbeats: agent, operator, admin.
    Write,
    /// Read data: viewer, operator, admin.
    Read,
    /// Operations (maintenance windows, acknowledgements): operator, admin.
    Operate,
    /// Administration: admin.
    Admin,
}

impl Need {
    /// Whether `role` satisfies this need.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Need::Write => matches!(role, Role::Agent | Role::Operator | Role::Admin),
            Need::Read => matches!(role, Role::Viewer | Role::Operator | Role::Admin),
            Need::Operate => matches!(role, Role::Operator | Role::Admin),
            Need::Admin => role == Role::Admin,
        }
    }
}

/// JWT claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Environments: a list, or `"*"`.
    pub envs: Envs,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    #[serde(default)]
    pub iat: u64,
    /// Token id.
    pub jti: String,
}

/// Environment scope of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Envs {
    /// `"*"`: every environment.
    All(String),
    /// These environments; the first is the default.
    List(Vec<String>),
}

impl Envs {
    /// Builds a scope from CLI-style input (`*` or names).
    pub fn from_names(names: &[String]) -> Envs {
        if names.iter().any(|n| n == "*") {
            Envs::All("*".into())
        } else {
            Envs::List(names.to_vec())
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            Envs::All(_) => vec!["*".into()],
            Envs::List(v) => v.clone(),
        }
    }
}

/// The caller, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Subject.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Scope.
    pub envs: Envs,
    /// Token id.
    pub jti: String,
}

impl Principal {
    /// Whether the principal may touch `env`.
    pub fn env_allowed(&self, env: &str) -> bool {
        match &self.envs {
            Envs::All(s) => s == "*",
            Envs::List(v) => v.iter().any(|e| e == env),
        }
    }

    /// The token's default environment.
    pub fn default_env(&self) -> Option<&str> {
        match &self.envs {
            Envs::List(v) => v.first().map(String::as_str),
            Envs::All(_) => None,
        }
    }

    /// The principal used when auth is switched off.
    pub fn anonymous_admin() -> Self {
        Principal {
            sub: "anonymous".into(),
            role: Role::Admin,
            envs: Envs::All("*".into()),
            jti: String::new(),
        }
    }
}

/// Why a token was refused (all map to 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials.
    #[error(
        "missing credentials: send Authorization: Bearer <token> (or basic auth with the token as password)"
    )]
    Missing,
    /// Malformed header.
    #[error("malformed Authorization header")]
    Malformed,
    /// Signature, format or expiry problem.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Revoked.
    #[error("token {0} has been revoked")]
    Revoked(String),
}

/// Key management and token verification.
pub struct Authn {
    hs: DecodingKey,
    extra: Vec<(Algorithm, DecodingKey)>,
    meta: Arc<Meta>,
    revoked: Mutex<RevokedCache>,
    /// Tokens whose signature was checked: token → (principal, expiry in s). Saves the
    /// signature check and claim parsing on every request of a keep-alive agent; expiry and
    /// revocation are still checked each time.
    verified: parking_lot::RwLock<VerifiedCache>,
}

/// Verified tokens: the principal and the token's expiry (Unix seconds).
type VerifiedCache = hashbrown::HashMap<Box<str>, (Arc<Principal>, u64)>;

/// Most verified tokens remembered; the cache starts over when full.
const VERIFIED_CACHE: usize = 65_536;

struct RevokedCache {
    version: i64,
    checked: Option<Instant>,
    set: HashSet<String>,
}

impl std::fmt::Debug for Authn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authn")
            .field("extra_keys", &self.extra.len())
            .finish()
    }
}

/// The signing key file in a data directory.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("signing.key")
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Loads the HS256 key, creating 32 random bytes on first use. Returns (key, created).
pub fn load_or_create_key(data_dir: &Path) -> std::io::Result<(Vec<u8>, bool)> {
    let p = key_path(data_dir);
    match std::fs::read(&p) {
        Ok(k) if k.len() >= 32 => Ok((k, false)),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is shorter than 32 bytes", p.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let mut k = vec![0u8; 32];
            std::fs::File::open("/dev/urandom")?.read_exact_into(&mut k)?;
            write_private(&p, &k)?;
            Ok((k, true))
        }
        Err(e) => Err(e),
    }
}

trait ReadExact {
    fn read_exact_into(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ReadExact for std::fs::File {
    fn read_exact_into(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        use std::io::Read;
        self.read_exact(buf)
    }
}

fn random_id() -> String {
    let mut b = [0u8; 12];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact_into(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Mints an HS256 token and records it in the metadata store.
pub fn mint(
    meta: &Meta,
    key: &[u8],
    sub: &str,
    role: Role,
    envs: Envs,
    ttl: Duration,
    now_ms: i64,
) -> Result<(String, TokenRecord), String> {
    let now = (now_ms / 1000) as u64;
    let claims = Claims {
        sub: sub.to_string(),
        role,
        envs: envs.clone(),
        exp: now + ttl.as_secs(),
        iat: now,
        jti: random_id(),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key),
    )
    .map_err(|e| e.to_string())?;
    let rec = TokenRecord {
        jti: claims.jti.clone(),
        sub: claims.sub,
        role: role.as_str().into(),
        envs: envs.names(),
        created_ms: now_ms,
        expires_ms: (claims.exp * 1000) as i64,
        revoked_ms: None,
    };
    meta.insert_token(&rec).map_err(|e| e.to_string())?;
    Ok((token, rec))
}

/// Writes a token to a file readable only by its owner.
pub fn write_token_file(path: &Path, token: &str) -> std::io::Result<()> {
    write_private(path, format!("{token}\n").as_bytes())
}

impl Authn {
    /// Builds the verifier from the HS256 key and extra public key files.
    pub fn new(hs_key: &[u8], public_keys: &[PathBuf], meta: Arc<Meta>) -> Result<Self, String> {
        let mut extra = Vec::new();
        for p in public_keys {
            let pem =
                std::fs::read(p).map_err(|e| format!("read public key {}: {e}", p.display()))?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                extra.push((Algorithm::RS256, k));
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                extra.push((Algorithm::EdDSA, k));
            } else {
                return Err(format!(
                    "public key {} is neither an RSA nor an Ed25519 PEM key",
                    p.display()
                ));
            }
        }
        Ok(Self {
            hs: DecodingKey::from_secret(hs_key),
            extra,
            meta,
            revoked: Mutex::new(RevokedCache {
                version: -1,
                checked: None,
                set: HashSet::new(),
            }),
            verified: parking_lot::RwLock::new(hashbrown::HashMap::new()),
        })
    }

    fn validation(alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "sub"]);
        v
    }

    /// Verifies a token and returns its principal.
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let hit = self.verified.read().get(token).cloned();
        if let Some((p, exp)) = hit {
            if exp + 5 < now {
                self.verified.write().remove(token);
                return Err(AuthError::Invalid("ExpiredSignature".into()));
            }
            if self.is_revoked(&p.jti) {
                return Err(AuthError::Revoked(p.jti.clone()));
            }
            return Ok(p);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let data = if header.alg == Algorithm::HS256 {
            jsonwebtoken::decode::<Claims>(token, &self.hs, &Self::validation(Algorithm::HS256))
        } else {
            let mut last = Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into());
            for (alg, key) in self.extra.iter().filter(|(a, _)| *a == header.alg) {
                last = jsonwebtoken::decode::<Claims>(token, key, &Self::validation(*alg));
                if last.is_ok() {
                    break;
                }
            }
            last
        }
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        if self.is_revoked(&c.jti) {
            return Err(AuthError::Revoked(c.jti));
        }
        let p = Arc::new(Principal {
            sub: c.sub,
            role: c.role,
            envs: c.envs,
            jti: c.jti,
        });
        let mut cache = self.verified.write();
        if cache.len() >= VERIFIED_CACHE {
            cache.clear();
        }
        cache.insert(token.into(), (p.clone(), c.exp));
        Ok(p)
    }

    fn is_revoked(&self, jti: &str) -> bool {
        let mut r = self.revoked.lock();
        let stale = r
            .checked
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
        if stale {
            r.checked = Some(Instant::now());
            if let Ok(v) = self.meta.data_version()
                && v != r.version
                && let Ok(list) = self.meta.revoked()
            {
                r.set = list.into_iter().collect();
                r.version = v;
            }
        }
        r.set.contains(jti)
    }

    /// Reloads the revocation list now (after a revocation made through the API).
    pub fn refresh_revocations(&self) {
        let mut r = self.revoked.lock();
        r.checked = None;
        r.version = -1;
    }

    /// Extracts the token from an `Authorization` header value: `Bearer <t>`, or `Basic`
    /// with any user name and the token as password.
    pub fn token_from_header(value: &str) -> Result<Cow<'_, str>, AuthError> {
        let value = value.trim();
        if let Some(t) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        {
            return Ok(Cow::Borrowed(t.trim()));
        }
        if let Some(b) = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
        {
            let raw = base64_decode(b.trim()).ok_or(AuthError::Malformed)?;
            let s = String::from_utf8(raw).map_err(|_| AuthError::Malformed)?;
            let (_, pass) = s.split_once(':').ok_or(AuthError::Malformed)?;
            return Ok(Cow::Owned(pass.to_string()));
        }
        Err(AuthError::Malformed)
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    };
    let b: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(b.len() * 3 / 4);
    for chunk in b.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Arc<Meta>, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let meta = Arc::new(Meta::open(&d.path().join("meta.db")).unwrap());
        let (key, created) = load_or_create_key(d.path()).unwrap();
        assert!(created);
        (d, meta, key)
    }

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn key_is_created_once_with_mode_0600() {
        let (d, _, key) = setup();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path(d.path()))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_key(d.path()).unwrap(), (key, false));
    }

    #[test]
    fn mint_verify_revoke() {
        let (_d, meta, key) = setup();
        let a = Authn::new(&key, &[], meta.clone()).unwrap();
        let (t, rec) = mint(
            &meta,
            &key,
            "ci",
            Role::Agent,
            Envs::List(vec!["prod".into()]),
            Duration::from_secs(60),
            now_ms(),
        )
        .unwrap();
        let p = a.verify(&t).unwrap();
        assert_eq!((p.role, p.default_env()), (Role::Agent, Some("prod")));
        assert!(p.env_allowed("prod") && !p.env_allowed("staging"));
        meta.revoke_token(&rec.jti, now_ms()).unwrap();
        a.refresh_revocations();
        assert!(matches!(a.verify(&t), Err(AuthError::Revoked(_))));
    }

    #[test]
    fn expired_forged_and_garbage_tokens_are_refused() {
        let (_d, meta, key) = setup();
        let a = Authn::new(&key, &[], meta.clone()).unwrap();
        let (t, _) = mint(
            &meta,
            &key,
            "x",
            Role::Admin,
            Envs::All("*".into()),
            Duration::from_secs(0),
            now_ms() - 3_600_000,
        )
        .unwrap();
        assert!(matches!(a.verify(&t), Err(AuthError::Invalid(m)) if m.contains("xpired")));
        let (t, _) = mint(
            &meta,
            b"another key that is 32 bytes lo",
            "x",
            Role::Admin,
            Envs::All("*".into()),
            Duration::from_secs(60),
            now_ms(),
        )
        .unwrap();
        assert!(a.verify(&t).is_err());
        assert!(a.verify("not.a.jwt").is_err());
    }

    #[test]
    fn header_forms() {
        assert_eq!(Authn::token_from_header("Bearer abc").unwrap(), "abc");
        // "user:tok" in base64
        assert_eq!(
            Authn::token_from_header("Basic dXNlcjp0b2s=").unwrap(),
            "tok"
        );
        assert!(Authn::token_from_header("Digest x").is_err());
        assert!(Authn::token_from_header("Basic !!!").is_err());
    }

    #[test]
    fn roles() {
        assert!(Need::Write.allows(Role::Agent) && !Need::Read.allows(Role::Agent));
        assert!(Need::Read.allows(Role::Viewer) && !Need::Write.allows(Role::Viewer));
        assert!(Need::Admin.allows(Role::Admin) && !Need::Admin.allows(Role::Operator));
    }
}
