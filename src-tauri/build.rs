fn main() {
    // Declaring the app's commands makes each one a permission (`allow-<name>`), so only the
    // capability in `capabilities/settings.json` (the settings window) may call them.
    let commands = &[
        "page_state",
        "catalog",
        "save_forward",
        "remove_forward",
        "set_context",
        "set_enabled",
        "fix_kubeconfig",
        "set_prefs",
        "set_autostart",
    ];
    tauri_build::try_build(
        tauri_build::Attributes::new().app_manifest(tauri_build::AppManifest::new().commands(commands)),
    )
    .expect("tauri build script");
}
