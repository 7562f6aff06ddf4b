//! `switchboard scan`: every record under a key prefix, through the read hooks.

use super::StoreArgs;
use clap::Args;
use switchboard::PolicyContext;

#[derive(Args)]
pub struct ScanArgs {
    /// Key prefix, e.g. tools/ or tools/code/code_exec/.
    pub prefix: String,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: ScanArgs) -> switchboard::Result<()> {
    let db = args.store.open()?;
    let limit = args.limit.unwrap_or(usize::MAX);
    let ctx = PolicyContext::new()
        .with("source", "cli")
        .with("action", "scan");
    let mut count = 0;
    if !args.json {
        println!("{:<64} VALUE", "KEY");
    }
    for kv in db
        .scan_from(&args.prefix)
        .as_reader(&ctx)
        .iter()
        .take(limit)
    {
        let (key, value) = kv?;
        let text = String::from_utf8_lossy(&value);
        if args.json {
            let value: serde_json::Value = serde_json::from_slice(&value)
                .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
            println!("{}", serde_json::json!({"key": key, "value": value}));
        } else {
            let shown: String = text.chars().take(100).collect();
            let ellipsis = if text.chars().count() > 100 {
                "…"
            } else {
                ""
            };
            println!("{key:<64} {shown}{ellipsis}");
        }
        count += 1;
    }
    if !args.json {
        println!("({count} records)");
    }
    Ok(())
}
