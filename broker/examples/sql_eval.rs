//! What a SQL92 filter costs per message: parses a 3-term expression once, then evaluates it
//! over messages whose properties match, miss, or lack the property, and prints nanoseconds
//! per evaluation (release build: `cargo run --release -p txmq-broker --example sql_eval`).

use std::collections::BTreeMap;
use std::time::Instant;
use txmq_broker::consume::sql::{Props, Sql};

fn main() -> Result<(), txmq_broker::consume::sql::SqlError> {
    let expression = "region IN ('eu', 'uk') AND amount > 100 AND TAGS = 'paid'";
    let started = Instant::now();
    let sql = Sql::parse(expression)?;
    let parse = started.elapsed();
    let message = |region: Option<&str>, amount: &str| {
        let mut p = BTreeMap::new();
        if let Some(r) = region {
            p.insert("region".to_string(), r.to_string());
        }
        p.insert("amount".to_string(), amount.to_string());
        for i in 0..5 {
            p.insert(format!("other-{i}"), "value".to_string());
        }
        p
    };
    let cases = [
        ("matching", message(Some("eu"), "150"), Some("paid")),
        ("failing the last term", message(Some("uk"), "150"), Some("created")),
        ("failing the first term", message(Some("us"), "150"), Some("paid")),
        ("without the property", message(None, "150"), Some("paid")),
    ];
    println!("expression: {expression}");
    println!("parse (once per subscription): {:.1} µs", parse.as_secs_f64() * 1e6);
    const N: u32 = 2_000_000;
    for (name, props, tag) in &cases {
        let props = Props { tag: *tag, user: props };
        let mut matched = 0u32;
        let started = Instant::now();
        for _ in 0..N {
            matched += u32::from(std::hint::black_box(&sql).matches(std::hint::black_box(&props)));
        }
        let ns = started.elapsed().as_secs_f64() * 1e9 / f64::from(N);
        println!("{name:>24}: {ns:6.1} ns per message (matched {matched} of {N})");
    }
    Ok(())
}
