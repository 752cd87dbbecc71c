//! Guest ids to host ids and back, per share (`uid-map=`, `gid-map=`), in
//! the model of virtiofsd's `--translate-uid`: an ordered list of rules,
//! the first rule whose side holds an id translates it, and an id no rule
//! holds passes unchanged.
//!
//! An unprivileged Ferry cannot act as other users, so a guest user's
//! create would fail; with its ids squashed to Ferry's own, it succeeds and
//! the new file belongs to Ferry's user on the host.

use std::fmt;

/// What one rule translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdRuleKind {
    /// Both ways: guest `base..base+count` ↔ host `other..other+count`.
    Map,
    /// Guest to host only, range to range.
    Guest,
    /// Host to guest only, range to range.
    Host,
    /// Guest `base..base+count` all to the one host id `other`.
    SquashGuest,
    /// Host `base..base+count` all to the one guest id `other`.
    SquashHost,
}

/// One rule. For `Map`, `Guest` and `SquashGuest`, `from` is a guest id;
/// for `Host` and `SquashHost` a host id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRule {
    pub kind: IdRuleKind,
    pub from: u32,
    pub to: u32,
    pub count: u32,
}

impl IdRule {
    /// `to`'s counterpart of `id` if `id` is in `from..from+count`.
    fn apply(base: u32, to: u32, count: u32, squash: bool, id: u32) -> Option<u32> {
        let offset = id.checked_sub(base).filter(|&o| o < count)?;
        Some(if squash { to } else { to.wrapping_add(offset) })
    }

    fn host_of(&self, guest: u32) -> Option<u32> {
        match self.kind {
            IdRuleKind::Map | IdRuleKind::Guest => {
                Self::apply(self.from, self.to, self.count, false, guest)
            }
            IdRuleKind::SquashGuest => Self::apply(self.from, self.to, self.count, true, guest),
            IdRuleKind::Host | IdRuleKind::SquashHost => None,
        }
    }

    fn guest_of(&self, host: u32) -> Option<u32> {
        match self.kind {
            // The reverse of a map: host `to..` back to guest `from..`.
            IdRuleKind::Map => Self::apply(self.to, self.from, self.count, false, host),
            IdRuleKind::Host => Self::apply(self.from, self.to, self.count, false, host),
            IdRuleKind::SquashHost => Self::apply(self.from, self.to, self.count, true, host),
            IdRuleKind::Guest | IdRuleKind::SquashGuest => None,
        }
    }
}

/// The rules for uids or for gids. Empty: identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    rules: Vec<IdRule>,
}

/// Why a `uid-map=`/`gid-map=` rule was refused; each names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdRuleError {
    #[error("'{text}': unknown rule '{kind}' (map, guest, host, squash-guest, squash-host)")]
    UnknownKind { text: String, kind: String },
    #[error("'{0}': expected [KIND:]FROM:TO:COUNT, e.g. map:0:1000:1")]
    Shape(String),
    #[error("'{text}': '{word}' is not an id (0 to 4294967295)")]
    NotAnId { text: String, word: String },
    #[error("'{0}': COUNT must be at least 1")]
    ZeroCount(String),
    #[error("'{0}': the range runs past id 4294967295")]
    PastLastId(String),
}

impl IdMap {
    pub fn new(rules: Vec<IdRule>) -> Self {
        IdMap { rules }
    }

    /// Guest root is `own` on the host and every other guest id is
    /// squashed to it; host `own` shows as guest root. The default of an
    /// unprivileged Ferry.
    pub fn root_is(own: u32) -> Self {
        IdMap::new(vec![
            IdRule {
                kind: IdRuleKind::Map,
                from: 0,
                to: own,
                count: 1,
            },
            IdRule {
                kind: IdRuleKind::SquashGuest,
                from: 1,
                to: own,
                count: u32::MAX,
            },
        ])
    }

    /// Every guest id is `own` on the host; host ids show unchanged.
    pub fn all_to(own: u32) -> Self {
        IdMap::new(vec![IdRule {
            kind: IdRuleKind::SquashGuest,
            from: 0,
            to: own,
            count: u32::MAX,
        }])
    }

    pub fn is_identity(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn to_host(&self, guest: u32) -> u32 {
        self.rules
            .iter()
            .find_map(|r| r.host_of(guest))
            .unwrap_or(guest)
    }

    pub fn to_guest(&self, host: u32) -> u32 {
        self.rules
            .iter()
            .find_map(|r| r.guest_of(host))
            .unwrap_or(host)
    }

    /// Parses one rule, `[map:|guest:|host:]FROM:TO:COUNT` or
    /// `squash-guest:|squash-host:FROM:TO:COUNT`, and appends it.
    pub fn push_rule(&mut self, text: &str) -> Result<(), IdRuleError> {
        let parts: Vec<&str> = text.split(':').collect();
        let (kind, numbers) = match parts.as_slice() {
            [a, b, c] => (IdRuleKind::Map, [*a, *b, *c]),
            [kind, a, b, c] => {
                let kind = match *kind {
                    "map" => IdRuleKind::Map,
                    "guest" => IdRuleKind::Guest,
                    "host" => IdRuleKind::Host,
                    "squash-guest" => IdRuleKind::SquashGuest,
                    "squash-host" => IdRuleKind::SquashHost,
                    other => {
                        return Err(IdRuleError::UnknownKind {
                            text: text.to_string(),
                            kind: other.to_string(),
                        })
                    }
                };
                (kind, [*a, *b, *c])
            }
            _ => return Err(IdRuleError::Shape(text.to_string())),
        };
        let mut n = [0u32; 3];
        for (slot, s) in n.iter_mut().zip(numbers) {
            *slot = s.parse().map_err(|_| IdRuleError::NotAnId {
                text: text.to_string(),
                word: s.to_string(),
            })?;
        }
        let [from, to, count] = n;
        if count == 0 {
            return Err(IdRuleError::ZeroCount(text.to_string()));
        }
        let squash = matches!(kind, IdRuleKind::SquashGuest | IdRuleKind::SquashHost);
        // Ranges must not wrap past the last id.
        if u64::from(from) + u64::from(count) > 1 << 32
            || (!squash && u64::from(to) + u64::from(count) > 1 << 32)
        {
            return Err(IdRuleError::PastLastId(text.to_string()));
        }
        self.rules.push(IdRule {
            kind,
            from,
            to,
            count,
        });
        Ok(())
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules.is_empty() {
            return write!(f, "identity");
        }
        for (i, r) in self.rules.iter().enumerate() {
            let kind = match r.kind {
                IdRuleKind::Map => "map",
                IdRuleKind::Guest => "guest",
                IdRuleKind::Host => "host",
                IdRuleKind::SquashGuest => "squash-guest",
                IdRuleKind::SquashHost => "squash-host",
            };
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{kind}:{}:{}:{}", r.from, r.to, r.count)?;
        }
        Ok(())
    }
}

/// A share's uid and gid maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMapping {
    pub uids: IdMap,
    pub gids: IdMap,
}

impl IdMapping {
    pub fn is_identity(&self) -> bool {
        self.uids.is_identity() && self.gids.is_identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[&str]) -> IdMap {
        let mut m = IdMap::default();
        for r in rules {
            m.push_rule(r).unwrap();
        }
        m
    }

    #[test]
    fn identity_without_rules() {
        let m = IdMap::default();
        assert!(m.is_identity());
        assert_eq!((m.to_host(1000), m.to_guest(0)), (1000, 0));
    }

    #[test]
    fn ranges_map_both_ways_and_the_rest_passes() {
        let m = map(&["0:1000:1", "map:1:100000:65536"]);
        assert_eq!(m.to_host(0), 1000);
        assert_eq!(m.to_host(1), 100000);
        assert_eq!(m.to_host(65536), 165535);
        assert_eq!(m.to_host(65537), 65537);
        assert_eq!(m.to_guest(1000), 0);
        assert_eq!(m.to_guest(100005), 6);
        assert_eq!(m.to_guest(7), 7);
    }

    #[test]
    fn squash_and_one_way_rules() {
        let m = map(&["squash-guest:0:1000:4294967295", "host:1000:1000:1"]);
        assert_eq!(
            (m.to_host(0), m.to_host(5), m.to_host(u32::MAX - 1)),
            (1000, 1000, 1000)
        );
        assert_eq!(m.to_guest(1000), 1000);
        let m = map(&["squash-host:0:65534:4294967295"]);
        assert_eq!(
            (m.to_guest(0), m.to_guest(1234), m.to_host(1234)),
            (65534, 65534, 1234)
        );
        // First rule wins.
        let m = map(&["map:0:1000:1", "squash-guest:0:2000:10"]);
        assert_eq!((m.to_host(0), m.to_host(1)), (1000, 2000));
    }

    #[test]
    fn unprivileged_defaults() {
        let m = IdMap::root_is(1000);
        assert_eq!(
            (m.to_host(0), m.to_host(33), m.to_host(u32::MAX)),
            (1000, 1000, 1000)
        );
        assert_eq!((m.to_guest(1000), m.to_guest(0), m.to_guest(5)), (0, 0, 5));
        let m = IdMap::all_to(1000);
        assert_eq!(
            (
                m.to_host(0),
                m.to_host(1000),
                m.to_guest(0),
                m.to_guest(1000)
            ),
            (1000, 1000, 0, 1000)
        );
    }

    #[test]
    fn bad_rules() {
        for (rule, want) in [
            ("1:2", "expected"),
            ("x:1:2:3", "unknown rule"),
            ("a:2:3", "not an id"),
            ("0:1000:0", "at least 1"),
            ("4294967295:0:2", "runs past"),
            ("map:0:4294967295:2", "runs past"),
            ("-1:0:1", "not an id"),
        ] {
            let err = IdMap::default().push_rule(rule).unwrap_err().to_string();
            assert!(err.contains(want), "{rule}: {err}");
        }
        assert!(IdMap::default()
            .push_rule("squash-guest:0:4294967295:4294967295")
            .is_ok());
    }

    #[test]
    fn shown_as_given() {
        assert_eq!(
            IdMap::root_is(7).to_string(),
            "map:0:7:1 squash-guest:1:7:4294967295"
        );
        assert_eq!(IdMap::default().to_string(), "identity");
    }
}
