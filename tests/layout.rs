//! The architecture the docs state: roles (`src/roles/<role>/`) stand on
//! the shared engines and message types, never on each other. Only the
//! composition root (`src/roles/node.rs`) names more than one role.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_role_imports_another_role() {
    let roles_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/roles");
    let roles: Vec<String> = std::fs::read_dir(&roles_dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            p.is_dir()
                .then(|| p.file_name().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    assert!(roles.len() >= 4, "roles found: {roles:?}");
    let mut bad = Vec::new();
    for role in &roles {
        let mut files = Vec::new();
        rust_files(&roles_dir.join(role), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                // The CLI is a client of the API: no role stands on it.
                if line.contains("crate::cli") {
                    bad.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
                for other in roles.iter().filter(|o| *o != role) {
                    if line.contains(&format!("roles::{other}"))
                        || line.contains(&format!("super::super::{other}"))
                    {
                        bad.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "a role imports another role (move what both need into src/engine/):\n{}",
        bad.join("\n")
    );
}
