use super::*;
use proptest::prelude::*;

fn parse(input: &[u8]) -> Vec<Item> {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    parser.feed(input, &mut out);
    out
}

fn parse_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Item> {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut out);
    }
    out
}

fn ev(id: &str, event: &str, data: &str) -> Item {
    Item::Event(Event {
        id: id.to_owned(),
        event: event.to_owned(),
        data: data.to_owned(),
    })
}

fn events(items: &[Item]) -> Vec<Event> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn spec_stock_example() {
    let items = parse(b"data: YHOO\ndata: +2\ndata: 10\n\n");
    assert_eq!(items, vec![ev("", "message", "YHOO\n+2\n10")]);
}

#[test]
fn spec_comment_and_ids_example() {
    let input = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
    let items = parse(input);
    assert_eq!(
        items,
        vec![
            Item::Comment(" test stream".to_owned()),
            ev("1", "message", "first event"),
            ev("", "message", "second event"),
            ev("", "message", " third event"),
        ]
    );
}

#[test]
fn spec_test_fields_example() {
    let items = parse(b"data\n\ndata\ndata\n\ndata:\n");
    // The first block is "", the second "\n"; the last is never terminated.
    assert_eq!(items, vec![ev("", "message", ""), ev("", "message", "\n")]);
}

#[test]
fn spec_space_after_colon_is_optional() {
    let items = parse(b"data:test\n\ndata: test\n\n");
    assert_eq!(
        items,
        vec![ev("", "message", "test"), ev("", "message", "test")]
    );
}

#[test]
fn only_one_space_is_stripped() {
    assert_eq!(parse(b"data:  two\n\n"), vec![ev("", "message", " two")]);
}

#[test]
fn comments_are_raw_and_do_not_dispatch() {
    let items = parse(b":\n:  keep  \n:x\n");
    assert_eq!(
        items,
        vec![
            Item::Comment(String::new()),
            Item::Comment("  keep  ".to_owned()),
            Item::Comment("x".to_owned()),
        ]
    );
}

#[test]
fn event_type_and_reset() {
    let items = parse(b"event: add\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n");
    assert_eq!(
        items,
        vec![
            ev("", "add", "1"),
            ev("", "message", "2"),
            ev("", "message", "3")
        ]
    );
}

#[test]
fn id_with_nul_is_ignored() {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    parser.feed(b"id: 5\ndata: a\n\nid: 6\0x\ndata: b\n\n", &mut out);
    assert_eq!(out, vec![ev("5", "message", "a"), ev("5", "message", "b")]);
    assert_eq!(parser.last_event_id(), "5");
}

#[test]
fn id_persists_and_empty_id_resets() {
    let items = parse(b"id: 9\ndata: a\n\ndata: b\n\nid\ndata: c\n\n");
    assert_eq!(
        items,
        vec![
            ev("9", "message", "a"),
            ev("9", "message", "b"),
            ev("", "message", "c")
        ]
    );
}

#[test]
fn id_only_block_yields_last_event_id() {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    parser.feed(b"id: x\n\nid: x\n\n\n", &mut out);
    // Every id-only block is reported, even one that repeats the id; a blank line
    // alone is not.
    assert_eq!(
        out,
        vec![
            Item::LastEventId("x".to_owned()),
            Item::LastEventId("x".to_owned())
        ]
    );
    assert_eq!(parser.last_event_id(), "x");
}

#[test]
fn retry_requires_ascii_digits() {
    let items = parse(b"retry: 1500\nretry: 15x\nretry: -1\nretry:\nretry: 1.5\nretry:42\n\n");
    assert_eq!(items, vec![Item::Retry(1500), Item::Retry(42)]);
    assert_eq!(
        parse(b"retry: 99999999999999999999999\n"),
        vec![Item::Retry(u64::MAX)]
    );
}

#[test]
fn unknown_fields_and_no_colon_lines_are_ignored() {
    let items = parse(b"foo: bar\nDATA: x\nevent\ndata: y\n\n");
    assert_eq!(items, vec![ev("", "message", "y")]);
}

#[test]
fn empty_data_dispatches_an_event() {
    assert_eq!(parse(b"data:\n\n"), vec![ev("", "message", "")]);
}

#[test]
fn block_without_data_does_not_dispatch() {
    assert_eq!(
        parse(b"event: x\n\n\n\ndata: y\n\n"),
        vec![ev("", "message", "y")]
    );
}

#[test]
fn line_endings_mix() {
    let expected = vec![ev("", "message", "a\nb\nc"), ev("", "message", "d")];
    assert_eq!(
        parse(b"data: a\rdata: b\r\ndata: c\n\rdata: d\r\n\r\n"),
        expected
    );
    assert_eq!(
        parse(b"data: a\r\ndata: b\r\ndata: c\r\n\r\ndata: d\r\r"),
        expected
    );
}

#[test]
fn split_crlf_counts_once() {
    let items = parse_chunks([
        &b"data: a\r"[..],
        b"\n",
        b"\r",
        b"\ndata: b\r",
        b"",
        b"\n\n",
    ]);
    assert_eq!(items, vec![ev("", "message", "a"), ev("", "message", "b")]);
}

#[test]
fn bom_is_stripped_once_at_start() {
    let mut input = BOM.to_vec();
    input.extend_from_slice(b"data: a\n\n");
    assert_eq!(parse(&input), vec![ev("", "message", "a")]);

    // A split BOM is still stripped.
    let items = parse_chunks([&BOM[..1], &BOM[1..], b"data: a\n\n"]);
    assert_eq!(items, vec![ev("", "message", "a")]);

    // Only one BOM; a second one makes the field name unknown.
    let mut twice = BOM.to_vec();
    twice.extend_from_slice(BOM);
    twice.extend_from_slice(b"data: a\n\ndata: b\n\n");
    assert_eq!(parse(&twice), vec![ev("", "message", "b")]);

    // Not stripped later in the stream.
    let mut later = b"data: a\n\n".to_vec();
    later.extend_from_slice(BOM);
    later.extend_from_slice(b"data: b\n\n");
    assert_eq!(parse(&later), vec![ev("", "message", "a")]);
}

#[test]
fn invalid_utf8_is_replaced_and_split_chars_survive() {
    assert_eq!(
        parse(b"data: a\xFFb\n\n"),
        vec![ev("", "message", "a\u{FFFD}b")]
    );
    let snow = "data: \u{2603}\n\n".as_bytes();
    for split in 0..=snow.len() {
        let (a, b) = snow.split_at(split);
        assert_eq!(parse_chunks([a, b]), vec![ev("", "message", "\u{2603}")]);
    }
}

#[test]
fn unterminated_event_is_discarded_by_finish() {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    parser.feed(b"data: a\n\nid: 3\ndata: partial", &mut out);
    parser.finish();
    parser.feed(b"\n\n", &mut out);
    assert_eq!(out, vec![ev("", "message", "a")]);
    assert_eq!(parser.last_event_id(), "");
}

#[test]
fn seeded_last_event_id_persists() {
    let mut parser = Parser::new().with_last_event_id("41");
    let mut out = Vec::new();
    parser.feed(b"data: a\n\n", &mut out);
    assert_eq!(out, vec![ev("41", "message", "a")]);
}

#[test]
fn overlong_line_is_dropped_with_its_event() {
    let mut parser = Parser::with_max_line(16);
    let mut out = Vec::new();
    parser.feed(b"data: ok\n\ndata: 0123456789", &mut out);
    assert!(!parser.overflowed());
    parser.feed(b"0123456789\ndata: more\n\n", &mut out);
    assert!(parser.overflowed());
    parser.feed(b"data: next\n\n", &mut out);
    assert_eq!(
        out,
        vec![ev("", "message", "ok"), ev("", "message", "next")]
    );
    assert!(parser.line.capacity() <= 16);
}

#[test]
fn overlong_event_data_is_dropped() {
    let mut parser = Parser::with_max_line(16);
    let mut out = Vec::new();
    parser.feed(b"data: 12345678\ndata: 12345678\n\ndata: x\n\n", &mut out);
    assert!(parser.overflowed());
    assert_eq!(out, vec![ev("", "message", "x")]);
}

const MULTI: &[u8] =
    b"\xEF\xBB\xBF: hi\r\nretry: 50\nid: 1\nevent: a\ndata: x\r\ndata:\xE2\x98\x83\r\r\
id: 2\n\n:c\ndata: y\n\nid\r\ndata\r\n\r\n";

fn multi_expected() -> Vec<Item> {
    vec![
        Item::Comment(" hi".to_owned()),
        Item::Retry(50),
        ev("1", "a", "x\n\u{2603}"),
        Item::LastEventId("2".to_owned()),
        Item::Comment("c".to_owned()),
        ev("2", "message", "y"),
        ev("", "message", ""),
    ]
}

#[test]
fn every_single_split_gives_the_same_items() {
    assert_eq!(parse(MULTI), multi_expected());
    for i in 0..=MULTI.len() {
        let (a, b) = MULTI.split_at(i);
        assert_eq!(parse_chunks([a, b]), multi_expected(), "split at {i}");
    }
}

#[test]
fn every_double_split_gives_the_same_items() {
    for i in 0..=MULTI.len() {
        for j in i..=MULTI.len() {
            let chunks = [&MULTI[..i], &MULTI[i..j], &MULTI[j..]];
            assert_eq!(parse_chunks(chunks), multi_expected(), "split at {i},{j}");
        }
    }
}

#[test]
fn byte_at_a_time() {
    assert_eq!(parse_chunks(MULTI.chunks(1)), multi_expected());
}

/// Splits at CRLF, CR or LF, like the event-stream grammar does.
fn split_lines(s: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find(['\r', '\n']) {
        lines.push(&rest[..pos]);
        rest = if rest[pos..].starts_with("\r\n") {
            &rest[pos + 2..]
        } else {
            &rest[pos + 1..]
        };
    }
    lines.push(rest);
    lines
}

fn payload() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z \r\n:\u{FEFF}\u{2603}\u{1F600}]{0,24}",
    ]
}

proptest! {
    #[test]
    fn data_payloads_roundtrip(
        payloads in prop::collection::vec(payload(), 0..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut stream = Vec::new();
        for p in &payloads {
            for line in split_lines(p) {
                stream.extend_from_slice(b"data: ");
                stream.extend_from_slice(line.as_bytes());
                stream.push(b'\n');
            }
            stream.push(b'\n');
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for p in points {
            chunks.push(&stream[start..p]);
            start = p;
        }
        chunks.push(&stream[start..]);

        let got: Vec<String> = events(&parse_chunks(chunks)).into_iter().map(|e| e.data).collect();
        let want: Vec<String> = payloads.iter().map(|p| split_lines(p).join("\n")).collect();
        prop_assert_eq!(got, want);
    }
}

mod gateway_framing {
    //! Whatever a publisher sends, the gateway's framing and this parser agree on it.
    use super::super::{Item, Parser};
    use proptest::prelude::*;
    use ssegate_core::sse::EncodedEvent;
    use ssegate_core::{Data, EntryId, Epoch, EventType, Position};

    fn normalise(s: &str) -> String {
        s.replace("\r\n", "\n").replace('\r', "\n")
    }

    fn arb_type() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[A-Za-z0-9_.:-]{1,64}").prop_filter("reserved", |t| {
            t.as_deref() != Some("sync-required") && t.as_deref() != Some("token-expired")
        })
    }

    proptest! {
        #[test]
        fn any_string_round_trips(data in "\\PC*|[\\r\\n a-z]{0,40}", t in arb_type(), split in 0usize..200) {
            let epoch: Epoch = "k3x9p2qa".parse().unwrap();
            let pos = Position { epoch, id: EntryId::new(1, 2) };
            let ty = t.as_deref().map(|t| EventType::new(t).unwrap());
            let enc = EncodedEvent::new(pos, ty.as_ref(), &data);
            let frame = enc.frame();
            let cut = split.min(frame.len());
            let mut p = Parser::new();
            let mut out = Vec::new();
            p.feed(&frame[..cut], &mut out);
            p.feed(&frame[cut..], &mut out);
            prop_assert_eq!(out.len(), 1);
            let Item::Event(e) = &out[0] else { panic!("{out:?}") };
            prop_assert_eq!(&e.data, &normalise(&data));
            prop_assert_eq!(&e.id, &pos.to_string());
            prop_assert_eq!(&e.event, t.as_deref().unwrap_or("message"));
        }

        #[test]
        fn any_json_value_round_trips_compact(v in any::<Vec<(String, i64)>>()) {
            let value = serde_json::Value::Object(v.into_iter().map(|(k, n)| (k, n.into())).collect());
            let data = Data::from_json(value.clone());
            let enc = EncodedEvent::new(
                Position { epoch: Epoch::random(), id: EntryId::ZERO },
                None,
                data.as_str(),
            );
            let mut p = Parser::new();
            let mut out = Vec::new();
            p.feed(enc.frame(), &mut out);
            let Item::Event(e) = &out[0] else { panic!("{out:?}") };
            let back: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            prop_assert_eq!(back, value);
        }
    }
}
