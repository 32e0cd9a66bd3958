//! `POST /v1/backup`: the node writes a backup into a new directory on its
//! host and answers with its manifest, also written beside the databases;
//! unusable targets are 400, bad bodies 400/422, and with a bearer token
//! configured the endpoint needs it like every other.

mod common;

use common::{start, start_with, Options};
use patina_api::ApiConfig;
use serde_json::{json, Value as Json};

#[tokio::test]
async fn a_backup_lands_in_a_new_directory_with_its_manifest() {
    let s = start().await;
    s.exec(json!(["INSERT INTO vals (k, v) VALUES (1, 2)"]))
        .await;
    s.exec(json!(["INSERT INTO app_regions VALUES ('web', 'ams', 1)"]))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("b1");
    let r = s.post_json("/v1/backup", &json!({ "to": target })).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["dir"], json!(target));
    assert!(body["time"].as_f64().is_some_and(|t| t >= 0.0), "{body}");
    let manifest = &body["manifest"];
    assert_eq!(manifest["actor_id"], json!(s.actor()));
    assert_eq!(manifest["region"], "ams");
    assert_eq!(manifest["format"], 1);
    let dbs = manifest["databases"].as_array().unwrap();
    assert_eq!(dbs.len(), 2);
    for (db, version) in [("regional", 1), ("global", 1)] {
        let entry = dbs.iter().find(|d| d["db"] == db).unwrap();
        assert_eq!(entry["own_version"], version, "{entry}");
        let file = target.join(entry["file"].as_str().unwrap());
        assert_eq!(
            entry["bytes"].as_u64(),
            Some(std::fs::metadata(file).unwrap().len())
        );
    }
    let on_disk: Json =
        serde_json::from_slice(&std::fs::read(target.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(&on_disk, manifest);

    let again = s.post_json("/v1/backup", &json!({ "to": target })).await;
    assert_eq!(again.status, 400);
    assert!(
        again.error().contains("exists already"),
        "{}",
        again.error()
    );
}

#[tokio::test]
async fn unusable_targets_and_bad_bodies_are_refused() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    for (to, says) in [
        (json!("relative/dir"), "not an absolute path"),
        (
            json!(dir.path().join("no/parent")),
            "parent directory does not exist",
        ),
    ] {
        let r = s.post_json("/v1/backup", &json!({ "to": to })).await;
        assert_eq!(r.status, 400, "{to}");
        assert!(r.error().contains(says), "{}", r.error());
    }
    assert_eq!(
        s.post_json("/v1/backup", &json!({"dir": "/x"}))
            .await
            .status,
        422
    );
    assert_eq!(
        s.post_json("/v1/backup", &json!({"to": 5})).await.status,
        422
    );
    assert_eq!(s.post_raw("/v1/backup", "{").await.status, 400);
    assert_eq!(s.get("/v1/backup").await.status, 405);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[tokio::test]
async fn with_a_bearer_token_a_backup_needs_it() {
    let s = start_with(Options {
        config: ApiConfig {
            bearer_token: Some("s3cret".into()),
            ..ApiConfig::default()
        },
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let body = json!({ "to": dir.path().join("b") });
    let post = || {
        s.http
            .post(s.url("/v1/backup"))
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let refused = s.send(post()).await;
    assert_eq!(refused.status, 401);
    assert!(!dir.path().join("b").exists());
    let taken = s.send(post().bearer_auth("s3cret")).await;
    assert_eq!(
        taken.status,
        200,
        "{}",
        String::from_utf8_lossy(&taken.body)
    );
    assert!(dir.path().join("b/manifest.json").exists());
}
