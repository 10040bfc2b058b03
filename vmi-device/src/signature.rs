//! The chains' filter signature, exchanged in every connect handshake so two processes with
//! different filters (one compresses, the other does not expect it) refuse each other with a
//! clear message instead of exchanging garbage.
#![forbid(unsafe_code)]

/// Filters of both chains, top (application) to bottom, each as `type@major`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    /// Send chain filters.
    pub send: Vec<String>,
    /// Receive chain filters, listed from the application down.
    pub recv: Vec<String>,
}

impl Signature {
    /// Wire text: `send=a@1,b@1;recv=b@1,a@1`.
    pub fn encode(&self) -> String {
        format!("send={};recv={}", self.send.join(","), self.recv.join(","))
    }

    /// Parses wire text; `None` when malformed.
    pub fn parse(text: &str) -> Option<Signature> {
        let (s, r) = text.split_once(';')?;
        let list = |part: &str, prefix: &str| -> Option<Vec<String>> {
            let body = part.strip_prefix(prefix)?;
            Some(if body.is_empty() {
                Vec::new()
            } else {
                body.split(',').map(str::to_string).collect()
            })
        };
        Some(Signature {
            send: list(s, "send=")?,
            recv: list(r, "recv=")?,
        })
    }

    /// Checks that what each side sends, the other undoes: the peer's send filters equal this
    /// side's receive filters, and the other way round. The error names both sides.
    pub fn check_peer(
        &self,
        local_name: &str,
        peer: &Signature,
        peer_name: &str,
    ) -> Result<(), String> {
        if peer.send == self.recv && peer.recv == self.send {
            return Ok(());
        }
        let show = |v: &[String]| {
            if v.is_empty() {
                "no filters".to_string()
            } else {
                format!("[{}]", v.join(", "))
            }
        };
        Err(format!(
            "filter chains do not match: '{}' sends through {} and receives through {}, while '{}' sends through {} and receives through {}; use specfiles with the same filters on both sides (a filter on one side's send chain must be on the other side's receive chain)",
            local_name,
            show(&self.send),
            show(&self.recv),
            peer_name,
            show(&peer.send),
            show(&peer.recv)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_check() {
        let me = Signature {
            send: vec!["crc@0".into()],
            recv: vec!["crc@0".into()],
        };
        let text = me.encode();
        assert_eq!(text, "send=crc@0;recv=crc@0");
        assert_eq!(Signature::parse(&text), Some(me.clone()));
        assert!(me.check_peer("me", &me, "p").is_ok());
        let bare = Signature::default();
        assert_eq!(Signature::parse("send=;recv="), Some(bare.clone()));
        let err = me.check_peer("sendkey", &bare, "recvkey").unwrap_err();
        assert!(err.contains("'sendkey' sends through [crc@0]"), "{err}");
        assert!(err.contains("'recvkey' sends through no filters"), "{err}");
        assert_eq!(Signature::parse("garbage"), None);
    }
}
