//! Channel-list parsing: `parse_channel_list(channel= values, channels= values)`.
//!
//! Input: a query-string-like text split at `&`; a part `channels=<v>` gives a
//! comma-separated list, any other part `channel=<v>` (or `<k>=<v>`, or a bare `<v>`) one
//! name, e.g. `channel=b&channels=c,a&channel=a`. Nothing is percent-decoded: the parts
//! reach the function as they are.
//!
//! Invariants: nothing panics; the result is `Ok` exactly when every given name is valid;
//! every name in the result is valid, came from the input, and every input name is in it;
//! the names are sorted and de-duplicated; the checksum depends on the set only; a
//! composite cursor written for the set parses back against it.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use ssegate_core::cursor::{composite_string, parse_channel_list};
use ssegate_core::{ChannelName, ChannelSet, CompositeCursor, EntryId, Epoch};

fuzz_target!(|bytes: &[u8]| {
    let input = String::from_utf8_lossy(bytes);
    let mut single = Vec::new();
    let mut lists = Vec::new();
    for part in input.split('&') {
        match part.split_once('=') {
            Some(("channels", value)) => lists.push(value),
            Some((_, value)) => single.push(value),
            None => single.push(part),
        }
    }

    let given: Vec<&str> = single
        .iter()
        .copied()
        .chain(lists.iter().flat_map(|l| l.split(',')))
        .collect();
    let all_valid = given.iter().all(|n| ChannelName::new(n).is_ok());

    let result = parse_channel_list(single.iter().copied(), lists.iter().copied());
    let Ok(set) = result else {
        assert!(
            !all_valid,
            "refused although every name is valid: {given:?}"
        );
        return;
    };
    assert!(all_valid, "accepted an invalid name: {given:?}");

    let names: Vec<&str> = set.names().iter().map(ChannelName::as_str).collect();
    for name in &names {
        let again = ChannelName::new(name).expect("every name in the result is valid");
        assert_eq!(again.as_str(), *name);
    }
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "not sorted and de-duplicated: {names:?}"
    );
    let expected: BTreeSet<&str> = given.iter().copied().collect();
    assert_eq!(
        names.iter().copied().collect::<BTreeSet<_>>(),
        expected,
        "the result is exactly the given names"
    );
    assert_eq!(set.len(), names.len());
    assert_eq!(set.is_empty(), names.is_empty());

    // The checksum is a function of the set: the same names in another order and with
    // repeats give the same set.
    let mut shuffled: Vec<ChannelName> = set.names().iter().rev().cloned().collect();
    shuffled.extend(set.names().iter().take(2).cloned());
    assert_eq!(ChannelSet::new(shuffled), set);

    // A composite cursor for this set round-trips through the cursor parser.
    if !set.is_empty() {
        let epoch: Epoch = "fuzz0set".parse().expect("valid epoch");
        let ids: Vec<EntryId> = (0..set.len() as u64)
            .map(|i| EntryId::new(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), u64::MAX - i))
            .collect();
        let text = composite_string(epoch, &set, ids.iter().copied());
        assert_eq!(
            CompositeCursor::parse(&text, &set),
            Ok(CompositeCursor::At { epoch, ids })
        );
    }
});
