//! The kubeconfig file of a fake cluster, written the way `kind` writes it, and its edits.

use std::io::Write;
use std::path::Path;

/// One cluster/user/context triple, all three sharing `name` as kind names them.
pub struct Entry {
    pub name: String,
    pub server: String,
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// Renders a kubeconfig with `entries` in kind's layout (keys in the order kind emits them).
pub fn render(entries: &[Entry], current_context: &str) -> String {
    let mut out = String::from("apiVersion: v1\nclusters:\n");
    for e in entries {
        out += &format!(
            "- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: {}\n",
            base64(e.ca_pem.as_bytes()),
            e.server,
            e.name
        );
    }
    out += "contexts:\n";
    for e in entries {
        out += &format!("- context:\n    cluster: {0}\n    user: {0}\n  name: {0}\n", e.name);
    }
    out += &format!("current-context: {current_context}\nkind: Config\npreferences: {{}}\nusers:\n");
    for e in entries {
        out += &format!(
            "- name: {}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            e.name,
            base64(e.client_cert_pem.as_bytes()),
            base64(e.client_key_pem.as_bytes())
        );
    }
    out
}

/// Replaces `path` atomically: readers see the old or the new file, never a partial one.
pub fn write_atomically(path: &Path, contents: &str) {
    let dir = path.parent().expect("kubeconfig path has a parent");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).expect("create temporary kubeconfig");
    tmp.write_all(contents.as_bytes()).expect("write temporary kubeconfig");
    tmp.persist(path).expect("rename kubeconfig into place");
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads() {
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foob"), "Zm9vYg==");
    }
}
