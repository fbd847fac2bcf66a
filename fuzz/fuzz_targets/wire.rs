//! Any bytes as a WebSocket text frame: the strict parsers never panic; a client frame
//! that parses re-serialises to one that parses equal; a server frame's hand-written
//! `to_json` is byte-identical to serde_json's.
#![no_main]

use aip_protocol::messages::parse_strict;
use aip_protocol::{parse_client_message, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = parse_client_message(text) {
        let again = parse_client_message(&m.to_json()).expect("our own output parses");
        assert_eq!(m, again);
    }
    if let Ok(m) = parse_strict::<ServerMessage>(text) {
        let plain = serde_json::to_string(&m).expect("serialises");
        assert_eq!(m.to_json(), plain);
    }
});
