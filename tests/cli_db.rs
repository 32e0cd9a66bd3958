//! `patina db …` end to end: the built binary, run on databases in temp dirs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SITE_A: &str = "11111111111111111111111111111111";
const SITE_B: &str = "22222222222222222222222222222222";

const SCHEMA: &str = "
CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c);
CREATE TABLE kv(k TEXT PRIMARY KEY NOT NULL, v BLOB);
";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn patina(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_patina"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "1")
        .spawn()
        .expect("spawn patina");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for patina");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// Runs a command that must succeed; returns its stdout.
fn ok(args: &[&str], stdin: &str) -> String {
    let run = patina(args, stdin);
    assert_eq!(
        run.code,
        Some(0),
        "patina {args:?} failed:\n{}{}",
        run.stdout,
        run.stderr
    );
    run.stdout
}

/// Runs a command that must fail cleanly; returns its stderr.
fn fail(args: &[&str], stdin: &str) -> String {
    fail_with(1, args, stdin)
}

/// Runs a command whose arguments are wrong: it fails with status 2 (as
/// clap's own programs do), which scripts tell from a failure (1).
fn usage_error(args: &[&str], stdin: &str) -> String {
    fail_with(2, args, stdin)
}

fn fail_with(code: i32, args: &[&str], stdin: &str) -> String {
    let run = patina(args, stdin);
    assert_eq!(
        run.code,
        Some(code),
        "patina {args:?} should fail with status {code}:\n{}{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.starts_with("error: "),
        "stderr should start with 'error: ': {}",
        run.stderr
    );
    for bad in ["panicked", "backtrace", "Backtrace", "RUST_BACKTRACE"] {
        assert!(!run.stderr.contains(bad), "{bad} in stderr: {}", run.stderr);
    }
    assert!(run.stdout.is_empty(), "stdout not empty: {}", run.stdout);
    run.stderr
}

struct Env {
    dir: tempfile::TempDir,
    schema: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = dir.path().join("schema.sql");
        std::fs::write(&schema, SCHEMA).expect("write schema");
        Env { dir, schema }
    }

    fn path(&self, name: &str) -> String {
        path_str(&self.dir.path().join(name))
    }

    fn schema(&self) -> String {
        path_str(&self.schema)
    }

    /// Creates a database with the schema and site id, running `sql`.
    fn create(&self, name: &str, site: &str, sql: &[&str]) -> String {
        let db = self.path(name);
        let schema = self.schema();
        let mut args = vec![
            "db",
            "exec",
            "--db",
            &db,
            "--site-id",
            site,
            "--schema",
            &schema,
        ];
        args.extend_from_slice(sql);
        ok(&args, "");
        db
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("temp path is UTF-8").to_owned()
}

fn exec(db: &str, sql: &[&str]) -> String {
    let mut args = vec!["db", "exec", "--db", db];
    args.extend_from_slice(sql);
    ok(&args, "")
}

fn changes(db: &str, extra: &[&str]) -> String {
    let mut args = vec!["db", "changes", "--db", db];
    args.extend_from_slice(extra);
    ok(&args, "")
}

fn dump(db: &str) -> String {
    ok(&["db", "dump", "--db", db], "")
}

/// Applies `lines` to `db`; returns the summary printed on stderr.
fn apply(db: &str, lines: &str) -> String {
    let run = patina(&["db", "apply", "--db", db], lines);
    assert_eq!(run.code, Some(0), "apply failed: {}", run.stderr);
    assert!(run.stdout.is_empty(), "apply prints nothing on stdout");
    run.stderr
}

/// Parses JSON lines; serde_json refuses `1e999` (out of range), so
/// infinities are read as the strings "inf" / "-inf".
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| {
            let l = l
                .replace(":1e999", ":\"inf\"")
                .replace(":-1e999", ":\"-inf\"");
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .collect()
}

#[test]
fn exec_then_changes_prints_exact_lines() {
    let env = Env::new();
    let db = env.path("a.db");
    let schema = env.schema();
    let out = ok(
        &[
            "db",
            "exec",
            "--db",
            &db,
            "--site-id",
            SITE_A,
            "--schema",
            &schema,
            "INSERT INTO t VALUES (1,'x',1,1.5)",
        ],
        "",
    );
    assert_eq!(out, "{\"version\":1}\n");
    let expected = [
        r#"{"table":"t","pk":"010901","cid":"a","val":"x","col_version":1,"db_version":1,"site_id":"11111111111111111111111111111111","cl":1,"seq":0}"#,
        r#"{"table":"t","pk":"010901","cid":"b","val":1,"col_version":1,"db_version":1,"site_id":"11111111111111111111111111111111","cl":1,"seq":1}"#,
        r#"{"table":"t","pk":"010901","cid":"c","val":1.5,"col_version":1,"db_version":1,"site_id":"11111111111111111111111111111111","cl":1,"seq":2}"#,
    ];
    assert_eq!(changes(&db, &[]), expected.join("\n") + "\n");

    // Nothing replicated changed: no version taken.
    assert_eq!(
        exec(
            &db,
            &["UPDATE t SET a = 'x' WHERE id = 1", "SELECT * FROM t"]
        ),
        "{\"version\":null}\n"
    );
    // Several statements per argument, several arguments: one transaction.
    assert_eq!(
        exec(
            &db,
            &[
                "UPDATE t SET c = 1.0 WHERE id = 1; INSERT INTO t VALUES (2, NULL, NULL, NULL)",
                "INSERT INTO kv VALUES ('k', x'00ff')",
            ],
        ),
        "{\"version\":2}\n"
    );
    let lines = changes(&db, &["--since", "1"]);
    assert!(
        lines.contains(r#""cid":"c","val":1.0,"col_version":2,"db_version":2,"#),
        "REAL 1.0 stays 1.0: {lines}"
    );
    assert!(
        lines.contains(r#""val":{"blob":"00ff"}"#),
        "blob as hex: {lines}"
    );
    assert!(json_lines(&lines)
        .iter()
        .all(|c| c["db_version"] == 2 && c["site_id"] == SITE_A));
}

#[test]
fn dump_lists_rows_by_table_then_pk() {
    let env = Env::new();
    let db = env.create(
        "a.db",
        SITE_A,
        &[
            "INSERT INTO t VALUES (10,'ten',10,10), (2,'two',2,2.0), (-1,'☃ ünïcode',NULL,x'01')",
            "INSERT INTO kv VALUES ('b', x''), ('a', NULL)",
        ],
    );
    let expected = [
        r#"{"table":"kv","row":{"k":"a","v":null}}"#,
        r#"{"table":"kv","row":{"k":"b","v":{"blob":""}}}"#,
        r#"{"table":"t","row":{"id":-1,"a":"☃ ünïcode","b":null,"c":{"blob":"01"}}}"#,
        r#"{"table":"t","row":{"id":2,"a":"two","b":2,"c":2.0}}"#,
        r#"{"table":"t","row":{"id":10,"a":"ten","b":10,"c":10}}"#,
    ];
    assert_eq!(dump(&db), expected.join("\n") + "\n");
}

#[test]
fn two_replicas_converge_through_changes_and_apply() {
    let env = Env::new();
    let a = env.create(
        "a.db",
        SITE_A,
        &[
            "INSERT INTO t VALUES (1,'a1',1,1.0), (2,'a2',2,9e999), (3,'gone',3,3)",
            "INSERT INTO kv VALUES ('shared', x'aa'), ('é', 'text in a blob column')",
        ],
    );
    exec(&a, &["DELETE FROM t WHERE id = 3"]);
    let b = env.create(
        "b.db",
        SITE_B,
        &[
            "INSERT INTO t VALUES (2,'b2',20,-9e999), (4,'b4',-0.0,0.1)",
            "INSERT INTO kv VALUES ('shared', x'bb')",
        ],
    );
    exec(&b, &["UPDATE t SET a = 'b4 again' WHERE id = 4"]);
    assert_ne!(dump(&a), dump(&b));

    let a_changes = changes(&a, &["--exclude-site", SITE_B]);
    let summary = apply(&b, &a_changes);
    assert!(summary.starts_with("applied "), "{summary}");
    let b_changes = changes(&b, &["--exclude-site", SITE_A]);
    apply(&a, &b_changes);

    let dump_a = dump(&a);
    assert_eq!(dump_a, dump(&b));
    let rows = json_lines(&dump_a);
    let ids: Vec<_> = rows
        .iter()
        .filter(|r| r["table"] == "t")
        .map(|r| r["row"]["id"].as_i64().expect("integer id"))
        .collect();
    assert_eq!(ids, [1, 2, 4], "row 3 deleted everywhere: {dump_a}");
    assert!(dump_a.contains(r#""c":1.0"#), "REAL survives: {dump_a}");
    assert!(
        dump_a.contains("e999"),
        "an infinity survives the trip: {dump_a}"
    );

    // Every change line is also still accepted after a full round.
    apply(&a, &changes(&b, &[]));
    apply(&b, &changes(&a, &[]));
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn applying_the_same_changes_twice_changes_nothing() {
    let env = Env::new();
    let a = env.create(
        "a.db",
        SITE_A,
        &["INSERT INTO t VALUES (1,'x',1,1.5), (2,'y',2,2.5)"],
    );
    let b = env.create("b.db", SITE_B, &["INSERT INTO t VALUES (3,'z',3,3.5)"]);
    let lines = changes(&a, &[]);
    let n = lines.lines().count();

    let first = apply(&b, &lines);
    assert_eq!(
        first.trim(),
        format!("applied {n} changes: {n} won, 0 lost, 0 ignored")
    );
    let after_first = dump(&b);
    let changes_after_first = changes(&b, &[]);

    // Blank lines are skipped.
    let second = apply(&b, &format!("\n{lines}\n\n"));
    assert!(second.contains(" 0 won"), "{second}");
    assert_eq!(dump(&b), after_first);
    assert_eq!(changes(&b, &[]), changes_after_first);
}

#[test]
fn since_and_exclude_site_filter() {
    let env = Env::new();
    let a = env.create("a.db", SITE_A, &["INSERT INTO t VALUES (1,'v1',1,1)"]);
    exec(&a, &["INSERT INTO t VALUES (2,'v2',2,2)"]);
    exec(&a, &["UPDATE t SET a = 'v3' WHERE id = 1"]);

    let versions = |text: &str| -> Vec<i64> {
        json_lines(text)
            .iter()
            .map(|c| c["db_version"].as_i64().expect("db_version"))
            .collect()
    };
    let all = changes(&a, &[]);
    assert_eq!(versions(&all), [1, 1, 2, 2, 2, 3]);
    assert_eq!(changes(&a, &["--since", "0"]), all);
    assert_eq!(versions(&changes(&a, &["--since", "1"])), [2, 2, 2, 3]);
    assert_eq!(versions(&changes(&a, &["--since", "2"])), [3]);
    assert_eq!(changes(&a, &["--since", "3"]), "");
    assert_eq!(changes(&a, &["--since", "99"]), "");

    let b = env.create("b.db", SITE_B, &["INSERT INTO t VALUES (7,'b',7,7)"]);
    apply(&b, &all);
    let sites = |text: &str| -> Vec<String> {
        let mut s: Vec<String> = json_lines(text)
            .iter()
            .map(|c| c["site_id"].as_str().expect("site_id").to_owned())
            .collect();
        s.dedup();
        s
    };
    assert_eq!(sites(&changes(&b, &["--exclude-site", SITE_A])), [SITE_B]);
    let without_b = changes(&b, &["--exclude-site", SITE_B]);
    assert_eq!(sites(&without_b), [SITE_A]);
    assert_eq!(without_b.lines().count(), all.lines().count());
    // An unknown site excludes nothing.
    assert_eq!(
        changes(&b, &["--exclude-site", &"3".repeat(32)]),
        changes(&b, &[])
    );
}

#[test]
fn malformed_lines_apply_nothing() {
    let env = Env::new();
    let a = env.create("a.db", SITE_A, &["INSERT INTO t VALUES (1,'x',1,1.5)"]);
    let b = env.create("b.db", SITE_B, &["INSERT INTO t VALUES (2,'y',2,2.5)"]);
    let good = changes(&a, &[]);
    let first = good.lines().next().expect("a change");
    let before = dump(&b);

    let cases: Vec<(String, &str)> = vec![
        (format!("{good}{{\"table\":"), "line 4"),
        (format!("{first}\nnot json\n"), "line 2"),
        (format!("\n\n{good}[1,2,3]\n"), "line 6"),
        (
            format!("{first}\n{}\n", first.replace("\"cl\":1", "\"cl\":1.0")),
            "cl must be an integer",
        ),
        (
            format!(
                "{first}\n{}\n",
                first.replace("\"pk\":\"010901\"", "\"pk\":\"xyz\"")
            ),
            "pk \"xyz\" is not hex",
        ),
        (
            format!("{first}\n{}\n", first.replace(SITE_A, "1234")),
            "not a site id",
        ),
        (
            format!("{first}\n{}\n", first.replace(",\"seq\":0", "")),
            "missing key \"seq\"",
        ),
        (
            format!(
                "{first}\n{}\n",
                first.replace("\"val\":\"x\"", "\"val\":[1]")
            ),
            "line 2",
        ),
    ];
    for (input, why) in cases {
        let err = fail(&["db", "apply", "--db", &b], &input);
        assert!(err.contains(why), "expected {why:?} in: {err}");
        assert!(err.contains("nothing was applied"), "{err}");
        assert_eq!(dump(&b), before, "nothing applied for {input}");
    }
}

#[test]
fn bad_changes_apply_nothing() {
    let env = Env::new();
    let a = env.create("a.db", SITE_A, &["INSERT INTO t VALUES (1,'x',1,1.5)"]);
    let b = env.create("b.db", SITE_B, &["INSERT INTO t VALUES (2,'y',2,2.5)"]);
    let good = changes(&a, &[]);
    let last = good.lines().last().expect("a change");
    let before = dump(&b);

    let unknown_table = format!(
        "{good}{}\n",
        last.replace("\"table\":\"t\"", "\"table\":\"nope\"")
    );
    let err = fail(&["db", "apply", "--db", &b], &unknown_table);
    assert!(err.contains("\"nope\""), "{err}");
    assert!(err.contains("unknown table"), "{err}");
    assert!(err.contains("line 4"), "{err}");

    let unknown_column = format!(
        "{}\n{good}",
        last.replace("\"cid\":\"c\"", "\"cid\":\"zz\"")
    );
    let err = fail(&["db", "apply", "--db", &b], &unknown_column);
    assert!(err.contains("unknown column"), "{err}");
    assert!(err.contains("line 1"), "{err}");

    assert_eq!(dump(&b), before);
}

#[test]
fn bad_site_ids_are_refused() {
    let env = Env::new();
    let db = env.path("new.db");
    let schema = env.schema();
    for bad in ["xyz", "1111", &"g".repeat(32), &"1".repeat(34)] {
        let err = usage_error(
            &[
                "db",
                "exec",
                "--db",
                &db,
                "--site-id",
                bad,
                "--schema",
                &schema,
            ],
            "",
        );
        assert!(err.contains("32 hex characters"), "{err}");
    }
    assert!(!Path::new(&db).exists(), "no database created");

    let a = env.create("a.db", SITE_A, &["INSERT INTO t VALUES (1,'x',1,1)"]);
    let err = usage_error(&["db", "changes", "--db", &a, "--exclude-site", "nope"], "");
    assert!(err.contains("32 hex characters"), "{err}");

    // An existing database keeps its site id.
    let err = fail(
        &["db", "exec", "--db", &a, "--site-id", SITE_B, "SELECT 1"],
        "",
    );
    assert!(err.contains(SITE_A) && err.contains(SITE_B), "{err}");
    assert_eq!(
        exec(&a, &["UPDATE t SET a = 'y'"]).trim(),
        "{\"version\":2}"
    );
    ok(
        &["db", "exec", "--db", &a, "--site-id", SITE_A, "SELECT 1"],
        "",
    );
}

#[test]
fn bad_sql_writes_nothing() {
    let env = Env::new();
    let a = env.create("a.db", SITE_A, &["INSERT INTO t VALUES (1,'x',1,1)"]);
    let before = dump(&a);
    let before_changes = changes(&a, &[]);
    for (sql, why) in [
        (
            vec![
                "INSERT INTO t VALUES (5,'y',1,1)",
                "INSERT INTO nope VALUES (1)",
            ],
            "no such table: nope",
        ),
        (
            vec!["INSERT INTO t VALUES (5,'y',1,1); INSERT INTO t VALUS (6)"],
            "syntax error",
        ),
        (vec!["INSERT INTO t VALUES (1,'dup',1,1)"], "UNIQUE"),
        (vec!["UPDATE t SET a = 'z'", "BEGIN"], "BEGIN"),
        (vec!["DROP TABLE t"], "DROP"),
    ] {
        let mut args = vec!["db", "exec", "--db", &a];
        args.extend_from_slice(&sql);
        let err = fail(&args, "");
        assert!(err.contains(why), "expected {why:?} in: {err}");
        assert!(
            err.contains("nothing of the transaction was written"),
            "{err}"
        );
        assert_eq!(dump(&a), before, "{sql:?}");
    }
    assert_eq!(changes(&a, &[]), before_changes);
    // The failed transactions took no db_version.
    assert_eq!(
        exec(&a, &["INSERT INTO t VALUES (2,'ok',2,2)"]).trim(),
        "{\"version\":2}"
    );
}

#[test]
fn missing_files_are_reported() {
    let env = Env::new();
    let db = env.path("a.db");
    let missing = env.path("missing.sql");
    let err = fail(
        &["db", "exec", "--db", &db, "--schema", &missing, "SELECT 1"],
        "",
    );
    assert!(
        err.contains("missing.sql") && err.contains("--schema"),
        "{err}"
    );
    assert!(!Path::new(&db).exists(), "no database created");

    for cmd in ["changes", "dump", "apply"] {
        let err = fail(&["db", cmd, "--db", &db], "");
        assert!(err.contains("does not exist"), "{cmd}: {err}");
    }
    assert!(!Path::new(&db).exists(), "reading commands create nothing");

    let bad_schema = env.path("bad.sql");
    std::fs::write(&bad_schema, "CREATE TABLE nokey(a TEXT);").expect("write");
    let err = fail(&["db", "exec", "--db", &db, "--schema", &bad_schema], "");
    assert!(err.contains("bad.sql"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let err = usage_error(&["db", "exec"], "");
    assert!(err.contains("--db"), "{err}");
    let err = usage_error(&["db", "frobnicate"], "");
    assert!(err.contains("frobnicate"), "{err}");
    let env = Env::new();
    let db = env.path("x.db");
    let err = usage_error(&["db", "changes", "--db", &db, "--since", "ten"], "");
    assert!(err.contains("--since"), "{err}");
    let help = ok(&["db", "changes", "--help"], "");
    assert!(help.contains("col_version"), "{help}");
}
