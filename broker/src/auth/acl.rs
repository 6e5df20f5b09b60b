//! Access control lists: who may do what to which topic or group. Pure: no store, no clock.
//!
//! The model is RocketMQ's ACL 2.0, reduced to what the broker checks. A *policy entry* names a
//! resource pattern (`Topic:orders`, `Topic:order-*`, `Group:*`, `Cluster:*`, `*`), a set of
//! actions (`Pub`, `Sub`, `Admin`; `All` is the three), a decision (allow or deny) and,
//! optionally, the source networks it applies to. For one request the entries that match its
//! resource, action and source are ranked by how specific their pattern is (a literal name,
//! then longer prefixes, then a kind wildcard, then `*`); the most specific decides, deny
//! winning a tie. No matching entry denies.

use std::fmt;
use std::net::IpAddr;

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send to a topic, end a transaction on it.
    Pub,
    /// Receive from a topic, ack, change invisibility, dead-letter; as a group.
    Sub,
    /// The admin API.
    Admin,
}

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Pub => 1,
            Action::Sub => 2,
            Action::Admin => 4,
        }
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Actions(pub u8);

impl Actions {
    pub const ALL: Actions = Actions(7);

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    /// Parses `Pub,Sub`, `All`, and the reference broker's names (`Create`, `Update`,
    /// `Delete`, `Get`, `List` are admin actions here).
    pub fn parse(s: &str) -> Result<Actions, String> {
        let mut bits = 0;
        for word in s.split([',', '|', ' ']).filter(|w| !w.is_empty()) {
            bits |= match word.to_ascii_lowercase().as_str() {
                "pub" => Action::Pub.bit(),
                "sub" => Action::Sub.bit(),
                "admin" | "create" | "update" | "delete" | "get" | "list" => Action::Admin.bit(),
                "all" => Actions::ALL.0,
                _ => return Err(format!("unknown action {word:?}; use Pub, Sub, Admin or All")),
            };
        }
        if bits == 0 {
            return Err("no action given".into());
        }
        Ok(Actions(bits))
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Actions::ALL {
            return f.write_str("All");
        }
        let names: Vec<&str> = [(Action::Pub, "Pub"), (Action::Sub, "Sub"), (Action::Admin, "Admin")]
            .into_iter()
            .filter(|(a, _)| self.contains(*a))
            .map(|(_, n)| n)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// The kind of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Topic,
    Group,
    /// The broker (or cluster) as a whole: the admin API.
    Cluster,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Topic => "Topic",
            Kind::Group => "Group",
            Kind::Cluster => "Cluster",
        }
    }
}

/// A resource a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource<'a> {
    pub kind: Kind,
    pub name: &'a str,
}

impl<'a> Resource<'a> {
    pub fn topic(name: &'a str) -> Self {
        Resource { kind: Kind::Topic, name }
    }

    pub fn group(name: &'a str) -> Self {
        Resource { kind: Kind::Group, name }
    }

    pub fn cluster() -> Self {
        Resource { kind: Kind::Cluster, name: "" }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.name)
    }
}

/// Which resources an entry covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: everything.
    Any,
    /// `Kind:name`, or `Kind:prefix*` (`Kind:*` is every resource of the kind).
    Named { kind: Kind, name: String, prefix: bool },
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        let (kind, name) =
            s.split_once(':').ok_or_else(|| format!("{s:?} is not Topic:NAME, Group:NAME, Cluster:* or *"))?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "topic" => Kind::Topic,
            "group" => Kind::Group,
            "cluster" => Kind::Cluster,
            _ => return Err(format!("unknown resource kind {kind:?}; use Topic, Group or Cluster")),
        };
        let (name, prefix) = match name.strip_suffix('*') {
            Some(p) => (p, true),
            None => (name, false),
        };
        if name.contains('*') {
            return Err(format!("{s:?}: '*' may only end a name"));
        }
        if kind == Kind::Cluster && !(prefix && name.is_empty()) {
            return Err("the cluster resource is written Cluster:*".into());
        }
        if !prefix && name.is_empty() {
            return Err(format!("{s:?} names no resource"));
        }
        Ok(Pattern::Named { kind, name: name.to_string(), prefix })
    }

    /// How specific a match is: higher wins. `None` when it does not match.
    fn rank(&self, r: Resource<'_>) -> Option<usize> {
        match self {
            Pattern::Any => Some(0),
            Pattern::Named { kind, name, prefix } if *kind == r.kind => {
                if *prefix {
                    r.name.starts_with(name.as_str()).then_some(1 + name.len())
                } else {
                    (r.name == name).then_some(usize::MAX)
                }
            }
            Pattern::Named { .. } => None,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Named { kind, name, prefix } => {
                write!(f, "{}:{name}{}", kind.name(), if *prefix { "*" } else { "" })
            }
        }
    }
}

/// A source network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `::1/128`, or one address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| format!("bad prefix length in {s:?}"))?)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(format!("prefix length {len} is longer than {max} in {s:?}"));
        }
        Ok(Cidr { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(u32::from(n) as u128, u32::from(a) as u128, 32, self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(u128::from(n), u128::from(a), 128, self.len),
            _ => false,
        }
    }
}

fn prefix_eq(net: u128, addr: u128, bits: u8, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let shift = bits - len;
    (net >> shift) == (addr >> shift)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

/// One entry of a user's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub resource: Pattern,
    pub actions: Actions,
    pub decision: Decision,
    /// Empty: from anywhere.
    pub sources: Vec<Cidr>,
}

impl Entry {
    fn applies(&self, r: Resource<'_>, a: Action, from: Option<IpAddr>) -> Option<usize> {
        if !self.actions.contains(a) {
            return None;
        }
        if !self.sources.is_empty() && !from.is_some_and(|ip| self.sources.iter().any(|c| c.contains(ip))) {
            return None;
        }
        self.resource.rank(r)
    }
}

/// The decision of `entries` for action `a` on `r` from `from`: the most specific matching
/// entry's, deny on a tie, deny when none matches.
pub fn decide(entries: &[Entry], r: Resource<'_>, a: Action, from: Option<IpAddr>) -> Decision {
    let mut best: Option<(usize, Decision)> = None;
    for e in entries {
        let Some(rank) = e.applies(r, a, from) else { continue };
        best = match best {
            Some((b, d)) if b > rank || (b == rank && d == Decision::Deny) => Some((b, d)),
            _ => Some((rank, e.decision)),
        };
    }
    best.map_or(Decision::Deny, |(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(resource: &str, actions: &str, decision: Decision, sources: &[&str]) -> Entry {
        Entry {
            resource: Pattern::parse(resource).unwrap(),
            actions: Actions::parse(actions).unwrap(),
            decision,
            sources: sources.iter().map(|s| Cidr::parse(s).unwrap()).collect(),
        }
    }

    #[test]
    fn no_match_denies_and_the_most_specific_entry_decides() {
        let local: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let entries = vec![
            entry("Topic:*", "Pub", Decision::Allow, &[]),
            entry("Topic:pay*", "Pub", Decision::Deny, &[]),
            entry("Topic:payments-public", "Pub", Decision::Allow, &[]),
        ];
        assert_eq!(decide(&entries, Resource::topic("orders"), Action::Pub, local), Decision::Allow);
        assert_eq!(decide(&entries, Resource::topic("payments"), Action::Pub, local), Decision::Deny);
        assert_eq!(decide(&entries, Resource::topic("payments-public"), Action::Pub, local), Decision::Allow);
        assert_eq!(decide(&entries, Resource::topic("orders"), Action::Sub, local), Decision::Deny);
        assert_eq!(decide(&entries, Resource::group("orders"), Action::Pub, local), Decision::Deny);
        assert_eq!(decide(&[], Resource::topic("orders"), Action::Pub, local), Decision::Deny);
    }

    #[test]
    fn deny_wins_a_tie_and_sources_restrict_an_entry() {
        let entries = vec![
            entry("Topic:orders", "Pub", Decision::Allow, &["10.0.0.0/8"]),
            entry("Topic:orders", "Pub", Decision::Deny, &["10.1.0.0/16"]),
        ];
        let from = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(decide(&entries, Resource::topic("orders"), Action::Pub, from("10.2.3.4")), Decision::Allow);
        assert_eq!(decide(&entries, Resource::topic("orders"), Action::Pub, from("10.1.3.4")), Decision::Deny);
        assert_eq!(decide(&entries, Resource::topic("orders"), Action::Pub, from("192.168.1.1")), Decision::Deny);
        assert_eq!(decide(&entries, Resource::topic("orders"), Action::Pub, from("::ffff:10.2.3.4")), Decision::Allow);
        assert_eq!(decide(&entries, Resource::topic("orders"), Action::Pub, None), Decision::Deny);
    }

    #[test]
    fn patterns_and_actions_parse_and_print_back() {
        for s in ["*", "Topic:orders", "Topic:ord*", "Group:*", "Cluster:*"] {
            assert_eq!(Pattern::parse(s).unwrap().to_string(), s);
        }
        for bad in ["orders", "Queue:x", "Topic:a*b", "Cluster:x", "Topic:"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Actions::parse("Pub,Sub").unwrap().to_string(), "Pub,Sub");
        assert_eq!(Actions::parse("all").unwrap(), Actions::ALL);
        assert_eq!(Actions::parse("Get").unwrap().to_string(), "Admin");
        assert!(Actions::parse("Fly").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
    }
}
