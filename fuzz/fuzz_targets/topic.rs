//! A topic name as a client writes it. Parsing never panics, and a name it accepts reads back
//! as itself.

#![no_main]

use herald_backend::topic::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(topic) = Topic::parse(text) {
        let again = Topic::parse(topic.as_str()).expect("an accepted topic parses again");
        assert_eq!(again, topic);
        assert_eq!(topic.as_str(), text);
    }
});
