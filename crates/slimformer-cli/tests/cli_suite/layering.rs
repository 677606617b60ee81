//! The workspace's layering, checked from the sources: no module imports another
//! in a circle (within a crate or across crates), the kernels crate does not use
//! candle, and the server's dependency tree has no training, study or plotting
//! crate in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A module: its crate (as code names it, `slimformer_train`), its path in the
/// crate (`shrink::distill`, empty for the root), its source with comments,
/// strings and test-only items removed.
struct Module {
    krate: String,
    path: Vec<String>,
    source: String,
}

impl Module {
    fn name(&self) -> String {
        std::iter::once(self.krate.clone())
            .chain(self.path.iter().cloned())
            .collect::<Vec<_>>()
            .join("::")
    }
}

fn modules() -> Vec<Module> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let package = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .replace('-', "_");
        let krate = if dir.join("src/lib.rs").exists() {
            package
        } else {
            // A binary crate: its modules live under the binary's name.
            "main".to_string()
        };
        collect(&dir.join("src"), &dir.join("src"), &krate, &mut out);
    }
    out
}

fn collect(root: &Path, dir: &Path, krate: &str, out: &mut Vec<Module>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, krate, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        let source = code_only(&std::fs::read_to_string(&path).unwrap());
        out.push(Module {
            krate: krate.to_string(),
            path: parts,
            source,
        });
    }
}

/// The source without comments, string and char literals, and items under
/// `#[cfg(test)]` or `#[cfg(all(test, …))]` (tests may reach across modules).
fn code_only(src: &str) -> String {
    let bytes = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|&c| c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += body
                + rest[body..]
                    .find(&close)
                    .map_or(rest.len() - body, |e| e + close.len());
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            i += j + 1;
            out.push_str("\"\"");
        } else if rest.starts_with("'\\")
            || rest.len() > 2
                && rest.as_bytes()[0] == b'\''
                && rest[1..].chars().nth(1) == Some('\'')
        {
            // A char literal ('x', '\n'); lifetimes ('a) are left alone.
            let end = rest[1..].find('\'').map_or(1, |e| e + 2);
            i += end;
            out.push_str("' '");
        } else if rest.starts_with("#[cfg(test)]") || rest.starts_with("#[cfg(all(test") {
            i += skip_item(rest);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of an attribute and the item after it: up to its `;` or its
/// closing brace.
fn skip_item(s: &str) -> usize {
    let mut depth = 0usize;
    let mut seen_brace = false;
    for (i, c) in s.char_indices().skip(2) {
        match c {
            '{' => {
                depth += 1;
                seen_brace = true;
            }
            '}' => {
                depth -= 1;
                if depth == 0 && seen_brace {
                    return i + 1;
                }
            }
            ';' if !seen_brace => return i + 1,
            _ => {}
        }
    }
    s.len()
}

/// Every path a `use` statement names, braces expanded: `a::{b, c::d}` →
/// `a::b`, `a::c::d`.
fn use_paths(tree: &str) -> Vec<String> {
    // `a as b` keeps its spaces as `@`, every other space goes.
    let words: Vec<&str> = tree.split_whitespace().collect();
    let tree = words.join(" ").replace(" as ", "@as@");
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    expand("", &tree)
        .into_iter()
        .map(|p| p.replace("@as@", " as "))
        .collect()
}

fn expand(prefix: &str, tree: &str) -> Vec<String> {
    let join = |p: &str| {
        if prefix.is_empty() {
            p.to_string()
        } else {
            format!("{prefix}::{p}")
        }
    };
    match tree.find('{') {
        None => tree
            .split(',')
            .filter(|p| !p.is_empty())
            .map(join)
            .collect(),
        Some(open) => {
            let head = tree[..open].trim_end_matches("::");
            let inner = &tree[open + 1..tree.len() - 1];
            let mut parts = Vec::new();
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            parts.push(&inner[start..]);
            let prefix = join(head);
            parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .flat_map(|p| expand(&prefix, p))
                .collect()
        }
    }
}

struct Graph {
    /// Module name → its index.
    index: BTreeMap<String, usize>,
    modules: Vec<Module>,
    crates: BTreeSet<String>,
}

impl Graph {
    /// The module a path from `from` ends in: the longest prefix that names a
    /// module, then through a facade's `pub use child::Item` when the next segment
    /// is such an item.
    fn resolve(&self, from: &Module, path: &[&str]) -> Option<usize> {
        let mut at: Vec<String>;
        let mut krate = from.krate.clone();
        let mut rest = path;
        match path.first()? {
            &"crate" => {
                at = vec![];
                rest = &path[1..];
            }
            &"self" => {
                at = from.path.clone();
                rest = &path[1..];
            }
            &"super" => {
                at = from.path.clone();
                while rest.first() == Some(&"super") {
                    at.pop();
                    rest = &rest[1..];
                }
            }
            first if self.crates.contains(*first) => {
                krate = first.to_string();
                at = vec![];
                rest = &path[1..];
            }
            first => {
                // Relative to this module: a child of it, else not ours.
                let mut child = from.path.clone();
                child.push(first.to_string());
                self.index.get(&name_of(&krate, &child))?;
                at = from.path.clone();
            }
        }
        for seg in rest {
            let mut next = at.clone();
            next.push(seg.to_string());
            if self.index.contains_key(&name_of(&krate, &next)) {
                at = next;
                continue;
            }
            // A re-exported item: follow the facade into the child that defines it.
            let here = &self.modules[self.index[&name_of(&krate, &at)]];
            if let Some(child) = reexport_source(here, seg) {
                let mut next = at.clone();
                next.push(child);
                if self.index.contains_key(&name_of(&krate, &next)) {
                    at = next;
                }
            }
            break;
        }
        self.index.get(&name_of(&krate, &at)).copied()
    }
}

fn name_of(krate: &str, path: &[String]) -> String {
    std::iter::once(krate.to_string())
        .chain(path.iter().cloned())
        .collect::<Vec<_>>()
        .join("::")
}

/// The child module `item` is re-exported from in `module` (`pub use child::item`).
fn reexport_source(module: &Module, item: &str) -> Option<String> {
    statements(&module.source, "pub use ")
        .flat_map(|s| use_paths(&s))
        .find_map(|p| {
            let segs: Vec<&str> = p.split("::").collect();
            let last = segs.last()?.split(" as ").last()?;
            (segs.len() == 2 && (last == item || segs[1] == item)).then(|| segs[0].to_string())
        })
}

/// The bodies of statements that start with `keyword` (`use `), up to their `;`.
fn statements<'a>(source: &'a str, keyword: &'a str) -> impl Iterator<Item = String> + 'a {
    source.match_indices(keyword).filter_map(move |(i, _)| {
        let before = source[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let body = &source[i + keyword.len()..];
        Some(body[..body.find(';')?].to_string())
    })
}

/// Module edges: `use` statements (not re-exports), and paths in code that start
/// with `crate::`, `super::`, `self::` or a workspace crate's name.
fn edges(graph: &Graph) -> BTreeMap<usize, BTreeSet<usize>> {
    let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (i, m) in graph.modules.iter().enumerate() {
        let mut paths: Vec<String> = Vec::new();
        for s in statements(&m.source, "use ") {
            if s.trim_start().starts_with("pub ") {
                continue;
            }
            paths.extend(use_paths(&s));
        }
        // Re-exports are the facade, not a dependency of the module's own code.
        let reexports: BTreeSet<String> = statements(&m.source, "pub use ")
            .chain(statements(&m.source, "pub(crate) use "))
            .flat_map(|s| use_paths(&s))
            .collect();
        paths.retain(|p| !reexports.contains(p));
        let code = &m.source;
        for (start, _) in code.match_indices("::") {
            // The whole path this `::` belongs to, from its first segment.
            let begin = code[..start]
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(0, |b| b + 1);
            if begin != start - code[begin..start].len() {
                continue;
            }
            let end = code[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| start + e);
            let path = &code[begin..end];
            let first = path.split("::").next().unwrap_or_default();
            if first == "crate"
                || first == "super"
                || first == "self"
                || graph.crates.contains(first)
            {
                paths.push(path.trim_end_matches(':').to_string());
            }
        }
        for p in paths {
            let segs: Vec<&str> = p
                .split("::")
                .map(|s| s.split(" as ").next().unwrap_or(s))
                .filter(|s| !s.is_empty() && *s != "*")
                .collect();
            if let Some(j) = graph.resolve(m, &segs) {
                if j != i {
                    edges.entry(i).or_default().insert(j);
                }
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(n: usize, edges: &BTreeMap<usize, BTreeSet<usize>>) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a BTreeMap<usize, BTreeSet<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        found: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in s.edges.get(&v).into_iter().flatten() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.found
}

fn graph() -> Graph {
    let modules = modules();
    let index = modules
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name(), i))
        .collect();
    let crates = modules.iter().map(|m| m.krate.clone()).collect();
    Graph {
        index,
        modules,
        crates,
    }
}

#[test]
fn no_module_imports_in_a_circle() {
    let graph = graph();
    let edges = edges(&graph);
    // The check sees real edges: the layers use the kernels, the models the layers.
    let has_edge = |a: &str, b: &str| {
        let (a, b) = (graph.index[a], graph.index[b]);
        edges.get(&a).is_some_and(|e| e.contains(&b))
    };
    assert!(has_edge(
        "slimformer::layers::linear",
        "slimformer_kernels::gemm"
    ));
    assert!(has_edge("slimformer::models::bert", "slimformer::layers"));
    assert!(has_edge(
        "slimformer_server::routes",
        "slimformer_server::state"
    ));
    let found = cycles(graph.modules.len(), &edges);
    let described: Vec<String> = found
        .iter()
        .map(|c| {
            c.iter()
                .map(|&i| graph.modules[i].name())
                .collect::<Vec<_>>()
                .join(" ↔ ")
        })
        .collect();
    assert!(
        described.is_empty(),
        "modules that import each other in a circle:\n{}",
        described.join("\n")
    );
}

#[test]
fn the_code_checker_expands_use_trees_and_drops_tests() {
    assert_eq!(
        use_paths("crate::a::{b, c::{d, e as f}}"),
        ["crate::a::b", "crate::a::c::d", "crate::a::c::e as f"]
    );
    let code = code_only(
        "use a::b; // use c::d;\n#[cfg(test)]\nmod tests { use e::f; }\nlet s = \"x::y\";",
    );
    assert!(
        code.contains("a::b")
            && !code.contains("c::d")
            && !code.contains("e::f")
            && !code.contains("x::y")
    );
}

/// `cargo tree` of one package, normal dependencies only, one crate name a line.
fn dependency_tree(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(workspace())
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "-p",
            package,
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_server_links_no_training_study_or_plotting_code() {
    let deps = dependency_tree("slimformer-server");
    assert!(
        deps.contains("slimformer") && deps.contains("slimformer-registry"),
        "{deps:?}"
    );
    for banned in [
        "slimformer-train",
        "slimformer-study",
        "slimformer-retrain",
        "plotters",
        "indicatif",
    ] {
        assert!(
            !deps.contains(banned),
            "slimformer-server depends on {banned}"
        );
    }
}

#[test]
fn the_kernels_do_not_use_candle() {
    let deps = dependency_tree("slimformer-kernels");
    assert!(!deps.iter().any(|d| d.starts_with("candle")), "{deps:?}");
}
