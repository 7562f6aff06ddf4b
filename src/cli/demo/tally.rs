//! Running a batch of demo calls and showing which agents served them.

use serde_json::json;
use std::collections::BTreeMap;
use switchboard::{RoutingOptions, ToolCategory, ToolDispatcher};

/// A progress bar on the terminal (nothing when stdout is not one).
fn progress(done: usize, total: usize) {
    use std::io::{IsTerminal, Write};
    let mut out = std::io::stdout();
    if !out.is_terminal() {
        return;
    }
    let width = 20;
    let filled = done * width / total.max(1);
    if done < total {
        print!(
            "\r    [{}{}] {done}/{total}",
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
    } else {
        print!("\r\x1b[2K");
    }
    let _ = out.flush();
}

pub async fn tally(
    dispatcher: &ToolDispatcher,
    category: ToolCategory,
    options: RoutingOptions,
    calls: usize,
) -> switchboard::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for i in 0..calls {
        let r = dispatcher
            .invoke(
                "code_exec",
                category.clone(),
                json!({"call": i}),
                options.clone(),
            )
            .await?;
        *counts.entry(r.agent_id).or_default() += 1;
        progress(i + 1, calls);
    }
    Ok(counts)
}

pub fn show_counts(label: &str, counts: &BTreeMap<String, usize>) -> switchboard::Result<()> {
    let parts: Vec<String> = counts.iter().map(|(a, n)| format!("{a} ×{n}")).collect();
    super::super::out(format_args!("    {label:<13} {}", parts.join("   ")))
}
