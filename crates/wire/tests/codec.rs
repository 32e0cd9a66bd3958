//! Round trips, garbage, and chunk tiling.

use patina_value::{SiteId, Value};
use patina_wire::*;
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Value::Real),
        ".{0,40}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Value::Blob),
    ]
}

fn changes() -> impl Strategy<Value = Vec<WireChange>> {
    proptest::collection::vec(
        (
            "[a-z]{1,8}",
            proptest::collection::vec(any::<u8>(), 1..20),
            value(),
            1i64..5,
            0u8..30,
        ),
        0..60,
    )
    .prop_map(move |rows| {
        let mut seq = -1i64;
        rows.into_iter()
            .map(|(table, pk, val, col_version, gap)| {
                seq += 1 + i64::from(gap % 3);
                WireChange {
                    table,
                    pk,
                    cid: "c".into(),
                    val,
                    col_version,
                    cl: 1,
                    seq,
                }
            })
            .collect()
    })
}

fn envelope(message: Message) -> Envelope {
    Envelope {
        cluster: ClusterName::new("ams").unwrap(),
        from: SiteId([7; 16]),
        message,
    }
}

fn decode(bytes: &[u8]) -> Result<Envelope, WireError> {
    let header: [u8; 4] = bytes
        .get(..4)
        .ok_or(WireError::Truncated)?
        .try_into()
        .unwrap();
    let len = frame_body_len(header)?;
    let body = bytes.get(4..4 + len).ok_or(WireError::Truncated)?;
    decode_frame_body(body)
}

/// What a frame body decoder may answer for `bytes`: an empty body is
/// truncated, a foreign first byte is the version error; anything that
/// does decode is a message the encoder writes back stably (bytes compared,
/// so a NaN in a decoded value cannot fail it).
fn check_body(bytes: &[u8], got: &Result<Envelope, WireError>) -> Result<(), TestCaseError> {
    match (bytes.first(), got) {
        (None, got) => prop_assert_eq!(got, &Err(WireError::Truncated)),
        (Some(&v), got) if v != WIRE_VERSION => prop_assert_eq!(got, &Err(WireError::Version(v))),
        (Some(_), Err(_)) => {}
        (Some(_), Ok(envelope)) => {
            let again = encode_frame(envelope).expect("a decoded envelope encodes");
            let back = decode(&again).expect("what we encode decodes");
            prop_assert_eq!(encode_frame(&back).unwrap(), again);
            if let Message::Changes(chunk) = &envelope.message {
                prop_assert!(chunk.validate().is_ok(), "an invalid chunk decoded");
            }
        }
    }
    Ok(())
}

/// A decode result comparable even when a decoded value holds a NaN.
fn canonical(r: Result<Envelope, WireError>) -> Result<Vec<u8>, WireError> {
    r.map(|e| encode_frame(&e).expect("a decoded envelope encodes"))
}

proptest! {
    #[test]
    fn chunks_round_trip_and_tile_the_transaction(
        version in 1u64..1000,
        extra_last in 0u64..3,
        changes in changes(),
    ) {
        let actor = SiteId([1; 16]);
        let last = changes.last().map_or(0, |c| c.seq as u64) + extra_last;
        let chunks = chunk_changes(DbKind::Regional, actor, version, last, changes.clone());
        // Spans tile 0..=last_seq in order.
        let mut next = 0u64;
        for c in &chunks {
            prop_assert_eq!(c.seqs.start, next);
            prop_assert_eq!(c.last_seq, last);
            next = c.seqs.end + 1;
            c.validate().unwrap();
            let bytes = encode_frame(&envelope(Message::Changes(c.clone()))).unwrap();
            if c.changes.len() > 1 {
                prop_assert!(bytes.len() <= CHUNK_BYTES_TARGET + 200, "{} bytes", bytes.len());
            }
            prop_assert_eq!(decode(&bytes).unwrap().message, Message::Changes(c.clone()));
        }
        prop_assert_eq!(next, last + 1);
        let back: Vec<WireChange> = chunks.into_iter().flat_map(|c| c.changes).collect();
        prop_assert_eq!(back, changes);
    }

    #[test]
    fn garbage_frames_are_errors(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..300),
        versioned in any::<bool>(),
    ) {
        // Half the inputs get past the version check, so the decoders'
        // later stages see garbage too, not only the first byte.
        if versioned && !bytes.is_empty() {
            bytes[0] = WIRE_VERSION;
        }
        let body = decode_frame_body(&bytes);
        check_body(&bytes, &body)?;

        // The same bytes behind a random header (their own first 4 bytes).
        let expected = match bytes.get(..FRAME_HEADER_BYTES) {
            None => Err(WireError::Truncated),
            Some(h) => match u32::from_le_bytes(h.try_into().unwrap()) as usize {
                len if len > FRAME_BYTES_MAX => Err(WireError::FrameTooLarge(len)),
                0 => Err(WireError::Truncated),
                len if bytes.len() - FRAME_HEADER_BYTES < len => Err(WireError::Truncated),
                len => decode_frame_body(&bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len]),
            },
        };
        prop_assert_eq!(canonical(decode(&bytes)), canonical(expected));

        // Behind a correct header: exactly what the body decodes to.
        let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let expected = if bytes.is_empty() { Err(WireError::Truncated) } else { body };
        prop_assert_eq!(canonical(decode(&framed)), canonical(expected));

        match decode_datagram(&bytes) {
            Err(e) => match bytes.as_slice() {
                [] | [_] => prop_assert_eq!(e, WireError::Truncated),
                [v, ..] if *v != WIRE_VERSION => prop_assert_eq!(e, WireError::Version(*v)),
                [_, n, rest @ ..] if rest.len() < usize::from(*n) => {
                    prop_assert_eq!(e, WireError::Truncated)
                }
                [_, n, rest @ ..] => match std::str::from_utf8(&rest[..usize::from(*n)]) {
                    Err(_) => prop_assert!(matches!(e, WireError::Malformed(_)), "{e:?}"),
                    Ok(name) => prop_assert_eq!(Err(e), ClusterName::new(name)),
                },
            },
            // The datagram layout has one encoding per (cluster, payload):
            // what decodes must be exactly what the encoder writes.
            Ok(d) => prop_assert_eq!(encode_datagram(&d.cluster, d.payload), bytes.clone()),
        }
    }

    #[test]
    fn truncated_and_flipped_frames_are_errors_or_valid(
        changes in changes(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let chunk = chunk_changes(DbKind::Global, SiteId([2; 16]), 3, 0, changes).remove(0);
        let bytes = encode_frame(&envelope(Message::Changes(chunk))).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(decode(&bytes[..cut]).is_err());
        let mut flipped = bytes.clone();
        let i = flip.index(bytes.len());
        flipped[i] ^= 0x5a;
        if let Ok(env) = decode(&flipped) {
            if let Message::Changes(c) = env.message {
                c.validate().unwrap();
            }
        }
    }
}

#[test]
fn every_message_round_trips() {
    let actor = SiteId([3; 16]);
    let messages = vec![
        Message::SummaryRequest,
        Message::PullDone,
        Message::Summary(Summary {
            actors: vec![ActorSummary {
                db: DbKind::Regional,
                actor,
                applied: vec![Span::new(1, 10), Span::new(12, 40)],
                partial: vec![PartialVersion {
                    version: 11,
                    last_seq: 900,
                    have: vec![Span::new(0, 99)],
                }],
            }],
        }),
        Message::Pull(vec![
            Need::Versions {
                db: DbKind::Global,
                actor,
                versions: Span::new(3, 9),
            },
            Need::Seqs {
                db: DbKind::Regional,
                actor,
                version: 11,
                seqs: vec![Span::new(100, 900)],
            },
        ]),
        Message::DigestRequest(7),
        Message::InSync,
        Message::Collected(CollectedFloors {
            db: DbKind::Regional,
            floors: vec![(actor, 12)],
            causal_lengths: vec![("machines".into(), 4)],
        }),
        Message::Declined("stale".into()),
    ];
    for m in messages {
        let env = envelope(m);
        assert_eq!(decode(&encode_frame(&env).unwrap()).unwrap(), env);
    }
}

#[test]
fn oversized_length_prefix_is_refused_before_reading() {
    let header = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
    assert_eq!(
        frame_body_len(header),
        Err(WireError::FrameTooLarge(FRAME_BYTES_MAX + 1))
    );
    assert_eq!(frame_body_len([0; 4]), Err(WireError::Truncated));
}

#[test]
fn another_wire_version_is_refused() {
    let mut bytes = encode_frame(&envelope(Message::PullDone)).unwrap();
    bytes[4] = WIRE_VERSION + 1;
    assert_eq!(decode(&bytes), Err(WireError::Version(WIRE_VERSION + 1)));
    let mut d = encode_datagram(&ClusterName::new("ams").unwrap(), b"swim");
    d[0] = 9;
    assert_eq!(decode_datagram(&d), Err(WireError::Version(9)));
}

#[test]
fn datagrams_carry_their_cluster() {
    let cluster = ClusterName::new("nrt").unwrap();
    let bytes = encode_datagram(&cluster, b"payload");
    assert_eq!(bytes.len(), 7 + datagram_overhead(&cluster));
    let d = decode_datagram(&bytes).unwrap();
    assert_eq!((d.cluster, d.payload), (cluster, &b"payload"[..]));
    assert!(
        decode_datagram(&[WIRE_VERSION, 0]).is_err(),
        "empty cluster name"
    );
    assert!(
        decode_datagram(&[WIRE_VERSION, 5, b'a']).is_err(),
        "short name"
    );
}

#[test]
fn a_chunk_with_a_change_outside_its_span_is_invalid() {
    let actor = SiteId([4; 16]);
    let mut chunk = chunk_changes(DbKind::Regional, actor, 1, 0, Vec::new()).remove(0);
    chunk.changes.push(WireChange {
        table: "t".into(),
        pk: vec![1],
        cid: "c".into(),
        val: Value::Null,
        col_version: 1,
        cl: 1,
        seq: 5,
    });
    let bytes = encode_frame(&envelope(Message::Changes(chunk))).unwrap();
    assert!(matches!(decode(&bytes), Err(WireError::Invalid(_))));
}

#[test]
fn a_large_transaction_travels_in_several_chunks_under_the_target() {
    let actor = SiteId([5; 16]);
    let changes: Vec<WireChange> = (0..5_000)
        .map(|i| WireChange {
            table: "machines".into(),
            pk: vec![0x01, 0x09, (i % 256) as u8],
            cid: "state".into(),
            val: Value::Text("x".repeat(100)),
            col_version: 1,
            cl: 1,
            seq: i,
        })
        .collect();
    let chunks = chunk_changes(DbKind::Regional, actor, 9, 4_999, changes);
    assert!(chunks.len() >= 8, "{} chunks", chunks.len());
    for c in &chunks {
        let bytes = encode_frame(&envelope(Message::Changes(c.clone()))).unwrap();
        assert!(
            bytes.len() <= CHUNK_BYTES_TARGET + 200,
            "{} bytes",
            bytes.len()
        );
    }
    assert!(chunks.iter().all(|c| !c.is_complete()));
    let total: usize = chunks.iter().map(|c| c.changes.len()).sum();
    assert_eq!(total, 5_000);
}

#[test]
fn a_backwards_span_does_not_decode() {
    let actor = SiteId([6; 16]);
    let need = Need::Versions {
        db: DbKind::Regional,
        actor,
        versions: Span { start: 9, end: 3 },
    };
    let bytes = encode_frame(&envelope(Message::Pull(vec![need]))).unwrap();
    assert!(matches!(decode(&bytes), Err(WireError::Malformed(m)) if m.contains("backwards")));
    assert_eq!(Span::new(0, u64::MAX).len(), u64::MAX);
}

/// Changes sharing a seq (a sentinel a replica created while merging is
/// tagged with the seq of the change that created it) never straddle two
/// chunks: each chunk claims whole seqs.
#[test]
fn changes_sharing_a_seq_stay_in_one_chunk() {
    let actor = SiteId([8; 16]);
    let changes: Vec<WireChange> = (0..4_000)
        .map(|i| WireChange {
            table: "machines".into(),
            pk: vec![0x01, 0x09, (i % 256) as u8],
            cid: if i % 2 == 0 {
                "-1".into()
            } else {
                "state".into()
            },
            val: Value::Text("y".repeat(60)),
            col_version: 1,
            cl: 1,
            seq: i / 2,
        })
        .collect();
    let chunks = chunk_changes(DbKind::Regional, actor, 4, 0, changes);
    assert!(chunks.len() > 1);
    for c in &chunks {
        c.validate().unwrap();
    }
    let total: usize = chunks.iter().map(|c| c.changes.len()).sum();
    assert_eq!(total, 4_000);
}
