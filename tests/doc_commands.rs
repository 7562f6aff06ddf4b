//! The documentation's runnable shell blocks, run, so a doc command that
//! breaks fails the suite (issue 25, item 8).
//!
//! A fenced block of README.md or docs/*.md whose info string is
//! `sh runnable` is commands a reader can paste as written. The runnable
//! blocks of one file run in order in one bash session (`set -e -o
//! pipefail`: a command that fails ends it), so a block may use what an
//! earlier one of the same file exported or started. The session runs in a
//! fresh temporary directory laid out like the repository root: copies of
//! `docs/`, `examples/`, `policies/` and `scripts/`, and `target` linked to
//! this build's target directory; `TMPDIR` is a directory of its own (so
//! `mktemp` leaves nothing behind). `switchboard` on the PATH is this
//! build's debug binary, and no `SWITCHBOARD_*` variable is set (but see
//! [`session_env`]). `cargo build --all-targets` is not run again (this test
//! is part of that build: its binaries are there); any other `cargo` command
//! fails. Each block gets [`BLOCK_TIMEOUT`]; everything a session started is
//! stopped when it ends (its process group). A failure names the file, the
//! block's line and the failing command's line, and shows the block's output.

#![cfg(unix)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one block may run.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// What the session script prints around the blocks (never in a doc).
const MARK: &str = "##doc-commands##";

/// The repository's directories a session gets a copy of.
const COPIED: &[&str] = &["docs", "examples", "policies", "scripts"];

/// One runnable block: the line of its opening fence and its lines, each
/// with its line number in the file.
struct Block {
    line: usize,
    lines: Vec<(usize, String)>,
}

/// The runnable blocks of a Markdown text, in order.
fn runnable_blocks(file: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let rest = line.trim_start();
        let indent = line.len() - rest.len();
        let fence_char = match rest.chars().next() {
            Some(c @ ('`' | '~')) => c,
            _ => continue,
        };
        let fence_len = rest.chars().take_while(|&c| c == fence_char).count();
        if fence_len < 3 {
            continue;
        }
        let info: Vec<&str> = rest[fence_len..].split_whitespace().collect();
        let runnable = info.contains(&"runnable");
        assert!(
            !runnable || matches!(info.first(), Some(&("sh" | "bash"))),
            "{file}:{}: only a sh block can be runnable (```sh runnable)",
            i + 1
        );
        let mut body = Vec::new();
        for (j, l) in lines.by_ref() {
            let t = l.trim();
            if t.len() >= fence_len && t.chars().all(|c| c == fence_char) {
                break;
            }
            let strip = (l.len() - l.trim_start().len()).min(indent);
            body.push((j + 1, l[strip..].to_string()));
        }
        if runnable {
            blocks.push(Block {
                line: i + 1,
                lines: body,
            });
        }
    }
    blocks
}

/// The session script of one file's blocks, and for each of its lines
/// (index = bash's `$LINENO`) the doc line it came from.
fn session_script(blocks: &[Block]) -> (String, Vec<Option<usize>>) {
    let mut script = String::new();
    let mut origin = vec![None]; // $LINENO counts from 1
    let mut push = |text: &str, from: Option<usize>| {
        script.push_str(text);
        script.push('\n');
        origin.push(from);
    };
    push("set -e -o pipefail", None);
    push(
        &format!("trap '__doc_status=$?; echo \"{MARK} failed $LINENO $__doc_status\"' ERR"),
        None,
    );
    for block in blocks {
        push(&format!("echo '{MARK} block {}'", block.line), None);
        for (n, text) in &block.lines {
            push(text, Some(*n));
        }
    }
    push(&format!("echo '{MARK} done'"), None);
    (script, origin)
}

/// Variables a file's session starts with. docs/cluster.md's hand-run steps
/// are read after README's server block, in the same shell: they must work
/// with what it exported still set (issue 25, item 8).
fn session_env(file: &str) -> Vec<(&'static str, &'static str)> {
    match file {
        "docs/cluster.md" => vec![
            ("SWITCHBOARD_TOKEN", "change-me"),
            ("SWITCHBOARD_URL", "http://127.0.0.1:7700"),
        ],
        _ => Vec::new(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The processes of a process group that have not exited (zombies aside:
/// their parent, gone, may never reap them).
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid pgrp ...; comm may hold spaces and ')'.
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = fields.next()?;
            let pgrp: u32 = fields.nth(1)?.parse().ok()?;
            (pgrp == pgid && state != "Z").then_some(pid)
        })
        .collect()
}

/// Stops every process of the group: SIGTERM, then SIGKILL for what is
/// still there after 10 s.
fn stop_group(pgid: u32) {
    for (signal, wait) in [("TERM", 10), ("KILL", 5)] {
        if group_members(pgid).is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(wait);
        while Instant::now() < deadline && !group_members(pgid).is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last `n` lines of `text`, indented.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skipped = lines.len().saturating_sub(n);
    let mut out = String::new();
    if skipped > 0 {
        out.push_str(&format!("    ({skipped} earlier lines left out)\n"));
    }
    for line in &lines[skipped..] {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The 127.0.0.1 ports the blocks name that something already listens on.
fn busy_ports(blocks: &[Block]) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    for (_, line) in blocks.iter().flat_map(|b| &b.lines) {
        for host in ["127.0.0.1:", "localhost:"] {
            for (at, _) in line.match_indices(host) {
                let digits: String = line[at + host.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(port) = digits.parse() {
                    ports.push(port);
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports.retain(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_err());
    ports
}

/// Runs one file's runnable blocks; `Err` says which block failed and how.
fn run_file(repo: &Path, file: &str, blocks: &[Block]) -> Result<(), String> {
    let busy = busy_ports(blocks);
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    for dir in COPIED {
        copy_dir(&repo.join(dir), &work.join(dir));
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_switchboard"));
    let target_dir = exe.parent().unwrap().parent().unwrap();
    std::os::unix::fs::symlink(target_dir, work.join("target")).unwrap();

    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(exe, bin.join("switchboard")).unwrap();
    let cargo = bin.join("cargo");
    fs::write(
        &cargo,
        "#!/bin/sh\n\
         if [ \"$*\" = 'build --all-targets' ]; then\n\
         \x20 echo '(doc commands test: the build this test belongs to made it; not run again)'\n\
         \x20 exit 0\n\
         fi\n\
         echo \"the doc commands test runs no 'cargo $*': leave this block unmarked\" >&2\n\
         exit 1\n",
    )
    .unwrap();
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).unwrap();

    let (script, origin) = session_script(blocks);
    let script_path = tmp.path().join("session.sh");
    fs::write(&script_path, script).unwrap();
    let output_path = tmp.path().join("output");
    let output = fs::File::create(&output_path).unwrap();

    let session_tmp = tmp.path().join("tmp");
    fs::create_dir(&session_tmp).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .arg(&script_path)
        .current_dir(&work)
        .env("PATH", path)
        .env("TMPDIR", &session_tmp)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .process_group(0);
    for (name, _) in std::env::vars() {
        if name.starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command.envs(session_env(file));
    let mut child = command.spawn().expect("bash");
    let pgid = child.id();

    // Wait, giving each block BLOCK_TIMEOUT from when it starts.
    let mut current = (0, Instant::now());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        let text = fs::read_to_string(&output_path).unwrap_or_default();
        let started = text
            .lines()
            .filter_map(|l| l.split(&format!("{MARK} block ")).nth(1))
            .next_back()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if started != current.0 {
            current = (started, Instant::now());
        }
        if current.1.elapsed() > BLOCK_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop_group(pgid);
    let _ = child.wait();
    let text = fs::read_to_string(&output_path).unwrap_or_default();

    // The failing block, and its own output (what followed its marker).
    let mut block_line = None;
    let mut block_output = String::new();
    let mut failed_at = None;
    let mut done = false;
    for line in text.lines() {
        // A marker follows whatever a command printed without a newline.
        let (before, marker) = match line.find(MARK) {
            Some(at) => (&line[..at], Some(&line[at + MARK.len()..])),
            None => (line, None),
        };
        if !before.is_empty() {
            block_output.push_str(before);
            block_output.push('\n');
        }
        if let Some(rest) = marker {
            let mut words = rest.split_whitespace();
            match words.next() {
                Some("block") => {
                    block_line = words.next().and_then(|n| n.parse::<usize>().ok());
                    block_output.clear();
                }
                Some("failed") => {
                    let lineno: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let code = words.next().unwrap_or("?").to_string();
                    failed_at = Some((origin.get(lineno).copied().flatten(), code));
                    // What follows is the session being stopped.
                    break;
                }
                Some("done") => done = true,
                _ => {}
            }
        }
    }
    let block = match block_line {
        Some(n) => format!("the runnable block at line {n}"),
        None => "the session, before its first block,".to_string(),
    };
    let what = match (status, &failed_at) {
        (None, _) => format!("did not finish within {} s", BLOCK_TIMEOUT.as_secs()),
        (Some(s), _) if s.success() && done => return Ok(()),
        (Some(_), Some((Some(doc_line), code))) => {
            // Name the command from its first line (bash names its last).
            let lines: &[(usize, String)] = blocks
                .iter()
                .find(|b| Some(b.line) == block_line)
                .map_or(&[], |b| &b.lines);
            let mut first = *doc_line;
            while lines
                .iter()
                .any(|(n, l)| *n + 1 == first && l.trim_end().ends_with('\\'))
            {
                first -= 1;
            }
            let command = lines
                .iter()
                .find(|(n, _)| *n == first)
                .map(|(_, l)| l.trim().to_string())
                .unwrap_or_default();
            format!("failed: the command at line {first} exited with status {code}:\n    {command}")
        }
        (Some(s), _) => format!("failed ({s})"),
    };
    let note = if busy.is_empty() {
        String::new()
    } else {
        format!("(before these commands ran, something already listened on 127.0.0.1 port(s) {busy:?}, which they use)\n")
    };
    Err(format!(
        "{file}: {block} {what}\n{note}its output:\n{}",
        tail(&block_output, 60)
    ))
}

/// The docs' commands use fixed ports (7700, 8001, 2379, ...), so runs of
/// this test on one machine (from several checkouts) take turns: each holds
/// an abstract Unix socket while it runs, which the kernel releases when the
/// process ends, however it ends.
#[cfg(target_os = "linux")]
fn take_turn() -> std::os::unix::net::UnixListener {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = SocketAddr::from_abstract_name(b"switchboard-doc-commands-test").unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match UnixListener::bind_addr(&name) {
            Ok(turn) => return turn,
            Err(e) if Instant::now() > deadline => {
                panic!("another run of this test has held its turn for 10 minutes: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn take_turn() {}

#[test]
fn the_documentations_runnable_commands_succeed() {
    let _turn = take_turn();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = vec![repo.join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(repo.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);

    let mut failures = Vec::new();
    let mut ran = 0;
    for path in &files {
        let file = path
            .strip_prefix(repo)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let blocks = runnable_blocks(&file, &fs::read_to_string(path).unwrap());
        if blocks.is_empty() {
            continue;
        }
        let started = Instant::now();
        let result = run_file(repo, &file, &blocks);
        eprintln!(
            "{file}: {} runnable block(s) {} in {:.1} s",
            blocks.len(),
            if result.is_ok() { "ran" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        ran += blocks.len();
        if let Err(e) = result {
            failures.push(e);
        }
    }
    assert!(
        ran > 0,
        "no runnable block found: is the marker still ```sh runnable?"
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
