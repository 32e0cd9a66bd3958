//! A REAL ±infinity read back through `patina query` is `1e999` /
//! `-1e999` (the JSON-lines encoding), never null.

mod support;

use support::{setup, Agent};

#[test]
fn infinities_read_back_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(&setup(dir.path()));
    let (ok, _, err) = a.cli(&[
        "exec",
        "INSERT INTO machines VALUES ('up', 'x', 9e999), ('down', 'x', -9e999)",
    ]);
    assert!(ok, "{err}");
    let sql = "SELECT id, n FROM machines ORDER BY id";
    let (ok, out, err) = a.cli(&["query", "--json", sql]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [r#"{"id":"down","n":-1e999}"#, r#"{"id":"up","n":1e999}"#],
        "{out}"
    );
    let (ok, out, err) = a.cli(&["query", sql]);
    assert!(ok, "{err}");
    assert!(out.contains("-1e999") && out.contains(" 1e999"), "{out}");
    assert!(!out.contains("NULL"), "{out}");
}
