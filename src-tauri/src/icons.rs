//! The tray images, one per aggregate state (drawn by `icons/draw.py`): coloured where menu
//! bars show colour, black template images on macOS, whose menu bar tints them to fit.

use serde::Serialize;

/// The state of everything, as one icon shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregate {
    /// Every enabled forward works.
    Healthy,
    /// Some forward is starting or degraded (serving, with a problem).
    Degraded,
    /// Some forward is down.
    Down,
    /// Every forward is turned off.
    Paused,
    /// There are no forwards yet: nothing to say.
    Idle,
    /// kubectl's kubeconfig points away from Porthole's cluster.
    ContextWrong,
}

#[cfg(not(target_os = "macos"))]
pub fn tray(aggregate: Aggregate) -> &'static [u8] {
    match aggregate {
        Aggregate::Healthy => include_bytes!("../../icons/tray/healthy.png"),
        Aggregate::Degraded => include_bytes!("../../icons/tray/degraded.png"),
        Aggregate::Down => include_bytes!("../../icons/tray/down.png"),
        Aggregate::Paused => include_bytes!("../../icons/tray/paused.png"),
        Aggregate::ContextWrong => include_bytes!("../../icons/tray/context.png"),
        Aggregate::Idle => include_bytes!("../../icons/tray/idle.png"),
    }
}

#[cfg(target_os = "macos")]
pub fn tray(aggregate: Aggregate) -> &'static [u8] {
    match aggregate {
        Aggregate::Healthy => include_bytes!("../../icons/tray-template/healthy.png"),
        Aggregate::Degraded => include_bytes!("../../icons/tray-template/degraded.png"),
        Aggregate::Down => include_bytes!("../../icons/tray-template/down.png"),
        Aggregate::Paused => include_bytes!("../../icons/tray-template/paused.png"),
        Aggregate::ContextWrong => include_bytes!("../../icons/tray-template/context.png"),
        Aggregate::Idle => include_bytes!("../../icons/tray-template/idle.png"),
    }
}
