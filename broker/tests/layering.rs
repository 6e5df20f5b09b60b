//! The broker's modules form no import cycle: each top-level module (`broker`, `consume`,
//! `grpc`, …) may use those below it, never one that uses it back. Read from the sources, so a
//! new `use crate::…` that closes a cycle fails here with the cycle named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its files name as `crate::…`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
            let module = first.trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let uses = graph.entry(module.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let name: String =
                    text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `from`, if any (depth-first).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, from: &str) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|m| m == from) {
        let mut c = path[at..].to_vec();
        c.push(from.to_string());
        return Some(c);
    }
    path.push(from.to_string());
    for next in graph.get(from).into_iter().flatten() {
        if let Some(c) = cycle(graph, path, next) {
            return Some(c);
        }
    }
    path.pop();
    None
}

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let graph = imports();
    assert!(graph.contains_key("broker") && graph.contains_key("grpc"), "{graph:?}");
    for module in graph.keys() {
        if let Some(c) = cycle(&graph, &mut Vec::new(), module) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_parts_never_reach_into_the_broker_or_the_shell() {
    let graph = imports();
    for part in ["topics", "log", "consume", "txn", "auth", "store", "codec", "model", "tls", "cluster"] {
        for outer in ["broker", "grpc", "tasks", "server", "config"] {
            assert!(!graph[part].contains(outer), "{part} uses {outer}");
        }
    }
}
