//! The console's page frame, navigation, small formatting helpers and its stylesheet.

use axum::http::header;
use axum::response::{Html, IntoResponse};
use maud::{html, Markup, DOCTYPE};

/// The navigation: path, label.
const NAV: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/transactions", "In-doubt transactions"),
    ("/groups", "Consumer groups"),
    ("/messages", "Messages"),
    ("/dead-letters", "Dead letters"),
    ("/audit", "Audit log"),
];

/// A whole page: `active` is the navigation entry to highlight (its path).
pub fn page(title: &str, active: &str, content: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · txmq console" }
                    link rel="stylesheet" href="/style.css";
                }
                body {
                    nav {
                        span.brand { "txmq" }
                        @for (path, label) in NAV {
                            a href=(path) class=[(path == active).then_some("active")] { (label) }
                        }
                    }
                    main {
                        h1 { (title) }
                        (content)
                    }
                }
            }
        }
        .into_string(),
    )
}

pub use crate::output::now_ms;

/// A time as UTC text (`-` for none).
pub fn at(ms: i64) -> String {
    crate::output::time(ms)
}

/// How long ago, in its largest two units (`3m 12s`); `-` for none.
pub fn ago(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    short(now_ms() - ms)
}

/// A span of milliseconds in its largest two units.
pub fn short(ms: i64) -> String {
    let s = (ms.max(0) / 1000) as u64;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

/// A labelled figure for the summary cards.
pub fn card(label: &str, value: impl maud::Render, note: Option<&str>) -> Markup {
    html! {
        div.card {
            div.label { (label) }
            div.value { (value) }
            @if let Some(n) = note { div.note { (n) } }
        }
    }
}

/// The stylesheet (compiled in: the console needs no network and no build step).
pub async fn stylesheet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

const STYLE: &str = r#"
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; background: #f6f7f9; }
nav { display: flex; gap: 4px; align-items: center; background: #1f2a3a; padding: 0 16px; }
nav .brand { color: #fff; font-weight: 700; margin-right: 16px; }
nav a { color: #c9d3e0; text-decoration: none; padding: 12px 10px; }
nav a.active, nav a:hover { color: #fff; background: #2f3d52; }
main { padding: 16px 24px 48px; max-width: 1400px; }
h1 { font-size: 20px; margin: 8px 0 16px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #d9dee6; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e6e9ef; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 12.5px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 8px; }
.card { background: #fff; border: 1px solid #d9dee6; padding: 10px 14px; min-width: 170px; }
.card .label { color: #5b6675; font-size: 12px; }
.card .value { font-size: 20px; font-weight: 600; }
.card .note { color: #5b6675; font-size: 12px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; background: #e6e9ef; white-space: nowrap; }
.badge.bad { background: #fde2e1; color: #9b1c1c; }
.badge.warn { background: #fff1d6; color: #8a5300; }
.badge.good { background: #dcf5e3; color: #17612e; }
.error { background: #fde2e1; color: #9b1c1c; padding: 10px 14px; border: 1px solid #f3b4b1; }
.notice { background: #e7f0fd; padding: 10px 14px; border: 1px solid #b9d0f3; }
form.inline { display: inline; }
form.filters { display: flex; gap: 10px; align-items: end; flex-wrap: wrap; margin-bottom: 12px; }
form.filters label, form.action label { display: flex; flex-direction: column; font-size: 12px; color: #5b6675; }
form.action { background: #fff; border: 1px solid #d9dee6; padding: 12px 14px; margin: 12px 0; max-width: 720px; }
form.action textarea { width: 100%; min-height: 56px; font: inherit; }
input, select, textarea { font: inherit; padding: 4px 6px; }
button { font: inherit; padding: 5px 14px; cursor: pointer; border: 1px solid #8592a6; background: #fff; }
button.commit { background: #17612e; color: #fff; border-color: #17612e; }
button.rollback { background: #9b1c1c; color: #fff; border-color: #9b1c1c; }
.muted { color: #5b6675; }
dl.fields { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; background: #fff; border: 1px solid #d9dee6; padding: 10px 14px; }
dl.fields dt { color: #5b6675; }
dl.fields dd { margin: 0; }
"#;
