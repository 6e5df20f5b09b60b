//! Tag filters: `*` (or empty) matches everything, `a||b` matches messages tagged `a` or `b`.

use crate::error::{BrokerError, Result};

/// A parsed subscription filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    Tags(Vec<String>),
}

impl Filter {
    /// Parses a TAG expression.
    pub fn tags(expression: &str) -> Result<Self> {
        let e = expression.trim();
        if e.is_empty() || e == "*" {
            return Ok(Filter::All);
        }
        let tags: Vec<String> = e.split("||").map(|t| t.trim().to_string()).collect();
        if tags.iter().any(|t| t.is_empty() || t.chars().any(char::is_control)) {
            return Err(BrokerError::IllegalFilter(format!("tag expression {expression:?} has an empty tag")));
        }
        if tags.iter().any(|t| t == "*") {
            return Ok(Filter::All);
        }
        Ok(Filter::Tags(tags))
    }

    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(tags) => tag.is_some_and(|t| tags.iter().any(|x| x == t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_alternatives() {
        assert!(Filter::tags("*").unwrap().matches(None));
        assert!(Filter::tags("").unwrap().matches(Some("x")));
        let f = Filter::tags("a || b").unwrap();
        assert!(f.matches(Some("a")) && f.matches(Some("b")));
        assert!(!f.matches(Some("c")) && !f.matches(None));
        assert!(matches!(Filter::tags("a||"), Err(BrokerError::IllegalFilter(_))));
    }
}
