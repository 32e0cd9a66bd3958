//! What every harness of this crate builds nodes from: the test schema,
//! a node's options in a temp dir, reading rows.

use std::path::Path;

use patina_node::{Node, NodeOptions, QueryStream, RowEvent, Statement, Value};

pub const SCHEMA: &str = "
CREATE TABLE machines (id INTEGER PRIMARY KEY NOT NULL, app TEXT, state TEXT, n INTEGER);
CREATE TABLE apps (name TEXT PRIMARY KEY NOT NULL, owner TEXT);
";
pub const TABLES: &[&str] = &["machines", "apps"];

/// Options of a node of region `ams` living in `dir`: data in `dir/data`,
/// regional schema files in `dir/schema/` (first `regional.sql`), global
/// ones in `dir/global/` (first `global.sql`). The first files are written
/// only when absent, so a reopened node keeps whatever schema its test has
/// written since (to test reloads).
pub fn node_options(dir: &Path, regional: &str, global: &str) -> NodeOptions {
    for (folder, file, sql) in [
        ("schema", "regional.sql", regional),
        ("global", "global.sql", global),
    ] {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        let path = dir.join(folder).join(file);
        if !path.exists() {
            std::fs::write(path, sql).unwrap();
        }
    }
    NodeOptions {
        region: "ams".into(),
        global_member: false,
        data_dir: dir.join("data"),
        schema_paths: vec![dir.join("schema")],
        global_schema_paths: vec![dir.join("global")],
        schema_drops: patina_node::Drops::Refused,
    }
}

pub async fn rows(node: &Node, sql: &str) -> Vec<Vec<Value>> {
    let QueryStream { mut rows, .. } = node
        .query(Statement::new(sql), std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(event) = rows.recv().await {
        match event {
            RowEvent::Row(r) => out.push(r),
            RowEvent::Error(e) => panic!("query failed: {e}"),
        }
    }
    out
}
