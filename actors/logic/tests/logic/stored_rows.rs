//! What a stored rejection holds: every field cut to 4 KiB, text never split inside a
//! UTF-8 character, so one flood of huge garbage costs the database 12 KiB a row at most.

use fleetagg_logic::rows::{RejectedMessage, MAX_STORED_PAYLOAD};
use fleetagg_logic::RejectReason;

use super::support::{assert_rejected, message_at, rules};

const LIMIT: usize = MAX_STORED_PAYLOAD;

fn stored(topic: &str, detail: &str, payload: &[u8]) -> RejectedMessage {
    RejectedMessage::new(topic.to_owned(), RejectReason::BadTimestamp, detail.to_owned(), payload)
}

#[test]
fn the_limit_is_4_kib() {
    assert_eq!(LIMIT, 4096);
}

#[test]
fn short_fields_are_kept_whole() {
    let row = stored("machines/m-1/telemetry", "ts is bad", b"{\"ts\": 1}");
    assert_eq!(row.topic, "machines/m-1/telemetry");
    assert_eq!(row.detail, "ts is bad");
    assert_eq!(row.payload, b"{\"ts\": 1}");
    let exact = "x".repeat(LIMIT);
    let row = stored(&exact, &exact, exact.as_bytes());
    assert_eq!((row.topic.len(), row.detail.len(), row.payload.len()), (LIMIT, LIMIT, LIMIT));
}

/// The reason for issue 10: `bad_timestamp` quotes the whole `ts`, and an MQTT topic can
/// be 64 KiB long; both were stored whole.
#[test]
fn long_detail_and_topic_are_cut_to_4_kib() {
    let huge_ts = "9".repeat(60_000);
    let mut big = rules();
    big.max_payload_bytes = 1 << 20;
    let payload = message_at(&huge_ts);
    let rejection = assert_rejected(&payload, &big, RejectReason::BadTimestamp, &[]);
    assert!(rejection.detail.len() > 60_000, "the detail quotes the text");
    let topic = format!("machines/{}/telemetry", "t".repeat(65_000));
    let row =
        RejectedMessage::new(topic.clone(), rejection.reason, rejection.detail.clone(), payload.as_bytes());
    assert_eq!(row.detail.len(), LIMIT);
    assert!(rejection.detail.starts_with(&row.detail));
    assert_eq!(row.topic.len(), LIMIT);
    assert!(topic.starts_with(&row.topic));
    assert_eq!(row.payload, payload.as_bytes()[..LIMIT]);
    assert_eq!(row.reason, RejectReason::BadTimestamp);
}

/// A character of 2, 3 or 4 bytes straddling the limit is dropped whole, in every field;
/// one that ends exactly at the limit is kept.
#[test]
fn cuts_never_split_a_utf8_character() {
    for wide in ['é', '機', '😀'] {
        let width = wide.len_utf8();
        for before in (LIMIT - 6)..=LIMIT {
            let text = format!("{}{wide}{}", "a".repeat(before), "z".repeat(10));
            let row = stored(&text, &text, text.as_bytes());
            let fits = before + width <= LIMIT;
            let expected_len = if fits { LIMIT } else { before };
            for (name, kept) in [
                ("topic", row.topic.as_bytes()),
                ("detail", row.detail.as_bytes()),
                ("payload", &row.payload),
            ] {
                assert!(text.as_bytes().starts_with(kept), "{name}: not a prefix");
                assert_eq!(kept.len(), expected_len, "{name}: {width}-byte char after {before} bytes");
                assert!(std::str::from_utf8(kept).is_ok(), "{name}: split a character");
            }
        }
    }
    // Only multi-byte characters, none aligned with the limit.
    let text = "😀".repeat(2000);
    let row = stored(&text, &text, text.as_bytes());
    assert_eq!(row.detail.len(), 4096);
    let text = "機".repeat(2000);
    let row = stored(&text, &text, text.as_bytes());
    assert_eq!(row.detail.len(), 4095);
    assert_eq!(row.topic.len(), 4095);
    assert_eq!(row.payload.len(), 4095);
}

/// A payload that is not UTF-8 is bytes: cut at exactly 4096, whatever they look like,
/// unless the cut would split what is a well-formed character.
#[test]
fn payloads_that_are_not_text_are_cut_at_the_limit() {
    for byte in [0x00, 0x80, 0xbf, 0xc3, 0xe6, 0xf0, 0xff] {
        let row = stored("t", "d", &vec![byte; 10_000]);
        assert_eq!(row.payload.len(), LIMIT, "byte {byte:#x}");
    }
    // Invalid text before the limit does not stop a well-formed character at it from
    // being kept whole.
    let mut bytes = vec![0xff; LIMIT - 1];
    bytes.extend_from_slice("é and more".as_bytes());
    assert_eq!(stored("t", "d", &bytes).payload.len(), LIMIT - 1);
    // A lone lead byte at the limit with no continuation is not a character: cut at the limit.
    let mut bytes = vec![b'a'; LIMIT - 1];
    bytes.extend_from_slice(&[0xe6, b'a', b'a', b'a']);
    assert_eq!(stored("t", "d", &bytes).payload.len(), LIMIT);
    // Stray continuation bytes across the limit (after ASCII) are not a character either.
    let mut bytes = vec![b'a'; LIMIT - 2];
    bytes.extend_from_slice(&[0x80, 0x80, 0x80, b'a']);
    assert_eq!(stored("t", "d", &bytes).payload.len(), LIMIT);
}
