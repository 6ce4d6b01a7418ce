//! Control-socket requests: `Request::parse` takes any bytes without panicking, and every
//! request it accepts serialises with `to_line` to a line that parses back to the same value.
#![no_main]

use ddhcp::control::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Request::parse(data) {
        Ok(req) => {
            let line = req.to_line();
            assert!(
                line.ends_with('\n') && !line[..line.len() - 1].contains('\n'),
                "to_line is not one line: {line:?}"
            );
            let again = Request::parse(line.as_bytes()).unwrap_or_else(|e| {
                panic!("to_line output {line:?} of {req:?} does not parse: {e}")
            });
            assert_eq!(again, req, "parse(to_line(r)) != r for {line:?}");
        }
        Err(reason) => {
            // The daemon sends the reason back; it must make a valid response.
            let bytes = Response::err(reason).to_bytes();
            let back: Response = serde_json_roundtrip(&bytes);
            assert!(!back.ok);
        }
    }
});

fn serde_json_roundtrip(bytes: &[u8]) -> Response {
    // `Response` derives Deserialize; go through the same path ddhcpctl uses.
    let text = std::str::from_utf8(bytes).expect("responses are UTF-8");
    assert!(text.ends_with('\n'));
    serde_json::from_str(text.trim_end()).expect("a response must parse back")
}
