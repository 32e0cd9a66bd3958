//! An edge proxy's view of one app, from the Patina node on its host:
//! which regions run the app, and which machines of this region serve it.
//! Prints each routing change as it happens.
//!
//!   cargo run --example edge_router -- --api 127.0.0.1:8080 --app web
//!
//! Against `patina devcluster` (README, "Quick start"), or any node whose
//! schema has the regional `machines` table and the global `app_regions`
//! rollup target (config/demo-schema.sql, config/demo-global-schema.sql).

mod routing;

use anyhow::Context;
use clap::Parser;
use patina_client::Client;

#[derive(Parser)]
#[command(about = "Follows one app's routing (regions, local machines) on a Patina node")]
struct Args {
    /// The API address of the node on this host.
    #[arg(long, value_name = "ADDR")]
    api: String,
    /// The app to route.
    #[arg(long, value_name = "APP")]
    app: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::new(&args.api)?;
    let health = client
        .health()
        .await
        .with_context(|| format!("is a Patina node listening on {}?", args.api))?;
    let region = health["region"].as_str().unwrap_or("?");
    println!(
        "edge router for app {} at {} (region {region}); Ctrl-C to stop",
        args.app, args.api
    );
    let print = |line: String| println!("{line}");
    tokio::select! {
        followed = routing::follow(&client, &args.app, &print) => {
            followed.context("lost the node's subscriptions")?;
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
