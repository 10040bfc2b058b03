//! Named chains (`<chain name="…">` besides send and receive): a connection opened with
//! `connect_on` runs over one of them, so its messages pass that chain's filters (bulk data
//! through compression, control without). The connector names the chain, with the chain's
//! filter signature, at the front of its connect data (and marks its connect header's kind
//! `NAMED` in `cross`, so an application's own connect data is never mistaken for it); the acceptor puts the connection on
//! its chain of that name when the signatures match, and refuses it with the reason when it
//! has no such chain or another one. No I/O here: the header and the look-up.
//!
//! ```text
//! "VMIC" | name_len u8 | name | sig_len u16 | signature | the application's connect data
//! ```
#![forbid(unsafe_code)]

/// The header's first bytes.
const MAGIC: &[u8; 4] = b"VMIC";

/// A process's named chains: name and filter signature, chain 1 first; and the routes
/// that choose one for a peer.
#[derive(Clone, Debug, Default)]
pub(crate) struct Chains(Vec<(String, String)>, Vec<(u8, crate::spec::RouteSpec)>);

/// What the acceptor makes of a connect's chain header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Requested<'a> {
    /// No header: the send and receive chains.
    Default(&'a [u8]),
    /// This process's chain number, and the application's connect data.
    Chain(u8, &'a [u8]),
    /// The peer asked for a chain this process cannot run the connection on: why.
    Refused(String),
}

impl Chains {
    /// The named chains of a plan.
    pub fn new(list: Vec<(String, String)>) -> Chains {
        Chains(list, Vec::new())
    }

    /// With the specfile's routes (each naming one of the chains; assembly checked it).
    pub fn with_routes(mut self, routes: &[crate::spec::RouteSpec]) -> Chains {
        self.1 = routes
            .iter()
            .filter_map(|r| Some((self.find(&r.chain)?.0, r.clone())))
            .collect();
        self
    }

    /// The chain a connection to `key` at `host` takes: the first matching route's, or 0.
    pub fn route(&self, key: &str, host: &str) -> u8 {
        self.1
            .iter()
            .find(|(_, r)| r.matches(key, host))
            .map_or(0, |(n, _)| *n)
    }

    /// Adds chain `name` with `signature`; returns its number.
    pub fn push(&mut self, name: &str, signature: String) -> u8 {
        self.0.push((name.to_string(), signature));
        self.0.len() as u8
    }

    /// How many named chains there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The number of chain `name`, with its signature.
    pub fn find(&self, name: &str) -> Option<(u8, &str)> {
        self.0
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| (i as u8 + 1, self.0[i].1.as_str()))
    }

    /// The name of chain `n` ("" for chain 0).
    pub fn name(&self, n: u8) -> &str {
        match n {
            0 => "",
            n => self.0.get(n as usize - 1).map_or("", |c| c.0.as_str()),
        }
    }

    /// The names, for messages.
    pub fn list(&self) -> String {
        self.names()
    }

    fn names(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|(n, _)| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Connect data naming chain `n` before `data`.
    pub fn wrap(&self, n: u8, data: &[u8]) -> Vec<u8> {
        let (name, signature) = &self.0[n as usize - 1];
        let mut v = Vec::with_capacity(7 + name.len() + signature.len() + data.len());
        v.extend_from_slice(MAGIC);
        v.push(name.len() as u8);
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(signature.len() as u16).to_le_bytes());
        v.extend_from_slice(signature.as_bytes());
        v.extend_from_slice(data);
        v
    }

    /// Reads the chain a peer's connect data asks for (every byte checked); `named` is
    /// whether its connect header's kind says a chain header is there.
    pub fn split<'a>(&self, named: bool, data: &'a [u8]) -> Requested<'a> {
        if !named {
            return Requested::Default(data);
        }
        let bad = || Requested::Refused("a malformed chain header in the connect data".into());
        let Some(rest) = data.strip_prefix(MAGIC) else {
            return bad();
        };
        let Some((&len, rest)) = rest.split_first() else {
            return bad();
        };
        if rest.len() < len as usize + 2 {
            return bad();
        }
        let (name, rest) = rest.split_at(len as usize);
        let sig_len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let rest = &rest[2..];
        if rest.len() < sig_len {
            return bad();
        }
        let (signature, data) = rest.split_at(sig_len);
        let (Ok(name), Ok(signature)) = (std::str::from_utf8(name), std::str::from_utf8(signature))
        else {
            return bad();
        };
        match self.find(name) {
            None => Requested::Refused(format!(
                "the peer asked for chain '{name}', which this process does not have (its named chains: {})",
                self.names()
            )),
            Some((_, mine)) if mine != signature => Requested::Refused(format!(
                "chain '{name}' differs: the peer's filters are {signature}, this process's are {mine}"
            )),
            Some((n, _)) => Requested::Chain(n, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chains() -> Chains {
        Chains::new(vec![
            ("bulk".into(), "send=lz4@1;recv=lz4@1".into()),
            ("checked".into(), "send=crc@1;recv=crc@1".into()),
        ])
    }

    #[test]
    fn a_named_chain_travels_in_the_connect_data() {
        let c = chains();
        assert_eq!(c.find("checked").map(|f| f.0), Some(2));
        let wrapped = c.wrap(2, b"hello");
        assert_eq!(c.split(true, &wrapped), Requested::Chain(2, b"hello"));
        assert_eq!(c.split(false, b"plain"), Requested::Default(b"plain"));
        assert_eq!(c.name(1), "bulk");
    }

    #[test]
    fn a_chain_the_acceptor_lacks_or_runs_otherwise_is_refused_with_the_reason() {
        let other = Chains::new(vec![("checked".into(), "send=;recv=".into())]);
        let wrapped = chains().wrap(2, b"");
        let Requested::Refused(why) = other.split(true, &wrapped) else {
            panic!("accepted a different chain");
        };
        assert!(why.contains("differs") && why.contains("crc@1"), "{why}");
        let wrapped = chains().wrap(1, b"");
        let Requested::Refused(why) = other.split(true, &wrapped) else {
            panic!("accepted a missing chain");
        };
        assert!(why.contains("'bulk'") && why.contains("'checked'"), "{why}");
    }

    #[test]
    fn hostile_headers_are_refused_without_panic() {
        let c = chains();
        for cut in 0..20 {
            let w = c.wrap(1, b"x");
            let _ = c.split(true, &w[..cut.min(w.len())]);
        }
        assert!(matches!(c.split(true, b"VMIC\xff"), Requested::Refused(_)));
        assert!(matches!(c.split(true, b"no magic"), Requested::Refused(_)));
        assert!(matches!(
            c.split(true, b"VMIC\x02\xff\xfe\x00\x00"),
            Requested::Refused(_)
        ));
    }
}
