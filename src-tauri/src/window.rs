//! The settings window lives in its own process, so that closing it returns all of its memory.
//!
//! A webview costs far more than the rest of the app: WebKit's web and network processes, and
//! in-process GL, WebKit and JavaScriptCore pages that stay mapped after the window is gone (the
//! app measured 75 MiB before the window first opened and 223 MiB after it closed again). So the
//! app itself never creates a webview. "Settings…" starts this same executable with
//! [`WINDOW_FLAG`]; that process shows the page and hands each of the page's commands to the app
//! over a private socket pair (the app's end never leaves the app; the window gets its end as fd
//! [`WINDOW_FD`]), and the app pushes snapshots and engine events back. When the window closes,
//! its process exits; when the app exits, the socket closes and the window process follows.
//!
//! The protocol is JSON lines: [`Call`] from the window, [`Down`] from the app.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use porthole::lines::BoundedLines;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tauri::ipc::{InvokeBody, Request};
use tauri::{AppHandle, Emitter, Manager, State, WebviewUrl, WebviewWindowBuilder};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::commands::{self, CommandError};
use crate::lock;
use crate::notices::{Kind, Notice};
use crate::notifier::Notifier;

/// The hidden flag that makes the executable the settings window's process.
pub const WINDOW_FLAG: &str = "--settings-window";

/// The descriptor the window process finds its end of the socket pair on.
pub const WINDOW_FD: RawFd = 3;

/// The link's protocol; the window process refuses another (an app updated while running
/// would start a newer executable than itself on macOS).
pub const PROTOCOL: u32 = 1;

/// Messages queued for the other process at most: a window that stops reading (hung) costs
/// this much, not a snapshot a second for as long as it hangs.
const QUEUE: usize = 256;

/// Bound on one call from the page (a form's fields).
const MAX_CALL: usize = 1 << 20;
/// Bound on one message to the window (a snapshot, a catalog of a large cluster).
const MAX_DOWN: usize = 16 << 20;

/// The label of the settings window (its capability is bound to it).
pub const SETTINGS: &str = "settings";

/// A command from the page, passed on by the window process.
#[derive(Debug, Serialize, Deserialize)]
pub struct Call {
    pub id: u64,
    pub command: String,
    pub args: Value,
}

/// From the app to the window process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum Down {
    /// The answer to the [`Call`] with this id.
    Reply {
        id: u64,
        result: Result<Value, CommandError>,
    },
    /// An event for the page (`snapshot`, `engine-event`).
    Emit { event: String, payload: Value },
    /// "Settings…" again while the window is open: bring it to the front.
    Focus,
}

// ---- the app's side ----

/// The app's link to a running window process.
pub struct Link {
    down: mpsc::Sender<Down>,
}

/// The settings window as the app manages it: the link to its process while it runs.
pub struct Windows {
    link: Mutex<Option<Link>>,
    /// The log file a window that ended abnormally points to.
    log: std::path::PathBuf,
}

impl Windows {
    pub fn new(log: std::path::PathBuf) -> Windows {
        Windows {
            link: Mutex::new(None),
            log,
        }
    }
}

/// Opens the settings window, or brings it to the front if it is open.
pub fn open(app: &AppHandle) {
    let app = app.clone();
    // On the runtime: the child's reaper and its socket need it, and callers may be on the
    // main thread (the single-instance hand-over, the app's setup).
    tauri::async_runtime::spawn(async move {
        let windows = app.state::<Windows>();
        let mut link = lock(&windows.link);
        // A window that is closing has shut its end: the link is gone by then.
        if let Some(open) = link.as_ref() {
            match open.down.try_send(Down::Focus) {
                Ok(()) => return info!("settings window brought forward"),
                Err(TrySendError::Full(_)) => return warn!("the settings window does not answer"),
                Err(TrySendError::Closed(_)) => {}
            }
        }
        match start(&app) {
            Ok(started) => *link = Some(started),
            Err(e) => {
                error!(error = %e, "cannot open the settings window");
                app.state::<Notifier>()
                    .show(vec![failure("cannot open the settings window", e.to_string())]);
            }
        }
    });
}

/// Sends an event to the page, if the window is open (nothing is serialised otherwise).
pub fn emit(app: &AppHandle, event: &str, payload: &impl Serialize) {
    let Some(windows) = app.try_state::<Windows>() else {
        return;
    };
    let link = lock(&windows.link);
    let Some(open) = link.as_ref() else { return };
    match serde_json::to_value(payload) {
        Ok(payload) => {
            let emitted = open.down.try_send(Down::Emit {
                event: event.to_string(),
                payload,
            });
            if let Err(TrySendError::Full(_)) = emitted {
                debug!(event, "the settings window is not reading: event dropped");
            }
        }
        Err(e) => warn!(event, error = %e, "cannot encode an event for the settings window"),
    }
}

/// This very executable, even when a package upgrade has replaced the file meanwhile.
fn this_executable() -> io::Result<std::path::PathBuf> {
    #[cfg(target_os = "linux")]
    return Ok("/proc/self/exe".into());
    #[cfg(not(target_os = "linux"))]
    std::env::current_exe()
}

fn start(app: &AppHandle) -> io::Result<Link> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut command = tokio::process::Command::new(this_executable()?);
    // Named as the app was (the window's class and the process list show it), whatever path
    // started it.
    if let Some(name) = std::env::args_os().next() {
        command.arg0(name);
    }
    command.arg(WINDOW_FLAG).arg(PROTOCOL.to_string()).stdin(Stdio::null());
    let fd = theirs.as_raw_fd();
    // SAFETY: between fork and exec the closure makes only async-signal-safe calls (dup2, fcntl).
    unsafe {
        command.pre_exec(move || hand_over(fd));
    }
    let mut child = command.spawn()?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    let (read, write) = UnixStream::from_std(ours)?.into_split();
    let (down, queue) = mpsc::channel(QUEUE);
    info!(pid = child.id(), "settings window opened");
    tauri::async_runtime::spawn(write_lines(queue, write));
    let (serving, ours) = (app.clone(), down.clone());
    tauri::async_runtime::spawn(async move {
        let app = serving;
        serve(&app, read, &ours).await;
        // The window shut its end as it closed (or its process ended): forget it at once, so
        // that "Settings…" starts a new one instead of focusing one that is going away.
        let windows = app.state::<Windows>();
        let mut link = lock(&windows.link);
        if link.as_ref().is_some_and(|open| open.down.same_channel(&ours)) {
            *link = None;
        }
    });
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        match child.wait().await {
            Ok(status) if status.success() => info!("settings window closed"),
            // Closed by a crash, a kill or a refusal to start: say so, or "Settings…" would
            // seem to do nothing.
            Ok(status) => {
                error!(%status, "settings window ended abnormally");
                let body = format!("{status}; details in {}", app.state::<Windows>().log.display());
                app.state::<Notifier>()
                    .show(vec![failure("the settings window closed unexpectedly", body)]);
            }
            Err(e) => warn!(error = %e, "cannot wait for the settings window"),
        }
    });
    Ok(Link { down })
}

fn failure(summary: &str, body: String) -> Notice {
    Notice::new(Kind::App, summary, body)
}

/// In the child, before exec: its end of the pair becomes [`WINDOW_FD`], kept across exec.
fn hand_over(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain descriptor calls on descriptors this process owns.
    let done = unsafe {
        if fd == WINDOW_FD {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            // dup2's copy does not have close-on-exec.
            libc::dup2(fd, WINDOW_FD)
        }
    };
    if done == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Answers the window's calls until it hangs up: one at a time, in the order the page made
/// them, so that two quick edits land in that order (in the file and in the engine alike).
async fn serve(app: &AppHandle, read: OwnedReadHalf, down: &mpsc::Sender<Down>) {
    let mut lines = BoundedLines::new(read, MAX_CALL);
    loop {
        let call = match lines.next_line().await {
            Ok(Some(line)) => match serde_json::from_str::<Call>(&line) {
                Ok(call) => call,
                Err(e) => {
                    warn!(error = %e, "bad message from the settings window");
                    continue;
                }
            },
            Ok(None) => return,
            Err(e) => return debug!(error = %e, "settings window link closed"),
        };
        let result = match commands::Command::decode(&call.command, call.args) {
            Ok(command) => commands::call(app, command).await,
            Err(e) => Err(e),
        };
        // Waits while the window is not reading: that holds back its own next calls only.
        if down.send(Down::Reply { id: call.id, result }).await.is_err() {
            return;
        }
    }
}

async fn write_lines<T: Serialize>(mut queue: mpsc::Receiver<T>, mut write: OwnedWriteHalf) {
    while let Some(message) = queue.recv().await {
        let mut line = match serde_json::to_vec(&message) {
            Ok(line) => line,
            Err(e) => {
                warn!(error = %e, "cannot encode a message for the other process");
                continue;
            }
        };
        line.push(b'\n');
        if write.write_all(&line).await.is_err() {
            return;
        }
    }
}

// ---- the window process ----

/// The window process's side of the link: calls waiting for their reply.
struct Peer {
    up: mpsc::Sender<Call>,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<Value, CommandError>>>>,
}

impl Peer {
    async fn call(&self, command: &str, request: Request<'_>) -> Result<Value, CommandError> {
        let args = match request.body() {
            InvokeBody::Json(args) => args.clone(),
            InvokeBody::Raw(_) => return Err(CommandError::failed("binary arguments are not supported")),
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        lock(&self.waiting).insert(id, reply);
        let gone = || CommandError::failed("Porthole has quit");
        self.up
            .send(Call {
                id,
                command: command.to_string(),
                args,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Whether `fd` is an open socket (checked before anything takes ownership of it).
fn is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat only writes the struct it is given.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

/// Runs the settings window's process: one window, its commands passed to the app.
pub fn run(protocol: u32) -> anyhow::Result<()> {
    use anyhow::Context;
    if !is_socket(WINDOW_FD) {
        anyhow::bail!("{WINDOW_FLAG} is for porthole-app itself (descriptor {WINDOW_FD} is no socket)");
    }
    if protocol != PROTOCOL {
        anyhow::bail!(
            "porthole-app was updated while it ran (window protocol {protocol}, this one speaks {PROTOCOL}): quit it and start it again"
        );
    }
    // SAFETY: WINDOW_FD is a socket the app handed over, and nothing else in this process owns it.
    let link = unsafe { std::os::unix::net::UnixStream::from_raw_fd(WINDOW_FD) };
    // WebKit's own processes must not inherit it: the app sees the window gone when it closes.
    // SAFETY: a descriptor this process owns.
    unsafe { libc::fcntl(WINDOW_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    link.set_nonblocking(true)?;
    // A handle of our own on the link's socket for the window's last moment: the link itself
    // may have closed by then (a write error), and its descriptor number been reused.
    let closer = link.try_clone().context("cannot hold the link")?;
    crate::logs::init(false)?;
    let (up, queue) = mpsc::channel(QUEUE);
    let app = tauri::Builder::default()
        .manage(Peer {
            up,
            next: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        })
        .invoke_handler(handler())
        .on_window_event(move |_, event| {
            if let tauri::WindowEvent::Destroyed = event {
                // Tell the app now, not when WebKit has finished tearing down.
                let _ = closer.shutdown(std::net::Shutdown::Both);
            }
        })
        .setup(move |app| {
            #[cfg(target_os = "macos")]
            app.set_activation_policy(tauri::ActivationPolicy::Accessory);
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(async move {
                match UnixStream::from_std(link) {
                    Ok(link) => {
                        let (read, write) = link.into_split();
                        tauri::async_runtime::spawn(write_lines(queue, write));
                        follow(handle.clone(), read).await;
                    }
                    Err(e) => error!(error = %e, "no link to the app"),
                }
                // The app quit (or never answered): so does its window.
                handle.exit(0);
            });
            let window = WebviewWindowBuilder::new(app, SETTINGS, WebviewUrl::App("index.html".into()))
                .title("Porthole settings")
                .inner_size(820.0, 640.0)
                .min_inner_size(560.0, 420.0)
                .build()?;
            // Started from the tray (or a second launch): come to the front over whatever app
            // is active.
            let _ = window.set_focus();
            Ok(())
        })
        .build(crate::context())
        .context("cannot start the settings window")?;
    // Closing the window ends the process (the default): its memory goes back to the system.
    app.run(|_, _| {});
    Ok(())
}

/// Replies and events from the app, until it hangs up.
async fn follow(app: AppHandle, read: OwnedReadHalf) {
    let mut lines = BoundedLines::new(read, MAX_DOWN);
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<Down>(&line) {
            Ok(Down::Reply { id, result }) => {
                let peer = app.state::<Peer>();
                if let Some(reply) = lock(&peer.waiting).remove(&id) {
                    let _ = reply.send(result);
                }
            }
            Ok(Down::Emit { event, payload }) => {
                let _ = app.emit_to(SETTINGS, &event, payload);
            }
            Ok(Down::Focus) => {
                if let Some(window) = app.get_webview_window(SETTINGS) {
                    let _ = window.unminimize();
                    let _ = window.show();
                    let _ = window.set_focus();
                }
            }
            Err(e) => warn!(error = %e, "bad message from the app"),
        }
    }
}

// The page's commands (`commands.list`), each passed to the app as it is (`commands::call`
// decodes and runs it there), and the handler of them all: `build.rs` generates the list below.
macro_rules! proxies {
    ($($name:ident),* $(,)?) => {
        $(
            #[tauri::command]
            async fn $name(peer: State<'_, Peer>, request: Request<'_>) -> Result<Value, CommandError> {
                peer.call(stringify!($name), request).await
            }
        )*

        fn handler() -> impl Fn(tauri::ipc::Invoke) -> bool + Send + Sync + 'static {
            tauri::generate_handler![$($name),*]
        }
    };
}

include!(concat!(env!("OUT_DIR"), "/proxies.rs"));
