//! Criterion benchmarks of the per-event and per-connection hot paths of the core:
//! framing an event once per node (`EncodedEvent::new`), the data-line splitter, the
//! opening frame of every stream, and cursor parsing / writing (every resume parses one,
//! every multi-channel delivery writes one).
//!
//! Run: `cargo bench -p ssegate-core --bench hot_paths` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ssegate_core::cursor::composite_string;
use ssegate_core::sse::{EncodedEvent, open_frame, write_data_lines};
use ssegate_core::{
    ChannelName, ChannelSet, CompositeCursor, Cursor, EntryId, Epoch, EventType, Position,
};

fn epoch() -> Epoch {
    "k3x9p2qa".parse().unwrap_or_else(|_| Epoch::random())
}

fn framing(c: &mut Criterion) {
    let position = Position {
        epoch: epoch(),
        id: EntryId::new(1_732_179_000_123, 7),
    };
    let event_type = EventType::new("update").ok();
    let mut group = c.benchmark_group("framing");
    for size in [64usize, 1024, 16 * 1024] {
        let data: String = r#"{"seq":123,"ts":1732179000123456,"pad":""#
            .chars()
            .chain(std::iter::repeat_n('x', size.saturating_sub(48)))
            .chain("\"}".chars())
            .collect();
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode_event", size), &data, |b, data| {
            b.iter(|| EncodedEvent::new(position, event_type.as_ref(), black_box(data)));
        });
    }
    let multiline = "line one\nline two\r\nline three\rline four\n".repeat(16);
    group.throughput(Throughput::Bytes(multiline.len() as u64));
    group.bench_function("data_lines_multiline", |b| {
        let mut buf = BytesMut::with_capacity(2 * multiline.len());
        b.iter(|| {
            buf.clear();
            write_data_lines(&mut buf, black_box(&multiline));
        });
    });
    group.throughput(Throughput::Elements(1));
    let encoded = EncodedEvent::new(position, None, "hello");
    group.bench_function("shared_body_slice", |b| {
        b.iter(|| black_box(&encoded).body())
    });
    group.bench_function("open_frame", |b| {
        b.iter(|| open_frame(black_box(3412), black_box("k3x9p2qa-1732179000123-0")));
    });
    group.finish();
}

fn cursors(c: &mut Criterion) {
    let mut group = c.benchmark_group("cursor");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_single", |b| {
        b.iter(|| Cursor::parse(black_box("k3x9p2qa-1732179000123-42")));
    });
    group.bench_function("position_to_string", |b| {
        let p = Position {
            epoch: epoch(),
            id: EntryId::new(1_732_179_000_123, 42),
        };
        b.iter(|| black_box(p).to_string());
    });
    for n in [2usize, 16, 64] {
        let names: Vec<ChannelName> = (0..n)
            .filter_map(|i| ChannelName::new(&format!("channel-{i}")).ok())
            .collect();
        let set = ChannelSet::new(names);
        let ids: Vec<EntryId> = (0..n as u64)
            .map(|i| EntryId::new(1_732_179_000_000 + i, i))
            .collect();
        let text = composite_string(epoch(), &set, ids.iter().copied());
        group.bench_with_input(BenchmarkId::new("write_composite", n), &ids, |b, ids| {
            b.iter(|| composite_string(epoch(), &set, black_box(ids).iter().copied()));
        });
        group.bench_with_input(BenchmarkId::new("parse_composite", n), &text, |b, text| {
            b.iter(|| CompositeCursor::parse(black_box(text), &set));
        });
        group.bench_function(BenchmarkId::new("channel_set", n), |b| {
            b.iter(|| ChannelSet::new(black_box(set.names().to_vec())));
        });
    }
    group.finish();
}

criterion_group!(benches, framing, cursors);
criterion_main!(benches);
