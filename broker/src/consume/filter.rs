//! Subscription filters: tag expressions (`*` or empty matches everything, `a||b` matches
//! messages tagged `a` or `b`) and SQL92 expressions over properties ([`super::sql`]).

use super::sql::{Props, Sql};
use crate::error::{BrokerError, Result};
use crate::model::NewMessage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A parsed subscription filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    All,
    Tags(Vec<String>),
    Sql(Arc<Sql>),
}

/// Compiled SQL92 expressions by text: a subscription sends its expression with every receive,
/// and it is parsed once. Bounded: emptied when it holds this many expressions, or this many
/// bytes of them (a tree takes some ten times its text at most).
const SQL_CACHE: usize = 1024;
const SQL_CACHE_BYTES: usize = 1024 * 1024;

/// Longest tag expression accepted, in bytes.
pub const MAX_TAG_EXPRESSION: usize = 8 * 1024;

#[derive(Default)]
struct SqlCache {
    compiled: HashMap<String, Arc<Sql>>,
    bytes: usize,
}

fn sql_cache() -> &'static Mutex<SqlCache> {
    static CACHE: OnceLock<Mutex<SqlCache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

impl Filter {
    /// Parses a TAG expression.
    pub fn tags(expression: &str) -> Result<Self> {
        if expression.len() > MAX_TAG_EXPRESSION {
            return Err(BrokerError::IllegalFilter(format!(
                "the tag expression is {} bytes long; at most {MAX_TAG_EXPRESSION} are accepted",
                expression.len()
            )));
        }
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

    /// Parses a SQL92 expression (or takes it compiled from the cache).
    pub fn sql(expression: &str) -> Result<Self> {
        if let Some(sql) = crate::sync::lock(sql_cache()).compiled.get(expression) {
            return Ok(Filter::Sql(sql.clone()));
        }
        let sql = Arc::new(Sql::parse(expression).map_err(|e| {
            // The text is quoted whole only when short: it may be kilobytes long.
            let mut quoted: String = expression.chars().take(200).collect();
            if quoted.len() < expression.len() {
                quoted.push('…');
            }
            BrokerError::IllegalFilter(format!("SQL92 expression {quoted:?}: {e}"))
        })?);
        let mut cache = crate::sync::lock(sql_cache());
        if cache.compiled.len() >= SQL_CACHE || cache.bytes + expression.len() > SQL_CACHE_BYTES {
            *cache = SqlCache::default();
        }
        cache.bytes += expression.len();
        cache.compiled.insert(expression.to_string(), sql.clone());
        Ok(Filter::Sql(sql))
    }

    /// Whether a message passes the filter.
    pub fn matches(&self, m: &NewMessage) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(tags) => m.tag.as_deref().is_some_and(|t| tags.iter().any(|x| x == t)),
            Filter::Sql(sql) => sql.matches(&Props { tag: m.tag.as_deref(), user: &m.user_properties }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::sql::MAX_TEXT;

    fn tagged(tag: Option<&str>) -> NewMessage {
        let mut m = crate::model::tests::sample_message("t", "id");
        m.tag = tag.map(str::to_string);
        m
    }

    #[test]
    fn star_and_alternatives() {
        assert!(Filter::tags("*").unwrap().matches(&tagged(None)));
        assert!(Filter::tags("").unwrap().matches(&tagged(Some("x"))));
        let f = Filter::tags("a || b").unwrap();
        assert!(f.matches(&tagged(Some("a"))) && f.matches(&tagged(Some("b"))));
        assert!(!f.matches(&tagged(Some("c"))) && !f.matches(&tagged(None)));
        assert!(matches!(Filter::tags("a||"), Err(BrokerError::IllegalFilter(_))));
    }

    #[test]
    fn sql_filters_read_properties_and_the_tag_and_errors_name_the_position() {
        let mut m = tagged(Some("paid"));
        m.user_properties.insert("amount".into(), "120".into());
        assert!(Filter::sql("amount > 100 AND TAGS = 'paid'").unwrap().matches(&m));
        assert!(!Filter::sql("amount > 200").unwrap().matches(&m));
        let Err(BrokerError::IllegalFilter(why)) = Filter::sql("amount >") else { panic!() };
        assert!(why.contains("position 8"), "{why}");
    }

    #[test]
    fn long_expressions_are_refused_and_the_cache_stays_within_its_bytes() {
        let long_tags = vec!["a"; MAX_TAG_EXPRESSION].join("||");
        let Err(BrokerError::IllegalFilter(why)) = Filter::tags(&long_tags) else { panic!() };
        assert!(why.contains("bytes long"), "{why}");
        let long_sql = format!("a IN ({})", vec!["'x'"; MAX_TEXT].join(","));
        let Err(BrokerError::IllegalFilter(why)) = Filter::sql(&long_sql) else { panic!() };
        assert!(why.len() < 500, "the error quotes the whole text: {} bytes", why.len());
        // Distinct expressions of the longest size: the cache never holds more than its bytes.
        for i in 0..(2 * SQL_CACHE_BYTES / MAX_TEXT) {
            let text = format!("a IN ('{i}'{})", ",'x'".repeat(MAX_TEXT / 4 - 10));
            assert!(text.len() <= MAX_TEXT);
            Filter::sql(&text).unwrap();
            assert!(crate::sync::lock(sql_cache()).bytes <= SQL_CACHE_BYTES);
        }
    }
}
