//! The app's build script: the settings page's commands (`commands.list`) become permissions,
//! so only the capability in `capabilities/settings.json` (the settings window) may call them,
//! and proxies in the window's process (`$OUT_DIR/proxies.rs`, included by `window.rs`).

use std::collections::BTreeSet;

fn main() {
    println!("cargo:rerun-if-changed=commands.list");
    println!("cargo:rerun-if-changed=capabilities/settings.json");
    let list = std::fs::read_to_string("commands.list").expect("commands.list");
    // Tauri keeps the names for the rest of the build.
    let commands: &'static [&'static str] = Vec::leak(
        list.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| &*String::leak(l.to_string()))
            .collect(),
    );
    check_capability(commands);
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("proxies.rs"), format!("proxies![{}];\n", commands.join(", "))).expect("write proxies.rs");
    tauri_build::try_build(
        tauri_build::Attributes::new().app_manifest(tauri_build::AppManifest::new().commands(commands)),
    )
    .expect("tauri build script");
}

/// The settings window's capability allows exactly the listed commands: a command left out could
/// not be called, one left over would be a permission for nothing.
fn check_capability(commands: &[&str]) {
    let text = std::fs::read_to_string("capabilities/settings.json").expect("capabilities/settings.json");
    let allowed: BTreeSet<String> = text
        .split('"')
        .filter_map(|s| s.strip_prefix("allow-"))
        .map(str::to_string)
        .collect();
    let listed: BTreeSet<String> = commands.iter().map(|c| c.replace('_', "-")).collect();
    if allowed != listed {
        let missing: Vec<_> = listed.difference(&allowed).collect();
        let extra: Vec<_> = allowed.difference(&listed).collect();
        panic!(
            "capabilities/settings.json must allow exactly the commands of commands.list: \
             missing allow-{missing:?}, not in the list allow-{extra:?}"
        );
    }
}
