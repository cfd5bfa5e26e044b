//! `porthole import`: the forwards of a script or a kftray export, shown as a table, then added
//! to the config file in one edit. Every line that gave no forward is named with its number.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use porthole::config::ConfigFile;
use porthole::config::edit::EditError;
use porthole::import::{self, Plan};

pub async fn run(
    config_arg: Option<&Path>,
    file: Option<&Path>,
    cluster: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let (source, text) = read(file)?;
    let (config_file, config) = ConfigFile::open(config_arg, porthole::kubeconfig::has_context);
    let config = config?;
    let into = match cluster {
        Some(name) => config.cluster(name).with_context(|| {
            let names: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
            format!(
                "--cluster {name}: the config has no such cluster (its clusters: {})",
                names.join(", ")
            )
        })?,
        None => config.kubectl_cluster(),
    };
    let plan = import::preview(&text, &config, into).await;
    let mut target = config_file
        .path()
        .map_or_else(|| "the config".to_string(), |p| p.display().to_string());
    if config.clusters.len() > 1 {
        target += &format!(", cluster {}", into.name);
    }
    print_plan(&source, &target, &plan);
    if plan.add.is_empty() {
        println!("nothing to add");
        return Ok(ExitCode::SUCCESS);
    }
    if dry_run {
        println!("(--dry-run: nothing written)");
        return Ok(ExitCode::SUCCESS);
    }
    let drafts = plan.add.iter().map(|a| a.draft.clone()).collect();
    let edit = import::edit(&config, into, drafts);
    let backups = porthole::write::Backups::private()?;
    let saved = config_file.save(&edit, &backups).map_err(|e| match e {
        EditError::Invalid { message, .. } => anyhow::anyhow!("{message}"),
        other => anyhow::anyhow!(other),
    })?;
    println!(
        "added {} forwards to {target} ({} in all); a running Porthole applies them now",
        plan.add.len(),
        saved.forwards.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The source's name and text: a file, or standard input for none or `-`.
fn read(file: Option<&Path>) -> anyhow::Result<(String, String)> {
    match file.filter(|f| *f != Path::new("-")) {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok((path.display().to_string(), text))
        }
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            Ok(("standard input".into(), text))
        }
    }
}

fn print_plan(source: &str, target: &str, plan: &Plan) {
    if !plan.add.is_empty() {
        println!("{source}: {} forwards to add to {target}:", plan.add.len());
        let rows: Vec<[String; 5]> = plan
            .add
            .iter()
            .map(|a| {
                let d = &a.draft;
                let port = if d.service_port.is_empty() {
                    String::new()
                } else {
                    format!(":{}", d.service_port)
                };
                let cluster = if d.cluster.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", d.cluster)
                };
                [
                    a.line.to_string(),
                    d.name.clone(),
                    format!(":{}", d.local_port),
                    format!("{cluster}{}/{}{port}", d.namespace, d.target_text()),
                    if d.bind.is_empty() {
                        "localhost".into()
                    } else {
                        format!("{} (reachable from other machines)", d.bind)
                    },
                ]
            })
            .collect();
        let header = ["LINE", "NAME", "LOCAL", "TO", "LISTENS ON"].map(String::from);
        print!("{}", porthole::status::columns(&header, &rows));
    }
    if !plan.clusters.is_empty() {
        println!(
            "new clusters, for the lines of their contexts (the kubeconfig has them): {}",
            plan.clusters.join(", ")
        );
    }
    let left_out: Vec<_> = plan.skipped.iter().filter(|s| !s.plumbing).collect();
    if !left_out.is_empty() {
        println!("left out:");
        for skipped in left_out {
            println!("  line {}: {}", skipped.line, skipped.why);
            println!("      {}", first_line(&skipped.text));
        }
    }
    let plumbing: Vec<usize> = plan.skipped.iter().filter(|s| s.plumbing).map(|s| s.line).collect();
    if !plumbing.is_empty() {
        println!("not forwards: {}", ranges(&plumbing));
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None if text.lines().nth(1).is_some() => format!("{line} …"),
        None => line.to_string(),
    }
}

/// `1, 4-6, 9` for lines 1, 4, 5, 6 and 9 (each line once).
fn ranges(lines: &[usize]) -> String {
    let mut lines = lines.to_vec();
    lines.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = lines[i];
        let mut end = start;
        while i + 1 < lines.len() && lines[i + 1] == end + 1 {
            i += 1;
            end = lines[i];
        }
        out.push(if start == end {
            format!("line {start}")
        } else {
            format!("lines {start}-{end}")
        });
        i += 1;
    }
    out.join(", ")
}
