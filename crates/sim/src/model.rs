//! The in-memory model of a node's two databases. Real CRR merging is
//! replaced by a row model with the same version semantics: a version
//! writes whole rows, and a row keeps the write with the highest
//! (Lamport clock, writer) — what cr-sqlite's column clocks decide when
//! one transaction writes a whole row. The changes travel as real
//! `WireChange`s in real chunks (`patina_wire::chunk_changes`), so sizes
//! and chunking are the agent's; this module turns them back into rows.
//!
//! - `regional.db` holds the `machines` table: (machine) → app, state,
//!   image; a deleted machine is a row with an even causal length.
//! - `global.db` holds the `app_regions` rollup target: (app, region) →
//!   present, written by each region's leader.

use patina_value::Value;
use patina_wire::WireChange;

pub const MACHINES: &str = "machines";
pub const APP_REGIONS: &str = "app_regions";
/// cr-sqlite's name for a row's sentinel (existence) column.
const SENTINEL: &str = "-1";
/// The bytes of a deploy's `image` column: what makes a bulk write span
/// several 64 KiB chunks.
pub const IMAGE_BYTES: usize = 700;

/// One row of `machines` as a node holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineRow {
    pub clock: u64,
    pub writer: u32,
    pub app: u16,
    pub state: u32,
    pub live: bool,
}

/// One row of `app_regions` as a node holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppRegionRow {
    pub clock: u64,
    pub writer: u32,
    pub present: bool,
}

/// What a merge keeps: the later write; ties (one clock, two writers)
/// go to the larger writer, so every node picks the same.
fn wins(clock: u64, writer: u32, over_clock: u64, over_writer: u32) -> bool {
    (clock, writer) > (over_clock, over_writer)
}

/// A machine write as the workload makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineWrite {
    pub machine: u32,
    pub app: u16,
    pub state: u32,
    pub live: bool,
    /// A deploy: the row carries an image blob.
    pub image: bool,
}

impl MachineRow {
    pub fn merge(&mut self, clock: u64, writer: u32, w: &MachineWrite) -> bool {
        if !wins(clock, writer, self.clock, self.writer) {
            return false;
        }
        *self = MachineRow {
            clock,
            writer,
            app: w.app,
            state: w.state,
            live: w.live,
        };
        true
    }
}

impl AppRegionRow {
    pub fn merge(&mut self, clock: u64, writer: u32, present: bool) -> bool {
        if !wins(clock, writer, self.clock, self.writer) {
            return false;
        }
        *self = AppRegionRow {
            clock,
            writer,
            present,
        };
        true
    }
}

fn change(
    table: &str,
    pk: Vec<u8>,
    cid: &str,
    val: Value,
    clock: u64,
    cl: i64,
    seq: i64,
) -> WireChange {
    WireChange {
        table: table.to_string(),
        pk,
        cid: cid.to_string(),
        val,
        col_version: clock as i64,
        cl,
        seq,
    }
}

/// The changes of one transaction writing `writes` at Lamport `clock`.
pub fn machine_changes(writes: &[MachineWrite], clock: u64) -> Vec<WireChange> {
    let mut out = Vec::new();
    let mut seq = 0i64;
    let mut push = |out: &mut Vec<WireChange>, pk: &[u8], cid: &str, val: Value, cl: i64| {
        out.push(change(MACHINES, pk.to_vec(), cid, val, clock, cl, seq));
        seq += 1;
    };
    for w in writes {
        let pk = w.machine.to_be_bytes();
        if !w.live {
            push(&mut out, &pk, SENTINEL, Value::Null, 2);
            continue;
        }
        push(&mut out, &pk, "app", Value::Integer(i64::from(w.app)), 1);
        push(
            &mut out,
            &pk,
            "state",
            Value::Integer(i64::from(w.state)),
            1,
        );
        if w.image {
            push(
                &mut out,
                &pk,
                "image",
                Value::Text("i".repeat(IMAGE_BYTES)),
                1,
            );
        }
    }
    out
}

/// The machine writes (with their clock) that `changes` carry.
pub fn decode_machines(changes: &[WireChange]) -> Vec<(u64, MachineWrite)> {
    let mut out: Vec<(u64, MachineWrite)> = Vec::new();
    for c in changes.iter().filter(|c| c.table == MACHINES) {
        let Ok(pk) = <[u8; 4]>::try_from(c.pk.as_slice()) else {
            continue;
        };
        let machine = u32::from_be_bytes(pk);
        let clock = c.col_version as u64;
        let fresh_row = out.last().is_none_or(|(_, w)| w.machine != machine);
        if fresh_row {
            out.push((
                clock,
                MachineWrite {
                    machine,
                    app: 0,
                    state: 0,
                    live: c.cl % 2 == 1,
                    image: false,
                },
            ));
        }
        let Some((_, w)) = out.last_mut() else {
            continue;
        };
        match (c.cid.as_str(), &c.val) {
            ("app", Value::Integer(v)) => w.app = *v as u16,
            ("state", Value::Integer(v)) => w.state = *v as u32,
            ("image", _) => w.image = true,
            _ => {}
        }
    }
    out
}

/// The changes of a rollup publication: (app, region) rows set present or
/// deleted, at Lamport `clock`.
pub fn app_region_changes(rows: &[(u16, u16, bool)], clock: u64) -> Vec<WireChange> {
    rows.iter()
        .enumerate()
        .map(|(seq, &(app, region, present))| {
            let mut pk = app.to_be_bytes().to_vec();
            pk.extend_from_slice(&region.to_be_bytes());
            let cl = if present { 1 } else { 2 };
            change(
                APP_REGIONS,
                pk,
                SENTINEL,
                Value::Null,
                clock,
                cl,
                seq as i64,
            )
        })
        .collect()
}

/// The (clock, app, region, present) rows `changes` carry.
pub fn decode_app_regions(changes: &[WireChange]) -> Vec<(u64, u16, u16, bool)> {
    changes
        .iter()
        .filter(|c| c.table == APP_REGIONS)
        .filter_map(|c| {
            let pk = <[u8; 4]>::try_from(c.pk.as_slice()).ok()?;
            let app = u16::from_be_bytes([pk[0], pk[1]]);
            let region = u16::from_be_bytes([pk[2], pk[3]]);
            Some((c.col_version as u64, app, region, c.cl % 2 == 1))
        })
        .collect()
}

/// The apps with at least one live machine in `rows`: what the
/// `app_regions` rollup's query returns for a region.
pub fn live_apps(rows: &[MachineRow], apps: usize) -> Vec<bool> {
    let mut out = vec![false; apps];
    for r in rows.iter().filter(|r| r.live) {
        if let Some(slot) = out.get_mut(usize::from(r.app)) {
            *slot = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_writes_round_trip_through_changes() {
        let writes = [
            MachineWrite {
                machine: 7,
                app: 3,
                state: 9,
                live: true,
                image: true,
            },
            MachineWrite {
                machine: 8,
                app: 0,
                state: 0,
                live: false,
                image: false,
            },
        ];
        let back = decode_machines(&machine_changes(&writes, 42));
        assert_eq!(back, vec![(42, writes[0]), (42, writes[1])]);
    }

    #[test]
    fn later_write_wins_whatever_the_order() {
        let w1 = MachineWrite {
            machine: 1,
            app: 1,
            state: 1,
            live: true,
            image: false,
        };
        let w2 = MachineWrite { app: 2, ..w1 };
        let mut a = MachineRow::default();
        let mut b = MachineRow::default();
        a.merge(5, 1, &w1);
        a.merge(5, 2, &w2);
        b.merge(5, 2, &w2);
        b.merge(5, 1, &w1);
        assert_eq!(a, b);
        assert_eq!(a.app, 2);
    }

    #[test]
    fn app_regions_round_trip() {
        let rows = [(4u16, 2u16, true), (5, 2, false)];
        let back = decode_app_regions(&app_region_changes(&rows, 3));
        assert_eq!(back, vec![(3, 4, 2, true), (3, 5, 2, false)]);
    }
}
