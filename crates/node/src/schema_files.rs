//! Schema files: `.sql` files, or folders of them, named by the config.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::NodeError;

/// The text of every schema file under `paths`, concatenated: a file as
/// given, a folder's `*.sql` files in name order.
pub(crate) fn read_all(paths: &[PathBuf]) -> Result<String, NodeError> {
    let mut text = String::new();
    for path in paths {
        let err = |source| NodeError::SchemaPath {
            path: path.clone(),
            source,
        };
        let meta = fs::metadata(path).map_err(err)?;
        let files = if meta.is_dir() {
            sql_files_in(path).map_err(err)?
        } else {
            vec![path.clone()]
        };
        for file in files {
            let body = fs::read_to_string(&file).map_err(|source| NodeError::SchemaPath {
                path: file.clone(),
                source,
            })?;
            text.push_str(&body);
            text.push_str("\n;\n");
        }
    }
    Ok(text)
}

fn sql_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sql") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
