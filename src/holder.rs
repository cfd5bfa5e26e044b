//! Who holds a local port: the pid and command of the listening process, where the OS tells.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// A process listening on a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.command)
    }
}

/// The process listening on `port` (any local address), if it can be found.
pub fn find(port: u16, _bind: IpAddr) -> Option<Holder> {
    imp::find(port)
}

#[cfg(target_os = "linux")]
mod imp {
    use super::Holder;
    use std::collections::HashSet;
    use std::fs;

    /// `/proc/net/tcp{,6}` give the listening socket's inode; `/proc/*/fd` tell whose it is.
    pub fn find(port: u16) -> Option<Holder> {
        let inodes = listening_inodes(port);
        if inodes.is_empty() {
            return None;
        }
        for entry in fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(target) = fs::read_link(fd.path()) else { continue };
                let target = target.to_string_lossy();
                let inode = target.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'));
                if inode
                    .and_then(|i| i.parse::<u64>().ok())
                    .is_some_and(|i| inodes.contains(&i))
                {
                    return Some(Holder {
                        pid,
                        command: command(pid),
                    });
                }
            }
        }
        None
    }

    fn listening_inodes(port: u16) -> HashSet<u64> {
        const LISTEN: &str = "0A";
        let mut inodes = HashSet::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = fs::read_to_string(table) else { continue };
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 10 || fields[3] != LISTEN {
                    continue;
                }
                let local_port = fields[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                if local_port == Some(port)
                    && let Ok(inode) = fields[9].parse::<u64>()
                {
                    inodes.insert(inode);
                }
            }
        }
        inodes
    }

    fn command(pid: u32) -> String {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        if words.is_empty() {
            return fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string();
        }
        // One line: an argument may hold newlines (a script passed with -c).
        let line: String = words
            .join(" ")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        shorten(&line)
    }

    fn shorten(command: &str) -> String {
        const MAX: usize = 120;
        match command.char_indices().nth(MAX) {
            Some((i, _)) => format!("{}…", &command[..i]),
            None => command.to_string(),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Holder;
    use std::process::Command;

    /// `lsof -nP -iTCP:PORT -sTCP:LISTEN -Fpc`, run directly (no shell); macOS ships it in /usr/sbin.
    pub fn find(port: u16) -> Option<Holder> {
        let lsof = ["/usr/sbin/lsof", "/usr/bin/lsof", "lsof"]
            .into_iter()
            .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())?;
        let output = Command::new(lsof)
            .args(["-nP", &format!("-iTCP:{port}"), "-sTCP:LISTEN", "-Fpc"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut pid = None;
        for line in text.lines() {
            if let Some(p) = line.strip_prefix('p') {
                pid = p.parse().ok();
            } else if let (Some(c), Some(pid)) = (line.strip_prefix('c'), pid) {
                return Some(Holder {
                    pid,
                    command: c.to_string(),
                });
            }
        }
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_holding_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = find(port, "127.0.0.1".parse().unwrap()).expect("holder found");
        assert_eq!(holder.pid, std::process::id());
        assert!(!holder.command.is_empty());
        drop(listener);
        assert_eq!(find(port, "127.0.0.1".parse().unwrap()), None);
    }
}
