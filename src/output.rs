//! Output: aligned tables for people, JSON (`--json`) for scripts.

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON, or `table` when not in JSON mode.
    pub fn emit<T: Serialize>(&self, value: &T, table: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            print!("{}", table());
        }
        Ok(())
    }
}

/// A Unix-epoch millisecond time as `YYYY-MM-DD HH:MM:SS.mmm` UTC.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string().replace('T', " ").trim_end_matches('Z').to_string()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// How long ago a Unix-epoch millisecond time was, like `3m 12s`.
pub fn age(ms: i64) -> String {
    let secs = ((now_ms() - ms).max(0) / 1000) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// Formats rows as a table with a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut s = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        s.push_str(&line(row.clone()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let t = table(&["NAME", "N"], &[vec!["orders".into(), "1".into()], vec!["a".into(), "22".into()]]);
        assert_eq!(t, "NAME    N\norders  1\na       22\n");
    }
}
