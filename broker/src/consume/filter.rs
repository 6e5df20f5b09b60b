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
/// and it is parsed once. Bounded: emptied when it holds this many.
const SQL_CACHE: usize = 1024;

fn sql_cache() -> &'static Mutex<HashMap<String, Arc<Sql>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Sql>>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
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

    /// Parses a SQL92 expression (or takes it compiled from the cache).
    pub fn sql(expression: &str) -> Result<Self> {
        if let Some(sql) = crate::sync::lock(sql_cache()).get(expression) {
            return Ok(Filter::Sql(sql.clone()));
        }
        let sql = Arc::new(
            Sql::parse(expression)
                .map_err(|e| BrokerError::IllegalFilter(format!("SQL92 expression {expression:?}: {e}")))?,
        );
        let mut cache = crate::sync::lock(sql_cache());
        if cache.len() >= SQL_CACHE {
            cache.clear();
        }
        cache.insert(expression.to_string(), sql.clone());
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
}
