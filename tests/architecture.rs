//! The crate's layering, checked from its sources (`docs/ARCHITECTURE.md`).
//!
//! Every `crate::…` path in a file of `src/` is an edge from that file's module to the module
//! it names. The modules form layers: `format` (pure codecs) ← `storage` (the I/O seam) ←
//! `engine` (the live queue) ← `tools` (inspect, verify, repair); `error` under all of them,
//! `options` beside the engine's inputs, `typed` and `spool` on top of the engine, `testkit` on
//! top of everything. These tests fail when an edge points up a layer, when the module graph
//! has a cycle, or when the format layer does I/O.

#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path (`engine::reader`) for each source file below `src/` (the CLI is its own crate).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("list src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(&src).expect("below src");
            let mut module = relative
                .with_extension("")
                .to_string_lossy()
                .replace('/', "::");
            if let Some(parent) = module.strip_suffix("::mod") {
                module = parent.to_string();
            }
            if module == "lib" {
                module = String::new();
            }
            (module, path)
        })
        .collect()
}

/// The source without comments (doc examples name paths that are no imports) and without its
/// unit tests (which may use anything).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path written after `crate::`, with `use crate::{a, b::{c, d}}` groups expanded.
fn crate_paths(code: &str) -> Vec<String> {
    fn expand(prefix: &str, group: &str, out: &mut Vec<String>) {
        // Split the group at top-level commas.
        let (mut depth, mut start) = (0, 0);
        let mut items = Vec::new();
        for (at, ch) in group.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..at]);
                    start = at + 1;
                }
                _ => {}
            }
        }
        items.push(&group[start..]);
        for item in items
            .iter()
            .map(|item| item.trim())
            .filter(|i| !i.is_empty())
        {
            let joined = if prefix.is_empty() {
                item.to_string()
            } else {
                format!("{prefix}::{item}")
            };
            match joined.find('{') {
                Some(open) => {
                    let close = joined.rfind('}').unwrap_or(joined.len());
                    let inner_prefix = joined[..open].trim_end_matches("::").to_string();
                    expand(&inner_prefix, &joined[open + 1..close], out);
                }
                None => out.push(joined),
            }
        }
    }
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let end = rest
            .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == ':'))
            .unwrap_or(rest.len());
        let head = rest[..end].trim_end_matches(':');
        if rest[end..].starts_with('{')
            || rest[..end].ends_with("::") && rest[end..].starts_with('{')
        {
            let mut depth = 0;
            let mut close = end;
            for (offset, ch) in rest[end..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            close = end + offset;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            expand(head, &rest[end + 1..close], &mut paths);
        } else {
            paths.push(head.to_string());
        }
    }
    paths
}

/// The module a path leads into: its longest prefix that is a module (names re-exported at
/// the crate root are followed to the module they come from).
fn target(
    path: &str,
    modules: &BTreeMap<String, PathBuf>,
    root: &BTreeMap<String, String>,
) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    for len in (1..=parts.len()).rev() {
        let candidate = parts[..len].join("::");
        if modules.contains_key(&candidate) {
            return Some(candidate);
        }
    }
    root.get(parts[0]).cloned()
}

/// Names the crate root re-exports, with the module each comes from.
fn root_exports(modules: &BTreeMap<String, PathBuf>) -> BTreeMap<String, String> {
    let code = code_of(&modules[""]);
    let mut exports = BTreeMap::new();
    for line in code.split(';') {
        let Some(at) = line.find("pub use ") else {
            continue;
        };
        let used = line[at + "pub use ".len()..].replace(['\n', ' '], "");
        for path in crate_paths(&format!("crate::{used}")) {
            let name = path.rsplit("::").next().unwrap_or_default().to_string();
            if let Some(module) = target(&path, modules, &BTreeMap::new()) {
                exports.insert(name, module);
            }
        }
    }
    exports
}

/// Module → the modules it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let root = root_exports(&modules);
    let mut edges = BTreeMap::new();
    for (module, path) in &modules {
        if module.is_empty() {
            continue;
        }
        let targets: BTreeSet<String> = crate_paths(&code_of(path))
            .iter()
            .filter_map(|path| target(path, &modules, &root))
            .filter(|target| target != module && !target.is_empty())
            // A module may use its own children.
            .filter(|target| !target.starts_with(&format!("{module}::")))
            .collect();
        edges.insert(module.clone(), targets);
    }
    edges
}

/// The layer of a module: an import may only point to the same layer or a lower one.
fn layer(module: &str) -> u32 {
    match module.split("::").next().unwrap_or_default() {
        "error" | "stats" => 0,
        "format" => 1,
        "storage" => 2,
        "options" => 3,
        "engine" => 4,
        "typed" | "spool" => 5,
        "tools" => 6,
        // `Queue::open`: hands the engine the repair from the tools (`OnDamage::Quarantine`).
        "open" => 7,
        "testkit" => 8,
        other => panic!("module {other} has no layer: add it here and to docs/ARCHITECTURE.md"),
    }
}

#[test]
fn imports_never_point_up_a_layer() {
    let mut upward = Vec::new();
    for (module, targets) in graph() {
        for target in targets {
            if layer(&target) > layer(&module) {
                upward.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up a layer: {upward:#?}"
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // A module is on a cycle when it can reach itself (the graph has a few dozen nodes).
    let reaches_itself = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = graph[start].iter().map(String::as_str).collect();
        while let Some(module) = stack.pop() {
            if module == start {
                return true;
            }
            if seen.insert(module) {
                stack.extend(graph.get(module).into_iter().flatten().map(String::as_str));
            }
        }
        false
    };
    let on_cycles: Vec<String> = graph
        .iter()
        .filter(|(module, _)| reaches_itself(module))
        .map(|(module, targets)| format!("{module} -> {targets:?}"))
        .collect();
    assert!(
        on_cycles.is_empty(),
        "modules on an import cycle: {on_cycles:#?}"
    );
}

#[test]
fn the_format_layer_does_no_io() {
    for (module, path) in modules() {
        if !module.starts_with("format") {
            continue;
        }
        let code = code_of(&path);
        for forbidden in [
            "std::fs",
            "std::io",
            "std::net",
            "crate::storage",
            "Storage",
            "libc::",
        ] {
            assert!(
                !code.contains(forbidden),
                "{} uses {forbidden}: the format layer is pure codecs",
                path.display()
            );
        }
    }
}

/// The checks above are only as good as the parser: it must see the imports that exist.
#[test]
fn the_parser_sees_known_imports() {
    let graph = graph();
    let reader = &graph["engine::reader"];
    assert!(reader.contains("engine::log"), "{reader:?}");
    assert!(reader.contains("format::frame"), "{reader:?}");
    assert!(graph["tools::verify"].contains("format::layout"));
    assert_eq!(
        crate_paths("use crate::{a::{b, c::D}, e};"),
        ["a::b", "a::c::D", "e"]
    );
}
