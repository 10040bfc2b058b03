//! The optional keyed handshake: a pre-shared secret proves both ends of a connection to
//! each other before anything else happens (VMI 2.1 had none; its networks were trusted).
//!
//! Each side sends a fresh 32-byte nonce; each proves it holds the key with
//! HMAC-SHA256(key, role label | both nonces | both keys | the filter signature), the
//! listener first (in its challenge), then the connector. A peer without the key learns only
//! a random nonce and is dropped with a logged reason. The key comes from a file readable by
//! its owner alone, named by a transport's `auth_key_file` parameter or by
//! `VMI_AUTH_KEY_FILE`. The handshake authenticates peers; it does not encrypt or sign the
//! data that follows (see the threat model in the design document).
#![deny(unsafe_code)]

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a nonce and of a proof.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof (an HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Shortest key accepted.
pub const MIN_KEY: usize = 16;
/// Longest key file read.
pub const MAX_KEY_FILE: u64 = 4096;
/// The environment variable naming the key file when the specfile does not.
pub const KEY_FILE_VAR: &str = "VMI_AUTH_KEY_FILE";

/// Which side proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that accepted the connection.
    Listener,
    /// The side that opened it.
    Connector,
}

/// A pre-shared key.
#[derive(Clone)]
pub struct AuthKey {
    bytes: Vec<u8>,
    /// Where it came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthKey(from {})", self.source)
    }
}

/// What both proofs cover besides the key.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    /// The connector's nonce.
    pub connector_nonce: &'a [u8; NONCE_LEN],
    /// The listener's nonce.
    pub listener_nonce: &'a [u8; NONCE_LEN],
    /// The connector's key.
    pub from_key: &'a str,
    /// The key it asked for.
    pub to_key: &'a str,
    /// The connector's filter signature.
    pub signature: &'a str,
}

impl AuthKey {
    /// A key from bytes (tests, or keys held elsewhere).
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<AuthKey, String> {
        if bytes.len() < MIN_KEY {
            return Err(format!(
                "the authentication key from {source} has {} bytes; use at least {MIN_KEY} random bytes (for example: head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE)",
                bytes.len()
            ));
        }
        Ok(AuthKey {
            bytes: bytes.to_vec(),
            source: source.into(),
        })
    }

    /// Reads a key file: a regular file owned by this user and readable by no one else. A
    /// trailing newline is not part of the key.
    pub fn from_file(path: &Path) -> Result<AuthKey, String> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read the authentication key file {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!(
                "the authentication key file {shown} is not a regular file"
            ));
        }
        let me = effective_uid();
        if meta.uid() != me {
            return Err(format!(
                "the authentication key file {shown} belongs to uid {}, not to this user (uid {me}); a key must be the user's own",
                meta.uid()
            ));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "the authentication key file {shown} can be read or written by others (mode {:o}); run chmod 600 {shown}",
                meta.mode() & 0o777
            ));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read the authentication key file {shown}: {e}"))?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(format!(
                "the authentication key file {shown} is over {MAX_KEY_FILE} bytes"
            ));
        }
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        AuthKey::from_bytes(&bytes, &shown.to_string())
    }

    /// The key a transport uses: its `auth_key_file` parameter when set, else the file named
    /// by `VMI_AUTH_KEY_FILE`, else none (no authentication).
    pub fn resolve(param: &str) -> Result<Option<AuthKey>, String> {
        if !param.is_empty() {
            return AuthKey::from_file(Path::new(param)).map(Some);
        }
        match std::env::var_os(KEY_FILE_VAR) {
            Some(p) if !p.is_empty() => AuthKey::from_file(Path::new(&p)).map(Some),
            _ => Ok(None),
        }
    }

    fn mac(&self, role: Role, t: &Transcript<'_>) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes)
            .expect("HMAC takes keys of any length");
        m.update(match role {
            Role::Listener => b"vmi-auth-1 listener\0",
            Role::Connector => b"vmi-auth-1 connector",
        });
        m.update(t.connector_nonce);
        m.update(t.listener_nonce);
        for field in [t.from_key, t.to_key, t.signature] {
            m.update(&(field.len() as u32).to_le_bytes());
            m.update(field.as_bytes());
        }
        m
    }

    /// `role`'s proof over the transcript.
    pub fn prove(&self, role: Role, t: &Transcript<'_>) -> [u8; PROOF_LEN] {
        self.mac(role, t).finalize().into_bytes().into()
    }

    /// Checks `role`'s proof in constant time.
    pub fn verify(&self, role: Role, t: &Transcript<'_>, proof: &[u8]) -> bool {
        self.mac(role, t).verify_slice(proof).is_ok()
    }
}

/// The `auth_key_file` parameter, the same for every transport that authenticates.
pub const KEY_FILE_PARAM: crate::abi::VmiParamSpec = crate::param::param(
    c"auth_key_file",
    crate::abi::VMI_PARAM_STRING,
    c"",
    c"file with the pre-shared key peers must prove they hold (empty: VMI_AUTH_KEY_FILE, or no authentication)",
);

/// Challenge record magic (listener to connector).
pub const CHALLENGE_MAGIC: [u8; 4] = *b"VMIC";
/// Proof record magic (connector to listener).
pub const PROOF_MAGIC: [u8; 4] = *b"VMIP";
/// Challenge record length: 16-byte header, nonce, proof.
pub const CHALLENGE_LEN: usize = 16 + NONCE_LEN + PROOF_LEN;
/// Proof record length: 16-byte header, proof.
pub const PROOF_RECORD_LEN: usize = 16 + PROOF_LEN;

/// A transport's challenge record: `"VMIC" | version | 11 zero bytes | nonce | proof`.
pub fn challenge_record(version: u8, nonce: &[u8; NONCE_LEN], proof: &[u8; PROOF_LEN]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHALLENGE_LEN);
    v.extend_from_slice(&CHALLENGE_MAGIC);
    v.push(version);
    v.extend_from_slice(&[0; 11]);
    v.extend_from_slice(nonce);
    v.extend_from_slice(proof);
    v
}

/// A transport's proof record: `"VMIP" | version | 11 zero bytes | proof`.
pub fn proof_record(version: u8, proof: &[u8; PROOF_LEN]) -> Vec<u8> {
    let mut v = Vec::with_capacity(PROOF_RECORD_LEN);
    v.extend_from_slice(&PROOF_MAGIC);
    v.push(version);
    v.extend_from_slice(&[0; 11]);
    v.extend_from_slice(proof);
    v
}

/// The nonce and proof of a whole, well-formed challenge record of this `version` at the
/// start of `b`.
pub fn parse_challenge(b: &[u8], version: u8) -> Option<([u8; NONCE_LEN], [u8; PROOF_LEN])> {
    if b.len() < CHALLENGE_LEN || b[..4] != CHALLENGE_MAGIC || b[4] != version {
        return None;
    }
    let nonce = b[16..16 + NONCE_LEN].try_into().ok()?;
    let proof = b[16 + NONCE_LEN..CHALLENGE_LEN].try_into().ok()?;
    Some((nonce, proof))
}

/// The proof of a whole, well-formed proof record of this `version` at the start of `b`.
pub fn parse_proof(b: &[u8], version: u8) -> Option<[u8; PROOF_LEN]> {
    if b.len() < PROOF_RECORD_LEN || b[..4] != PROOF_MAGIC || b[4] != version {
        return None;
    }
    b[16..PROOF_RECORD_LEN].try_into().ok()
}

/// A fresh nonce from the operating system's random source.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    if let Err(e) = getrandom::fill(&mut n) {
        // Without randomness the handshake would be replayable: stop rather than go on.
        panic!("the operating system's random source failed ({e}); cannot authenticate");
    }
    n
}

#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(c: &'a [u8; 32], l: &'a [u8; 32]) -> Transcript<'a> {
        Transcript {
            connector_nonce: c,
            listener_nonce: l,
            from_key: "a",
            to_key: "b",
            signature: "send=;recv=",
        }
    }

    #[test]
    fn proofs_bind_the_key_the_role_and_the_transcript() {
        let k = AuthKey::from_bytes(b"0123456789abcdef0123", "test").unwrap();
        let other = AuthKey::from_bytes(b"0123456789abcdef0124", "test").unwrap();
        let (c, l) = (nonce(), nonce());
        assert_ne!(c, l, "fresh nonces");
        let p = k.prove(Role::Listener, &t(&c, &l));
        assert!(k.verify(Role::Listener, &t(&c, &l), &p));
        assert!(!k.verify(Role::Connector, &t(&c, &l), &p), "no reflection");
        assert!(!other.verify(Role::Listener, &t(&c, &l), &p), "another key");
        assert!(!k.verify(Role::Listener, &t(&l, &c), &p), "other nonces");
        let mut moved = t(&c, &l);
        moved.from_key = "ab";
        moved.to_key = "";
        assert!(
            !k.verify(Role::Listener, &moved, &p),
            "fields are length-prefixed"
        );
        assert!(!k.verify(Role::Listener, &t(&c, &l), &p[..31]));
        assert!(
            AuthKey::from_bytes(b"short", "x")
                .unwrap_err()
                .contains("at least 16")
        );
    }

    #[test]
    fn key_files_must_be_private_and_the_users_own() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vmi-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("key");
        std::fs::write(&f, b"a very secret key of some length\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AuthKey::from_file(&f).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let k = AuthKey::from_file(&f).unwrap();
        assert_eq!(
            k.bytes, b"a very secret key of some length",
            "the newline is dropped"
        );
        assert!(
            AuthKey::from_file(&dir)
                .unwrap_err()
                .contains("not a regular file")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
