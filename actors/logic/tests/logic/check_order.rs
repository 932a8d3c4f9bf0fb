//! The order of the checks: the first failing check names the reason.

use fleetagg_logic::RejectReason;

use super::support::{assert_rejected, message_with, message_without, object, rules, RECENT};

// ---------------------------------------------------------------------------------------
// Order of the checks
// ---------------------------------------------------------------------------------------

#[test]
fn the_first_failing_check_in_contract_order_names_the_reason() {
    let far_future = "\"2030-01-01T00:00:00Z\"";
    let far_past = "\"2020-01-01T00:00:00Z\"";
    let cases: Vec<(String, RejectReason)> = vec![
        // malformed beats everything after it.
        ("{\"machine\": \"\", \"ts\": true,".to_owned(), RejectReason::Malformed),
        // missing_field beats bad_type.
        (
            object(&[
                ("machine", "42".into()),
                ("ts", format!("\"{RECENT}\"")),
                ("load_rate", "\"42\"".into()),
            ]),
            RejectReason::MissingField,
        ),
        (
            object(&[("machine", "\"m\"".into()), ("load_rate", "\"42\"".into()), ("mileage", "{}".into())]),
            RejectReason::MissingField,
        ),
        (message_with(&[("load_rate", "\"42\""), ("mileage", "null")]), RejectReason::MissingField),
        // bad_type beats bad_machine, bad_timestamp and the numeric checks.
        (message_with(&[("machine", "\"\""), ("load_rate", "\"42\"")]), RejectReason::BadType),
        (message_with(&[("ts", "\"garbage\""), ("mileage", "true")]), RejectReason::BadType),
        (message_with(&[("machine", "7"), ("load_rate", "NaN")]), RejectReason::BadType),
        // bad_machine beats bad_timestamp and everything after.
        (message_with(&[("machine", "\"\""), ("ts", "\"garbage\"")]), RejectReason::BadMachine),
        (message_with(&[("machine", "\"\\u0000\""), ("load_rate", "NaN")]), RejectReason::BadMachine),
        (message_with(&[("machine", "\"\""), ("mileage", "-5")]), RejectReason::BadMachine),
        // bad_timestamp beats non_finite, out_of_range.
        (
            message_with(&[("ts", "\"2026-02-30T00:00:00Z\""), ("load_rate", "Infinity")]),
            RejectReason::BadTimestamp,
        ),
        (message_with(&[("ts", "\"garbage\""), ("load_rate", "101")]), RejectReason::BadTimestamp),
        // non_finite beats out_of_range, whichever field has which problem.
        (message_with(&[("load_rate", "NaN"), ("mileage", "-1")]), RejectReason::NonFinite),
        (message_with(&[("load_rate", "101"), ("mileage", "Infinity")]), RejectReason::NonFinite),
        (message_with(&[("mileage", "-Infinity"), ("ts", far_future)]), RejectReason::NonFinite),
        // out_of_range beats future_ts and too_late.
        (message_with(&[("load_rate", "101"), ("ts", far_future)]), RejectReason::OutOfRange),
        (message_with(&[("mileage", "-1"), ("ts", far_past)]), RejectReason::OutOfRange),
    ];
    for (payload, expected) in cases {
        assert_rejected(&payload, &rules(), expected, &[]);
    }
}

#[test]
fn too_large_beats_malformed() {
    let mut small = rules();
    small.max_payload_bytes = 16;
    for payload in [
        b"this is definitely not json".to_vec(),
        vec![0xff; 17],
        "[".repeat(100).into_bytes(),
        message_without(&["machine"]).into_bytes(),
    ] {
        assert_rejected(&payload, &small, RejectReason::TooLarge, &["16"]);
    }
}
