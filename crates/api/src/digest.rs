//! `GET /v1/digest[?table=NAME][&bucket=N]`: the node's consistency digest
//! (`patina_node::Node::digest`) as JSON. The body names nothing about the
//! node that answers, so nodes holding the same rows answer the same bytes;
//! who answered is the `patina-actor-id` header (`patina check` matches
//! answers to members by it).

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use patina_node::{
    BucketKeys, ColumnState, DbKind, Digest, DigestError, DigestRequest, KeyState, TableDigest,
    DIGEST_BUCKETS, DIGEST_FORMAT,
};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::body::{clip, unique_query_pairs};
use crate::errors::ApiError;
use crate::json::{Cell, Cells};
use crate::state::ApiState;

/// The response header naming the answering node's actor id.
pub const ACTOR_HEADER: &str = "patina-actor-id";

pub(crate) async fn handle(
    State(state): State<ApiState>,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    let request = parse(raw_query.as_deref())?;
    let digest = state.node.digest(request).await.map_err(|e| match e {
        DigestError::UnknownTable(_) | DigestError::NoSuchBucket(_) => {
            ApiError::BadRequest(e.to_string())
        }
        DigestError::ShuttingDown => ApiError::Unavailable(e.to_string()),
        DigestError::Database { .. } => ApiError::Internal(e.to_string()),
    })?;
    let body = serde_json::to_vec(&Answer(&digest))
        .map_err(|e| ApiError::Internal(format!("writing the digest as JSON: {e}")))?;
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(actor) = HeaderValue::from_str(&state.node.actor_id().to_hex()) {
        headers.insert(ACTOR_HEADER, actor);
    }
    Ok(response)
}

fn parse(raw: Option<&str>) -> Result<DigestRequest, ApiError> {
    let mut request = DigestRequest::default();
    for (key, value) in unique_query_pairs(raw)? {
        match key.as_str() {
            "table" => request.table = Some(value),
            "bucket" => {
                let bucket = value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|b| *b < DIGEST_BUCKETS);
                request.bucket = Some(bucket.ok_or_else(|| {
                    ApiError::QueryString(format!(
                        "bucket={:?} is not a bucket number: give 0 to {}",
                        clip(&value),
                        DIGEST_BUCKETS - 1
                    ))
                })?);
            }
            _ => {
                return Err(ApiError::QueryString(format!(
                    "unknown query key {}: GET /v1/digest takes table=NAME and bucket=N",
                    clip(&key)
                )))
            }
        }
    }
    Ok(request)
}

/// The whole answer: `format`, `buckets`, then per database its tables.
struct Answer<'a>(&'a Digest);

impl Serialize for Answer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("format", DIGEST_FORMAT)?;
        map.serialize_entry("buckets", &DIGEST_BUCKETS)?;
        match self.0 {
            Digest::Tables(dbs) => {
                map.serialize_entry("databases", &Databases(dbs, TableJson))?;
            }
            Digest::Bucket { bucket, dbs } => {
                map.serialize_entry("bucket", bucket)?;
                map.serialize_entry("databases", &Databases(dbs, BucketJson))?;
            }
        }
        map.end()
    }
}

/// How one database's tables are written: `{name: table}` in name order.
trait Tables<T> {
    fn write<M: SerializeMap>(&self, map: &mut M, tables: &[T]) -> Result<(), M::Error>;
}

struct Databases<'a, T, W>(&'a [(DbKind, Vec<T>)], W);

impl<T, W: Tables<T>> Serialize for Databases<'_, T, W> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (db, tables) in self.0 {
            map.serialize_entry(db.name(), &Db(tables, &self.1))?;
        }
        map.end()
    }
}

struct Db<'a, T, W>(&'a [T], &'a W);

impl<T, W: Tables<T>> Serialize for Db<'_, T, W> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        self.1.write(&mut map, self.0)?;
        map.end()
    }
}

struct TableJson;

impl Tables<TableDigest> for TableJson {
    fn write<M: SerializeMap>(&self, map: &mut M, tables: &[TableDigest]) -> Result<(), M::Error> {
        #[derive(Serialize)]
        struct One {
            rows: u64,
            hash: String,
            buckets: Vec<String>,
        }
        for t in tables {
            let one = One {
                rows: t.rows,
                hash: hash_hex(t.hash()),
                buckets: t.buckets.iter().map(|b| hash_hex(*b)).collect(),
            };
            map.serialize_entry(&t.table, &one)?;
        }
        Ok(())
    }
}

struct BucketJson;

impl Tables<BucketKeys> for BucketJson {
    fn write<M: SerializeMap>(&self, map: &mut M, tables: &[BucketKeys]) -> Result<(), M::Error> {
        #[derive(Serialize)]
        struct One<'a> {
            hash: String,
            keys: Vec<KeyJson<'a>>,
        }
        for t in tables {
            let sum = t.keys.iter().fold(0u64, |s, k| s.wrapping_add(k.hash));
            let one = One {
                hash: hash_hex(sum),
                keys: t.keys.iter().map(KeyJson).collect(),
            };
            map.serialize_entry(&t.table, &one)?;
        }
        Ok(())
    }
}

/// One key: its pk as cells and packed (hex), cl, whether the table holds
/// the row, its hash, and its hashed columns.
struct KeyJson<'a>(&'a KeyState);

impl Serialize for KeyJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let k = self.0;
        let mut map = s.serialize_map(None)?;
        // A stored key that does not unpack is written as null: the packed
        // form still names it.
        match k.pk_values() {
            Ok(values) => map.serialize_entry("pk", &Cells(&values))?,
            Err(_) => map.serialize_entry("pk", &())?,
        }
        map.serialize_entry("packed_pk", &bytes_hex(&k.pk))?;
        map.serialize_entry("cl", &k.cl)?;
        map.serialize_entry("in_table", &k.in_table)?;
        map.serialize_entry("hash", &hash_hex(k.hash))?;
        map.serialize_entry("columns", &Columns(&k.columns))?;
        map.end()
    }
}

struct Columns<'a>(&'a [ColumnState]);

impl Serialize for Columns<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Clock {
            col_version: u64,
            db_version: u64,
            site_id: String,
            seq: u64,
        }
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for c in self.0 {
            let clock = c.clock.map(|e| Clock {
                col_version: e.col_version,
                db_version: e.db_version,
                site_id: e.site_id.to_hex(),
                seq: e.seq,
            });
            map.serialize_entry(&c.name, &Column(c.value.as_ref(), clock))?;
        }
        map.end()
    }
}

/// `{"value": cell, "clock": {…} | null}`; no `value` when the table holds
/// no row for the key.
struct Column<'a, C>(Option<&'a patina_node::Value>, Option<C>);

impl<C: Serialize> Serialize for Column<'_, C> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(v) = self.0 {
            map.serialize_entry("value", &Cell(v))?;
        }
        map.serialize_entry("clock", &self.1)?;
        map.end()
    }
}

fn hash_hex(h: u64) -> String {
    format!("{h:016x}")
}

fn bytes_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys() {
        assert_eq!(parse(None).unwrap(), DigestRequest::default());
        let r = parse(Some("table=machines&bucket=17")).unwrap();
        assert_eq!(
            r,
            DigestRequest {
                table: Some("machines".into()),
                bucket: Some(17),
            }
        );
        for (bad, says) in [
            (
                "bucket=256",
                "bucket=\"256\" is not a bucket number: give 0 to 255",
            ),
            ("bucket=-1", "is not a bucket number"),
            ("bucket=x", "is not a bucket number"),
            ("tables=machines", "unknown query key tables"),
            ("table=a&table=b", "table is given twice"),
        ] {
            let e = parse(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
