//! Starting the real `patina agent` and learning its API address: shared by
//! the tests (`tests/support`) and the benches (`benches/support`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Spawns `bin agent -c config` and waits (at most 30 s) for its
/// "API listening addr=…" log line. The stderr reader keeps draining the
/// pipe for the agent's lifetime.
pub fn spawn_agent(bin: &str, config: &Path) -> (Child, String) {
    let mut child = Command::new(bin)
        .args(["agent", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn patina agent");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("API listening").nth(1) {
                let addr = rest
                    .split("addr=")
                    .nth(1)
                    .unwrap_or("")
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                let _ = tx.send(Ok(addr.to_owned()));
            } else if line.contains("ERROR") || line.starts_with("error:") {
                let _ = tx.send(Err(line));
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(addr)) => (child, addr),
        Ok(Err(line)) => {
            let _ = child.kill();
            panic!("agent failed to start: {line}")
        }
        Err(_) => {
            let _ = child.kill();
            panic!("agent did not report its API address within 30 s")
        }
    }
}
