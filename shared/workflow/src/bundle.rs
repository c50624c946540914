//! Workflows that call other workflows (`call: child.yml`).
//!
//! A run is submitted with every file it may call, so no runner ever reads
//! a file system: the root file, its name, and the called files by their
//! path relative to the root file's folder (the bundle). [`load`] gathers
//! a bundle from disk; [`check`] validates it as a whole: every file
//! parses, every call names a file in the bundle, no call chain comes back
//! to a file already on it, no chain is deeper than [`MAX_CALL_DEPTH`],
//! and a call passes only variables the called file declares.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{Workflow, WorkflowError, MAX_WORKFLOW_BYTES};

/// The deepest chain of calls: the root's children are at depth 1.
pub const MAX_CALL_DEPTH: usize = 4;
/// The most files a bundle holds, the root included.
pub const MAX_FILES: usize = 32;
/// The most bytes a bundle holds, all files together. Each child run
/// carries the bundle, so this leaves room under the broker's default
/// 1 MiB message for the child's own copy of its file.
pub const MAX_BUNDLE_BYTES: usize = 512 * 1024;

fn too_big(text: &str, includes: &BTreeMap<String, String>) -> Option<String> {
    let total: usize = text.len() + includes.values().map(String::len).sum::<usize>();
    (total > MAX_BUNDLE_BYTES).then(|| {
        format!(
            "the workflow and the files it calls are {total} bytes together; at most {MAX_BUNDLE_BYTES} are accepted"
        )
    })
}

/// Whether `file` may be a `call:` target: a relative `.yml`/`.yaml` path
/// with `/` between its parts, no control characters, at most 256 bytes.
pub fn check_target(file: &str) -> Result<(), String> {
    if file.is_empty() || file.len() > 256 || file.chars().any(char::is_control) {
        return Err(format!(
            "'{}' is not a file name (1 to 256 bytes, no control characters)",
            file.escape_default()
        ));
    }
    if file.starts_with('/') || file.contains('\\') {
        return Err(format!(
            "'{file}' must be relative to the calling file, with '/' between folders"
        ));
    }
    if !(file.ends_with(".yml") || file.ends_with(".yaml")) {
        return Err(format!("'{file}' is not a .yml or .yaml file"));
    }
    Ok(())
}

/// The bundle key of `target` called from the file keyed `from`: the path
/// relative to the root's folder, with `.` and `..` worked out. A path
/// that leaves the root's folder is refused.
pub fn resolve(from: &str, target: &str) -> Result<String, String> {
    check_target(target)?;
    let mut parts: Vec<&str> = from.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "'{target}' (called from {from}) leaves the root workflow's folder; called files live in it or below"
                    ));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// The `call:` targets of a file, read loosely (only to find the files to
/// load; [`check`] validates).
fn targets(text: &str) -> Vec<String> {
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return Vec::new();
    };
    doc.get("steps")
        .and_then(|s| s.as_sequence())
        .map(|steps| {
            steps
                .iter()
                .filter_map(|s| s.get("call").and_then(|c| c.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A workflow file and every file it calls, read from disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// The root file's text.
    pub text: String,
    /// The root file's name (its key in call chains).
    pub path: String,
    /// The called files, by path relative to the root's folder.
    pub includes: BTreeMap<String, String>,
}

/// Reads `root` and, transitively, the files its steps call. Bounded by
/// [`MAX_FILES`] and the size of each file; a chain that comes back is not
/// followed again ([`check`] then names it).
pub fn load(root: &Path) -> Result<Bundle, String> {
    let read = |p: &Path| -> Result<String, String> {
        let meta = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        if meta.len() > MAX_WORKFLOW_BYTES as u64 {
            return Err(format!(
                "{} is {} bytes; at most {MAX_WORKFLOW_BYTES} are accepted",
                p.display(),
                meta.len()
            ));
        }
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let text = read(root)?;
    let path = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "workflow.yml".into());
    let folder = root.parent().unwrap_or(Path::new("."));
    let mut includes = BTreeMap::new();
    let mut todo: Vec<(String, String)> = targets(&text)
        .into_iter()
        .map(|t| (path.clone(), t))
        .collect();
    while let Some((from, target)) = todo.pop() {
        let key = resolve(&from, &target).map_err(|e| format!("{from}: call: {e}"))?;
        if key == path || includes.contains_key(&key) {
            continue;
        }
        if includes.len() + 1 >= MAX_FILES {
            return Err(format!(
                "the workflow calls more than {} other files",
                MAX_FILES - 1
            ));
        }
        let child = read(&folder.join(&key)).map_err(|e| format!("{from}: call: {e}"))?;
        todo.extend(targets(&child).into_iter().map(|t| (key.clone(), t)));
        includes.insert(key, child);
        if let Some(e) = too_big(&text, &includes) {
            return Err(e);
        }
    }
    Ok(Bundle {
        text,
        path,
        includes,
    })
}

/// Validates a whole bundle: the root (with `vars`) and what it calls.
pub fn check(
    path: &str,
    text: &str,
    vars: &BTreeMap<String, String>,
    includes: &BTreeMap<String, String>,
) -> Result<(), WorkflowError> {
    if includes.is_empty() && targets(text).is_empty() {
        return Workflow::parse(text, vars).map(|_| ());
    }
    let mut problems = Vec::new();
    if includes.len() + 1 > MAX_FILES {
        problems.push(format!(
            "the bundle holds {} files; at most {MAX_FILES} are accepted",
            includes.len() + 1
        ));
        return Err(WorkflowError::Invalid(problems));
    }
    if let Some(e) = too_big(text, includes) {
        problems.push(e);
        return Err(WorkflowError::Invalid(problems));
    }
    if let Err(e) = check_root_name(path) {
        problems.push(e);
        return Err(WorkflowError::Invalid(problems));
    }
    let mut reached = std::collections::BTreeSet::new();
    // (file key, its text, the variables it is given, the chain to it)
    let mut todo = vec![(path.to_string(), text, vars.clone(), vec![path.to_string()])];
    let mut visits = 0usize;
    while let Some((key, body, given, chain)) = todo.pop() {
        visits += 1;
        // Every chain is at most MAX_CALL_DEPTH deep and a file has at most
        // MAX_STEPS calls, but a wide tree of calls is still bounded here.
        if visits > 1024 {
            problems.push("the calls form more than 1024 child runs per run".into());
            break;
        }
        let wf = match Workflow::parse(body, &given) {
            Ok(wf) => wf,
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                continue;
            }
        };
        for s in wf.steps.iter().filter(|s| s.is_call()) {
            let target = s.call.as_deref().unwrap_or_default();
            let at = format!("{key}: step '{}'", s.name);
            let child = match resolve(&key, target) {
                Ok(k) => k,
                Err(e) => {
                    problems.push(format!("{at}: call: {e}"));
                    continue;
                }
            };
            let mut next = chain.clone();
            next.push(child.clone());
            if chain.contains(&child) {
                problems.push(format!(
                    "{at}: the calls form a cycle: {}",
                    next.join(" -> ")
                ));
                continue;
            }
            if chain.len() > MAX_CALL_DEPTH {
                problems.push(format!(
                    "{at}: calls nest more than {MAX_CALL_DEPTH} deep: {}",
                    next.join(" -> ")
                ));
                continue;
            }
            let Some(child_text) = includes.get(&child) else {
                problems.push(format!(
                    "{at}: call: {child} is not among the submitted files (moira run submit reads them beside the workflow)"
                ));
                continue;
            };
            reached.insert(child.clone());
            // The child declares what it takes: a value for an unknown
            // variable is a typo, not a new variable. (The child itself is
            // validated when it is taken from `todo`.)
            if let Ok(declared) = serde_yaml::from_str::<Workflow>(child_text).map(|w| w.vars) {
                for k in s.args.keys() {
                    if !declared.contains_key(k) {
                        problems.push(format!(
                            "{at}: with: {child} has no variable '{k}' (declare it under vars:)"
                        ));
                    }
                }
            }
            let args = s.args.iter().map(|(k, v)| (k.clone(), v.text())).collect();
            todo.push((child, child_text.as_str(), args, next));
        }
    }
    for k in includes.keys() {
        if !reached.contains(k) {
            problems.push(format!("{k} is submitted but no step calls it"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.sort();
        problems.dedup();
        Err(WorkflowError::Invalid(problems))
    }
}

fn check_root_name(path: &str) -> Result<(), String> {
    if path.contains('/') {
        return Err(format!(
            "the root workflow's name '{path}' is a file name, without folders"
        ));
    }
    check_target(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn problems(root: &str, includes: &[(&str, &str)]) -> String {
        match check("root.yml", root, &BTreeMap::new(), &files(includes)) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn paths_resolve_against_the_calling_file_and_stay_in_the_root_folder() {
        assert_eq!(resolve("root.yml", "a.yml").as_deref(), Ok("a.yml"));
        assert_eq!(resolve("sub/b.yml", "c.yml").as_deref(), Ok("sub/c.yml"));
        assert_eq!(resolve("sub/b.yml", "../a.yml").as_deref(), Ok("a.yml"));
        assert_eq!(
            resolve("sub/b.yml", "./x/../d.yml").as_deref(),
            Ok("sub/d.yml")
        );
        assert!(resolve("root.yml", "../a.yml").is_err());
        assert!(resolve("root.yml", "/etc/a.yml").is_err());
        assert!(resolve("root.yml", "a.txt").is_err());
        assert!(resolve("root.yml", "a\u{1b}.yml").is_err());
    }

    #[test]
    fn a_cycle_names_its_chain_and_a_deep_chain_is_refused() {
        let p = problems(
            "name: r\nsteps:\n  - {name: x, call: a.yml}\n",
            &[("a.yml", "name: a\nsteps:\n  - {name: y, call: root.yml}\n")],
        );
        assert!(p.contains("a cycle: root.yml -> a.yml -> root.yml"), "{p}");
        let chain: Vec<(String, String)> = (1..=5)
            .map(|n| {
                let body = if n < 5 {
                    format!(
                        "name: c{n}\nsteps:\n  - {{name: s, call: c{}.yml}}\n",
                        n + 1
                    )
                } else {
                    "name: c5\nsteps:\n  - {name: s, run: 'true'}\n".into()
                };
                (format!("c{n}.yml"), body)
            })
            .collect();
        let list: Vec<(&str, &str)> = chain
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let p = problems("name: r\nsteps:\n  - {name: x, call: c1.yml}\n", &list);
        assert!(p.contains("nest more than 4 deep"), "{p}");
        // Four deep is fine.
        let p = problems("name: r\nsteps:\n  - {name: x, call: c2.yml}\n", &list[1..]);
        assert_eq!(p, "");
    }

    #[test]
    fn a_call_passes_only_declared_variables_and_every_file_must_be_called() {
        let child =
            "name: c\nvars: {env: dev}\nsteps:\n  - {name: s, run: 'echo ${{ vars.env }}'}\n";
        let p = problems(
            "name: r\nsteps:\n  - {name: x, call: c.yml, with: {env: prod}}\n",
            &[("c.yml", child)],
        );
        assert_eq!(p, "");
        let p = problems(
            "name: r\nsteps:\n  - {name: x, call: c.yml, with: {evn: prod}}\n",
            &[("c.yml", child)],
        );
        assert!(p.contains("c.yml has no variable 'evn'"), "{p}");
        let p = problems(
            "name: r\nsteps:\n  - {name: x, call: c.yml}\n",
            &[("c.yml", child), ("stray.yml", child)],
        );
        assert!(
            p.contains("stray.yml is submitted but no step calls it"),
            "{p}"
        );
        let p = problems("name: r\nsteps:\n  - {name: x, call: c.yml}\n", &[]);
        assert!(p.contains("c.yml is not among the submitted files"), "{p}");
        let big = format!("{child}# {}\n", "x".repeat(200 * 1024));
        let p = problems(
            "name: r\nsteps:\n  - {name: x, call: c.yml}\n  - {name: y, call: d.yml}\n  - {name: z, call: e.yml}\n",
            &[("c.yml", &big), ("d.yml", &big), ("e.yml", &big)],
        );
        assert!(p.contains("at most 524288 are accepted"), "{p}");
        // A gate's with: is still a gate's; a call's is variables.
        assert!(Workflow::parse(
            "name: r\nsteps:\n  - {name: x, call: c.yml, run: 'true'}\n",
            &BTreeMap::new()
        )
        .is_err());
    }
}
